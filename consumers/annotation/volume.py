"""Build one regular 3D volume from the single-frame instances of a series.

Why not file order: instances arrive in any order (C-STORE, Orthanc listings), and
InstanceNumber or SliceLocation are not reliable. The geometry is taken from the
attributes that define it: Image Orientation (Patient) gives the row and column
directions and the slice normal (row × column); Image Position (Patient) projected on
that normal orders the slices and gives the spacing between them; Pixel Spacing gives the
in-plane spacing; Rescale Slope/Intercept turn stored values into real-world values.

Conventions of :class:`SeriesVolume`:

- ``array`` has axis order **(slice, row, column)**, ``float32``, real-world values.
  Slice 0 is the one with the smallest position along the slice normal; ``array[k]`` is
  ``pixel_array`` of ``source_datasets[k]`` (rescaled), so it can be handed to highdicom
  frame by frame without transposition.
- ``affine`` maps the index vector ``(k, r, c, 1)`` (same axis order as ``array``) to
  patient coordinates in **LPS** millimetres, DICOM's own patient coordinate system (no
  flip to RAS: every consumer here speaks DICOM).
- ``spacing`` is ``(between slices, between rows, between columns)`` in mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from consumers.annotation.errors import GeometryError

__all__ = [
    "DIRECTION_TOLERANCE",
    "SPACING_TOLERANCE",
    "SeriesVolume",
    "SourceReference",
    "volume_from_datasets",
]

#: Largest difference between direction cosines still taken as "same orientation".
DIRECTION_TOLERANCE = 1e-4
#: Largest relative deviation of one slice gap from the median gap (1 %).
SPACING_TOLERANCE = 0.01
#: Gaps smaller than this (mm) are duplicate positions.
_DUPLICATE_MM = 1e-3

_REQUIRED = ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns", "PixelData")


@dataclass(frozen=True)
class SourceReference:
    """What a DICOM SEG must say about the images it segments."""

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str | None
    sop_class_uid: str
    #: SOPInstanceUID per slice, in the volume's slice order.
    sop_instance_uids: tuple[str, ...]


@dataclass(frozen=True)
class SeriesVolume:
    """A series as one volume plus the geometry and references needed to write results back."""

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    reference: SourceReference
    #: The source datasets sorted like ``array``'s slices (highdicom needs them for a SEG).
    source_datasets: tuple[Dataset, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        slices, rows, columns = self.array.shape
        return int(slices), int(rows), int(columns)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (mm³ / 1000)."""
        return float(np.prod(self.spacing)) / 1000.0


def _floats(ds: Dataset, keyword: str, count: int, index: int) -> np.ndarray:
    value = ds.get(keyword)
    if value is None:
        raise GeometryError(keyword, f"missing in instance {index} of the series")
    try:
        values = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError) as exc:
        raise GeometryError(keyword, f"not numeric in instance {index}: {value!r}") from exc
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise GeometryError(keyword, f"expected {count} finite numbers in instance {index}, got {value!r}")
    return values


def _check_single_frame(ds: Dataset, index: int) -> None:
    frames = ds.get("NumberOfFrames")
    if frames is not None and int(frames) > 1:
        raise GeometryError(
            "NumberOfFrames",
            f"instance {index} has {int(frames)} frames; multi-frame (enhanced) images are not supported yet",
        )


def _same(values: list[object], keyword: str) -> object:
    first = values[0]
    for index, value in enumerate(values[1:], start=1):
        if value != first:
            raise GeometryError(
                keyword, f"differs within the series (instance 0: {first!r}, instance {index}: {value!r})"
            )
    return first


def _rescaled_pixels(ds: Dataset, index: int) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable pixel data
        raise GeometryError("PixelData", f"cannot be decoded in instance {index}: {exc}") from exc
    if pixels.ndim != 2:
        raise GeometryError(
            "SamplesPerPixel", f"instance {index} is not a single-sample grey image (shape {pixels.shape})"
        )
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return (pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)


def volume_from_datasets(
    datasets: Sequence[Dataset],
    *,
    spacing_tolerance: float = SPACING_TOLERANCE,
) -> SeriesVolume:
    """Stack the single-frame instances of one series into a :class:`SeriesVolume`.

    Raises :class:`GeometryError` naming the attribute when the instances do not form one
    regular grid: a required attribute missing, several series or orientations mixed,
    two slices at the same position, gaps that differ by more than ``spacing_tolerance``
    (relative), slices shifted in-plane (gantry tilt), or multi-frame instances.
    """
    if not datasets:
        raise GeometryError("SOPInstanceUID", "the series has no instances")
    for index, ds in enumerate(datasets):
        _check_single_frame(ds, index)
        for keyword in _REQUIRED:
            if keyword not in ds:
                raise GeometryError(keyword, f"missing in instance {index} of the series")

    _same([str(ds.get("SeriesInstanceUID", "")) for ds in datasets], "SeriesInstanceUID")
    _same([str(ds.get("FrameOfReferenceUID", "")) for ds in datasets], "FrameOfReferenceUID")
    rows = int(_same([int(ds.Rows) for ds in datasets], "Rows"))  # type: ignore[call-overload]
    cols = int(_same([int(ds.Columns) for ds in datasets], "Columns"))  # type: ignore[call-overload]

    orientations = [_floats(ds, "ImageOrientationPatient", 6, i) for i, ds in enumerate(datasets)]
    iop = orientations[0]
    for index, other in enumerate(orientations[1:], start=1):
        if np.max(np.abs(other - iop)) > DIRECTION_TOLERANCE:
            raise GeometryError(
                "ImageOrientationPatient",
                f"differs within the series (instance 0: {iop.tolist()}, instance {index}: {other.tolist()})",
            )
    row_dir, col_dir = iop[:3], iop[3:]
    if (
        abs(np.linalg.norm(row_dir) - 1) > 1e-3
        or abs(np.linalg.norm(col_dir) - 1) > 1e-3
        or abs(row_dir @ col_dir) > 1e-3
    ):
        raise GeometryError("ImageOrientationPatient", f"row and column cosines are not orthonormal: {iop.tolist()}")
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)

    pixel_spacings = [_floats(ds, "PixelSpacing", 2, i) for i, ds in enumerate(datasets)]
    pixel_spacing = pixel_spacings[0]
    for index, other in enumerate(pixel_spacings[1:], start=1):
        if np.max(np.abs(other - pixel_spacing)) > 1e-4 * max(1.0, float(pixel_spacing.max())):
            raise GeometryError(
                "PixelSpacing",
                f"differs within the series (instance 0: {pixel_spacing.tolist()}, instance {index}: {other.tolist()})",
            )
    if np.any(pixel_spacing <= 0):
        raise GeometryError("PixelSpacing", f"must be positive, got {pixel_spacing.tolist()}")

    positions = np.stack([_floats(ds, "ImagePositionPatient", 3, i) for i, ds in enumerate(datasets)])
    distances = positions @ normal
    order = np.argsort(distances, kind="stable")
    positions, distances = positions[order], distances[order]
    sorted_ds = tuple(datasets[i] for i in order)

    if len(sorted_ds) > 1:
        gaps = np.diff(distances)
        duplicate = np.flatnonzero(gaps < _DUPLICATE_MM)
        if duplicate.size:
            k = int(duplicate[0])
            raise GeometryError(
                "ImagePositionPatient",
                f"two instances at the same position along the slice normal ({distances[k]:.3f} mm): "
                f"{sorted_ds[k].get('SOPInstanceUID', '?')} and {sorted_ds[k + 1].get('SOPInstanceUID', '?')}",
            )
        slice_spacing = float(np.median(gaps))
        deviation = np.abs(gaps - slice_spacing) / slice_spacing
        if deviation.max() > spacing_tolerance:
            k = int(np.argmax(deviation))
            raise GeometryError(
                "ImagePositionPatient",
                f"slice spacing is not uniform: gap {gaps[k]:.4f} mm after slice {k} vs median {slice_spacing:.4f} mm "
                f"(tolerance {spacing_tolerance:.1%}); missing or extra slices?",
            )
        # Each step must go along the normal; an in-plane shift means a sheared grid (gantry tilt).
        steps = np.diff(positions, axis=0)
        in_plane = steps - np.outer(steps @ normal, normal)
        shift = np.linalg.norm(in_plane, axis=1)
        if shift.max() > spacing_tolerance * slice_spacing + 1e-3:
            raise GeometryError(
                "ImagePositionPatient",
                f"slices are shifted in-plane by up to {shift.max():.3f} mm (tilted/sheared acquisition is not supported)",
            )
    else:
        fallback = sorted_ds[0].get("SpacingBetweenSlices") or sorted_ds[0].get("SliceThickness") or 1.0
        slice_spacing = float(fallback)

    array = np.stack([_rescaled_pixels(ds, i) for i, ds in enumerate(sorted_ds)])
    if array.shape[1:] != (rows, cols):
        raise GeometryError("Rows", f"pixel data shape {array.shape[1:]} does not match Rows/Columns ({rows}, {cols})")

    row_spacing, col_spacing = float(pixel_spacing[0]), float(pixel_spacing[1])
    affine = np.eye(4)
    # Index (k, r, c): moving one row goes along the column direction cosine, one column along the row cosine.
    affine[:3, 0] = normal * slice_spacing
    affine[:3, 1] = col_dir * row_spacing
    affine[:3, 2] = row_dir * col_spacing
    affine[:3, 3] = positions[0]

    first = sorted_ds[0]
    sop_classes = {str(ds.get("SOPClassUID", "")) for ds in sorted_ds}
    if len(sop_classes) != 1:
        raise GeometryError("SOPClassUID", f"differs within the series: {sorted(sop_classes)}")
    reference = SourceReference(
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        series_instance_uid=str(first.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(first.FrameOfReferenceUID) if "FrameOfReferenceUID" in first else None,
        sop_class_uid=sop_classes.pop(),
        sop_instance_uids=tuple(str(ds.get("SOPInstanceUID", "")) for ds in sorted_ds),
    )
    return SeriesVolume(
        array=array,
        affine=affine,
        spacing=(slice_spacing, row_spacing, col_spacing),
        reference=reference,
        source_datasets=sorted_ds,
    )
