"""The NRRD label map OHIF's MONAI Label panel copies into its labelmap: on the series'
grid, slices ascending along the normal, whatever order the instances come in, for axial
and oblique series. Each check is independent of the code's own sorting: every source
instance's own SEG frame must land at the NRRD slice its position says, and every voxel's
LPS position from the header must be the instance's pixel position."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from consumers.annotation.errors import GeometryError
from consumers.annotation.models import PHANTOM_SPEC
from consumers.annotation.nrrd import label_map_nrrd, seg_as_nrrd, slice_grid
from consumers.annotation.phantoms import AXIAL, phantom_series
from consumers.annotation.seg import build_segmentation, read_label_map
from consumers.annotation.volume import volume_from_datasets

# Rows and columns tilted about two axes (orthonormal to 1e-9).
_A, _B = np.deg2rad(25.0), np.deg2rad(-15.0)
_ROW = np.array([np.cos(_A), np.sin(_A), 0.0])
_COL = np.array([-np.sin(_A) * np.cos(_B), np.cos(_A) * np.cos(_B), np.sin(_B)])
OBLIQUE = tuple(float(v) for v in (*_ROW, *_COL))
SAGITTAL_FEET_FIRST = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def parse_nrrd(data: bytes) -> tuple[dict[str, str], np.ndarray]:
    """A minimal reader of what the NRRD spec says (raw encoding only)."""
    head, _, body = data.partition(b"\n\n")
    lines = head.decode("ascii").split("\n")
    assert lines[0].startswith("NRRD000")
    fields = dict(line.split(": ", 1) for line in lines[1:] if line and not line.startswith("#"))
    assert (fields["type"], fields["encoding"], fields["endian"]) == ("uint8", "raw", "little")
    sizes = [int(s) for s in fields["sizes"].split()]
    assert len(body) == int(np.prod(sizes))
    return fields, np.frombuffer(body, dtype=np.uint8).reshape(sizes[::-1])


def _vectors(text: str) -> list[np.ndarray]:
    return [np.array([float(x) for x in part.strip("()").split(",")]) for part in text.split()]


@pytest.mark.parametrize("orientation", [AXIAL, OBLIQUE, SAGITTAL_FEET_FIRST], ids=["axial", "oblique", "sagittal"])
@pytest.mark.parametrize("stacking", ["as-written", "reversed"])
def test_seg_as_nrrd_is_on_the_series_grid_ascending_along_the_normal(
    orientation: tuple[float, ...], stacking: str
) -> None:
    datasets, truth = phantom_series(5, (8, 16, 20), orientation=orientation, pixel_spacing=(0.8, 1.1))
    if stacking == "reversed":  # instances numbered and sent the other way round
        datasets = datasets[::-1]
        for number, ds in enumerate(datasets, start=1):
            ds.InstanceNumber = number
    volume = volume_from_datasets(datasets)
    seg = build_segmentation(volume, truth, PHANTOM_SPEC)
    seg = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_encoded(seg)))

    fields, labels = parse_nrrd(seg_as_nrrd(seg, datasets))
    assert labels.shape == (8, 16, 20) and labels.any()
    origin = _vectors(fields["space origin"])[0]
    dx, dy, dz = _vectors(fields["space directions"])
    normal = np.cross(orientation[:3], orientation[3:])
    assert dz @ normal > 0, "slices ascend along the normal"

    for ds in datasets:
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        k = (ipp - origin) @ dz / (dz @ dz)
        assert abs(k - round(k)) < 1e-3, "DS values carry about 1e-5 mm of rounding"
        k = round(k)
        own_frame = read_label_map(seg, [str(ds.SOPInstanceUID)])[0]
        assert np.array_equal(labels[k], own_frame), f"slice of {ds.InstanceNumber} misplaced"
        # Voxel (column i, row j) of that slice is where DICOM puts pixel (j, i).
        for j, i in [(0, 0), (15, 0), (0, 19), (7, 11)]:
            dicom = ipp + np.asarray(orientation[:3]) * i * 1.1 + np.asarray(orientation[3:]) * j * 0.8
            assert np.allclose(origin + i * dx + j * dy + k * dz, dicom, atol=1e-3)


def _encoded(seg: pydicom.Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_single_slice_uses_its_thickness_and_bad_input_names_the_field() -> None:
    datasets, _ = phantom_series(6, (8, 16, 16))
    one = slice_grid(datasets[:1])
    assert one.sop_instance_uids == (str(datasets[0].SOPInstanceUID),)
    with pytest.raises(GeometryError, match="SOPInstanceUID"):
        slice_grid([])
    del datasets[1].ImagePositionPatient
    with pytest.raises(GeometryError, match="ImagePositionPatient"):
        slice_grid(datasets)
    with pytest.raises(GeometryError, match="does not match"):
        label_map_nrrd(np.zeros((2, 4, 4), np.uint8), one)


def test_the_header_is_byte_exact_for_a_small_axial_grid() -> None:
    datasets, _ = phantom_series(6, (8, 16, 16), origin=(-8.0, -8.0, 0.0), slice_spacing=2.0)
    grid = slice_grid(datasets)
    data = label_map_nrrd(np.zeros((8, 16, 16), np.uint8), grid)
    assert data.startswith(b"NRRD0004\n")
    assert b"sizes: 16 16 8\n" in data
    assert b"space directions: (1,0,0) (0,1,0) (0,0,2)\n" in data
    assert b"space origin: (-8,-8,0)\n\n" in data
    assert len(data) - data.index(b"\n\n") - 2 == 8 * 16 * 16
