"""The MR slice every generator shares: identity, geometry and the pixel module."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.filewriter import dcmwrite

from cohortstream.mr_slices import mr_slice_dataset


def _slice(pixels: np.ndarray) -> pydicom.Dataset:
    return mr_slice_dataset(
        sop_instance_uid="2.25.1",
        study_instance_uid="2.25.2",
        series_instance_uid="2.25.3",
        frame_of_reference_uid="2.25.4",
        image_position=[-10.0, 5.0, 2.5],
        image_orientation=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        pixel_spacing=[0.9, 0.8],
        pixels=pixels,
        image_type=["ORIGINAL", "PRIMARY"],
    )


@pytest.mark.parametrize(("dtype", "representation"), [(np.int16, 1), (np.uint16, 0)])
def test_a_slice_round_trips_with_its_geometry_and_pixels(dtype: type, representation: int) -> None:
    pixels = np.arange(12, dtype=dtype).reshape(3, 4)
    buffer = io.BytesIO()
    dcmwrite(buffer, _slice(pixels), enforce_file_format=True)
    read = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    assert (read.Rows, read.Columns, read.PixelRepresentation) == (3, 4, representation)
    assert [float(v) for v in read.ImagePositionPatient] == [-10.0, 5.0, 2.5]
    assert read.file_meta.MediaStorageSOPInstanceUID == read.SOPInstanceUID == "2.25.1"
    assert np.array_equal(read.pixel_array, pixels)


def test_only_16_bit_two_dimensional_pixels_are_accepted() -> None:
    with pytest.raises(ValueError, match="2-D int16 or uint16"):
        _slice(np.zeros((2, 3, 4), dtype=np.int16))
    with pytest.raises(ValueError, match="float64"):
        _slice(np.zeros((3, 4)))
