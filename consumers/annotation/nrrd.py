"""A DICOM SEG as the raw NRRD label map the OHIF MONAI Label panel reads.

OHIF's MONAI Label extension asks ``/infer`` for ``result_extension=.nrrd`` and copies
the NRRD's voxels straight into the labelmap of the series it displays: it does not
resample, so the voxels must be on the series' own grid, in the order its volume has —
columns fastest, then rows, then slices **ascending along the slice normal**
(row cosine × column cosine), whatever order the instances were numbered or sent in.
The header still carries the LPS geometry (origin = the first slice's position) so other
readers (3D Slicer, ``pynrrd``) place the map correctly.

Only headers of the source instances are needed (no pixel data).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from consumers.annotation.errors import GeometryError
from consumers.annotation.seg import read_label_map

__all__ = ["SliceGrid", "label_map_nrrd", "seg_as_nrrd", "slice_grid"]


@dataclass(frozen=True)
class SliceGrid:
    """The source instances in ascending order along the normal, and their voxel axes (LPS, mm)."""

    sop_instance_uids: tuple[str, ...]
    origin: np.ndarray
    #: Columns of the voxel → LPS step: [column step, row step, slice step], each a 3-vector.
    directions: np.ndarray


def _floats(ds: Dataset, keyword: str, count: int) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or len(value) != count:
        raise GeometryError(keyword, f"missing or not {count} numbers in instance {ds.get('SOPInstanceUID', '?')}")
    return np.asarray([float(v) for v in value], dtype=float)


def slice_grid(sources: Sequence[Dataset]) -> SliceGrid:
    """Sort single-frame instances of one series ascending along the slice normal."""
    if not sources:
        raise GeometryError("SOPInstanceUID", "the series has no instances")
    iop = _floats(sources[0], "ImageOrientationPatient", 6)
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)
    positions = np.stack([_floats(ds, "ImagePositionPatient", 3) for ds in sources])
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    row_spacing, col_spacing = _floats(sources[0], "PixelSpacing", 2)
    if len(sources) > 1:
        slice_step = (positions[-1] - positions[0]) / (len(sources) - 1)
    else:
        thickness = float(sources[0].get("SpacingBetweenSlices") or sources[0].get("SliceThickness") or 1.0)
        slice_step = normal * thickness
    directions = np.stack([row_cos * col_spacing, col_cos * row_spacing, slice_step], axis=1)
    return SliceGrid(
        sop_instance_uids=tuple(str(sources[int(i)].SOPInstanceUID) for i in order),
        origin=positions[0],
        directions=directions,
    )


def _vector(v: np.ndarray) -> str:
    return "(" + ",".join(f"{float(x):.10g}" for x in v) + ")"


def label_map_nrrd(labels: np.ndarray, grid: SliceGrid) -> bytes:
    """A raw, little-endian uint8 NRRD of ``labels`` (slice, row, column) on ``grid``."""
    if labels.ndim != 3 or labels.shape[0] != len(grid.sop_instance_uids):
        raise GeometryError(
            "SOPInstanceUID", f"label map {labels.shape} does not match {len(grid.sop_instance_uids)} slices"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("labels: values must fit in uint8 (0..255)")
    slices, rows, columns = labels.shape
    header = (
        "NRRD0004\n"
        "# label values of a DICOM SEG on its source series' grid (cohortstream)\n"
        "type: uint8\n"
        "dimension: 3\n"
        "space: left-posterior-superior\n"
        f"sizes: {columns} {rows} {slices}\n"
        "space directions: " + " ".join(_vector(grid.directions[:, i]) for i in range(3)) + "\n"
        "kinds: domain domain domain\n"
        "endian: little\n"
        "encoding: raw\n"
        f"space origin: {_vector(grid.origin)}\n\n"
    )
    return header.encode("ascii") + np.ascontiguousarray(labels, dtype=np.uint8).tobytes(order="C")


def seg_as_nrrd(seg: Dataset, sources: Sequence[Dataset]) -> bytes:
    """The label map of a BINARY SEG (segment numbers as values) on its source series."""
    grid = slice_grid(sources)
    labels = read_label_map(seg, grid.sop_instance_uids)
    return label_map_nrrd(np.asarray(labels), grid)
