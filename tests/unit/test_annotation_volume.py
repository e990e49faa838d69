"""Geometry of series volumes: slice order from positions, oblique planes, bad geometry named."""

from __future__ import annotations

import copy
import io
import random

import numpy as np
import pydicom
import pytest

from consumers.annotation.errors import GeometryError
from consumers.annotation.phantoms import phantom_series
from consumers.annotation.volume import volume_from_datasets

SHAPE = (8, 16, 12)


def _series(**kwargs: object) -> tuple[list[pydicom.Dataset], np.ndarray]:
    return phantom_series(3, SHAPE, **kwargs)  # type: ignore[arg-type]


def _roundtrip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def test_shuffled_file_order_gives_the_same_volume() -> None:
    datasets, _ = _series()
    ordered = volume_from_datasets(datasets)
    shuffled = list(datasets)
    random.Random(1).shuffle(shuffled)
    assert shuffled != datasets
    again = volume_from_datasets([_roundtrip(ds) for ds in shuffled])
    np.testing.assert_array_equal(ordered.array, again.array)
    np.testing.assert_allclose(ordered.affine, again.affine)
    assert ordered.reference == again.reference
    assert again.reference.sop_instance_uids == tuple(ds.SOPInstanceUID for ds in datasets)


def test_axial_geometry_spacing_affine_and_rescale() -> None:
    datasets, _ = _series(pixel_spacing=(0.8, 0.9), slice_spacing=2.5, origin=(10.0, 20.0, 30.0))
    volume = volume_from_datasets(datasets)
    assert volume.shape == SHAPE
    assert volume.spacing == pytest.approx((2.5, 0.8, 0.9))
    # (k, r, c) -> LPS: columns run along x, rows along y, slices along z.
    point = volume.affine @ np.array([2, 3, 4, 1.0])
    np.testing.assert_allclose(point[:3], [10 + 4 * 0.9, 20 + 3 * 0.8, 30 + 2 * 2.5])
    first = datasets[0]
    expected = first.pixel_array.astype(np.float32) * float(first.RescaleSlope) + float(first.RescaleIntercept)
    np.testing.assert_allclose(volume.array[0], expected, rtol=1e-6)
    assert volume.voxel_volume_ml == pytest.approx(2.5 * 0.8 * 0.9 / 1000)


def test_oblique_orientation_orders_slices_along_the_normal() -> None:
    angle = np.deg2rad(20)
    row = (np.cos(angle), np.sin(angle), 0.0)
    col = (0.0, 0.0, -1.0)  # coronal-ish, tilted about z
    datasets, _ = _series(orientation=(*row, *col), slice_spacing=1.25)
    volume = volume_from_datasets(list(reversed(datasets)))
    normal = np.cross(row, col)
    assert volume.spacing[0] == pytest.approx(1.25, abs=1e-3)
    np.testing.assert_allclose(volume.affine[:3, 0], normal * volume.spacing[0], atol=1e-3)
    np.testing.assert_allclose(volume.affine[:3, 2], np.asarray(row) * 1.0, atol=1e-6)
    np.testing.assert_allclose(volume.affine[:3, 1], np.asarray(col) * 1.0, atol=1e-6)
    assert volume.reference.sop_instance_uids == tuple(ds.SOPInstanceUID for ds in datasets)
    # Every slice's IPP is where the affine puts index (k, 0, 0).
    for k, ds in enumerate(volume.source_datasets):
        np.testing.assert_allclose(volume.affine @ [k, 0, 0, 1], [*map(float, ds.ImagePositionPatient), 1], atol=2e-3)


def _broken(change) -> list[pydicom.Dataset]:  # type: ignore[no-untyped-def]
    datasets = [copy.deepcopy(ds) for ds in _series()[0]]
    change(datasets)
    return datasets


@pytest.mark.parametrize(
    ("change", "attribute"),
    [
        (lambda d: delattr(d[3], "ImagePositionPatient"), "ImagePositionPatient"),
        (lambda d: delattr(d[0], "PixelSpacing"), "PixelSpacing"),
        (lambda d: delattr(d[2], "ImageOrientationPatient"), "ImageOrientationPatient"),
        (lambda d: setattr(d[4], "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]), "ImageOrientationPatient"),
        (lambda d: setattr(d[5], "ImagePositionPatient", list(d[4].ImagePositionPatient)), "ImagePositionPatient"),
        (lambda d: d.pop(3), "ImagePositionPatient"),  # a missing slice: non-uniform spacing
        (lambda d: setattr(d[1], "PixelSpacing", [2.0, 2.0]), "PixelSpacing"),
        (lambda d: setattr(d[1], "NumberOfFrames", 4), "NumberOfFrames"),
        (lambda d: setattr(d[1], "SeriesInstanceUID", "1.2.3"), "SeriesInstanceUID"),
        (
            lambda d: setattr(
                d[6],
                "ImagePositionPatient",
                [p + (5.0 if i == 0 else 0.0) for i, p in enumerate(d[6].ImagePositionPatient)],
            ),
            "ImagePositionPatient",
        ),
    ],
    ids=[
        "missing-ipp",
        "missing-spacing",
        "missing-iop",
        "mixed-orientation",
        "duplicate-position",
        "gap",
        "mixed-spacing",
        "multi-frame",
        "mixed-series",
        "in-plane-shift",
    ],
)
def test_bad_geometry_names_the_attribute(change, attribute: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(GeometryError) as info:
        volume_from_datasets(_broken(change))
    assert info.value.attribute == attribute
    assert str(info.value).startswith(attribute)


def test_multi_frame_says_not_supported_yet() -> None:
    datasets = _broken(lambda d: setattr(d[0], "NumberOfFrames", 8))
    with pytest.raises(GeometryError, match="not supported yet"):
        volume_from_datasets(datasets)


def test_empty_series_is_a_geometry_error() -> None:
    with pytest.raises(GeometryError):
        volume_from_datasets([])
