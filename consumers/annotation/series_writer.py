"""Write a 3D image volume (a NIfTI, a template) as a single-frame DICOM MR series.

Why: real MR volumes that anyone may redistribute come as NIfTI (nilearn's MNI152
template and brain mask); the pipeline takes DICOM. This is the inverse of
:func:`consumers.annotation.volume.volume_from_datasets` and follows the same
conventions: the array is (slice, row, column), ``affine`` maps that index to patient
coordinates in **LPS** mm, ``array[k]`` is the k-th slice along the slice normal.

``descending=True`` numbers and lists the slices the other way round (InstanceNumber 1
is the last slice along the normal, as many scanners stack head to feet), so a test can
show that the volume comes from the geometry, never from the file or instance order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from cohortstream.mr_slices import mr_slice_dataset

__all__ = ["SeriesInfo", "lps_slices_from_nifti", "series_from_volume"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _uid(*parts: object) -> str:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode("utf-8")).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


@dataclass(frozen=True)
class SeriesInfo:
    """The identifying attributes of the series to write."""

    patient_id: str
    study_key: str
    series_key: str
    series_number: int = 1
    series_description: str = "T1w 3D"
    protocol_name: str = "t1_mprage_sag"
    body_part: str | None = "HEAD"
    study_description: str = "Brain MR"


def lps_slices_from_nifti(data: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI array (i, j, k; ``affine_ras`` to RAS mm) as an axial (slice, row, column)
    array and its LPS affine: columns go to the patient's left, rows to posterior,
    slices to superior (the usual axial display), whatever the NIfTI's axis order."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(np.asarray(affine_ras, dtype=float))
    target = nib.orientations.axcodes2ornt(("L", "P", "S"))
    transform = nib.orientations.ornt_transform(ornt, target)
    lps_data = nib.orientations.apply_orientation(np.asarray(data), transform)
    new_affine_ras = np.asarray(affine_ras, dtype=float) @ nib.orientations.inv_ornt_aff(transform, np.shape(data))
    affine_lps_ijk = _LPS_TO_RAS @ new_affine_ras  # index (i=L, j=P, k=S) → LPS, positive axes
    # (k, r, c) order: slice = k, row = j, column = i.
    array = np.ascontiguousarray(np.transpose(lps_data, (2, 1, 0)))
    affine = np.eye(4)
    affine[:3, 0] = affine_lps_ijk[:3, 2]
    affine[:3, 1] = affine_lps_ijk[:3, 1]
    affine[:3, 2] = affine_lps_ijk[:3, 0]
    affine[:3, 3] = affine_lps_ijk[:3, 3]
    return array, affine


def series_from_volume(
    array: np.ndarray,
    affine: np.ndarray,
    info: SeriesInfo,
    *,
    descending: bool = False,
    max_stored: int = 4000,
) -> list[Dataset]:
    """Single-frame MR datasets of ``array`` (slice, row, column; ``affine`` to LPS mm),
    unsigned 16-bit stored values scaled to ``max_stored`` with a Rescale Slope that
    gives the real-world values back; the affine's columns must be orthogonal."""
    volume = np.asarray(array, dtype=np.float64)
    if volume.ndim != 3:
        raise ValueError(f"array must be 3D (slice, row, column), got shape {volume.shape}")
    slice_vec, row_vec, col_vec = (np.asarray(affine[:3, i], dtype=float) for i in range(3))
    slice_spacing, row_spacing, col_spacing = (float(np.linalg.norm(v)) for v in (slice_vec, row_vec, col_vec))
    # ImageOrientationPatient: the row direction (along a row, i.e. as the column index
    # grows) and the column direction (down a column, as the row index grows).
    row_dir, col_dir = col_vec / col_spacing, row_vec / row_spacing
    normal = np.cross(row_dir, col_dir)
    if np.dot(normal, slice_vec / slice_spacing) < 0.999:
        raise ValueError("the affine's slice axis must be the normal row direction × column direction")
    low, high = float(volume.min()), float(volume.max())
    slope = (high - low) / max_stored if high > low else 1.0
    stored = np.clip(np.round((volume - low) / slope), 0, 65535).astype(np.uint16)

    study_uid = _uid("study", info.patient_id, info.study_key)
    series_uid = _uid("series", info.patient_id, info.study_key, info.series_key)
    frame_uid = _uid("frame", info.patient_id, info.study_key)
    slices = stored.shape[0]
    order = range(slices - 1, -1, -1) if descending else range(slices)
    datasets: list[Dataset] = []
    for number, k in enumerate(order, start=1):
        position = np.asarray(affine[:3, 3], dtype=float) + slice_vec * k
        sop_uid = _uid("instance", series_uid, k)
        ds = mr_slice_dataset(
            sop_instance_uid=sop_uid,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            frame_of_reference_uid=frame_uid,
            image_position=[round(float(v), 4) for v in position],
            image_orientation=[round(float(v), 6) for v in (*row_dir, *col_dir)],
            pixel_spacing=[round(row_spacing, 6), round(col_spacing, 6)],
            pixels=stored[k],
            image_type=["DERIVED", "PRIMARY", "OTHER"],
        )
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240301"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "090000"
        ds.AccessionNumber = ""
        ds.Manufacturer = "cohortstream"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = info.study_description
        ds.SeriesDescription = info.series_description
        ds.ProtocolName = info.protocol_name
        ds.PatientName = ""
        ds.PatientID = info.patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        if info.body_part is not None:
            ds.BodyPartExamined = info.body_part
        ds.PatientPosition = "HFS"
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = 2300.0
        ds.EchoTime = 2.98
        ds.EchoTrainLength = 1
        ds.SliceThickness = round(slice_spacing, 6)
        ds.SpacingBetweenSlices = round(slice_spacing, 6)
        ds.SeriesNumber = info.series_number
        ds.InstanceNumber = number
        ds.RescaleSlope = f"{slope:.10g}"
        ds.RescaleIntercept = f"{low:.10g}"
        ds.RescaleType = "US"
        datasets.append(ds)
    return datasets
