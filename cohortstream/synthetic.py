"""Deterministic synthetic MR studies for tests and benchmarks.

:func:`mr_study` builds a multi-series brain MR study (T1w axial, T2w coronal, FLAIR
sagittal, then repeating) as Part-10 ready pydicom datasets: MR Image Storage, explicit VR
little endian, every UID derived from the seed (same seed, same UIDs), consistent
geometry (Image Position (Patient) steps along the slice normal of Image Orientation
(Patient) by the slice spacing) and small int16 pixel data showing an ellipsoid "head"
with a brighter core, so viewers and segmentation code have something to look at.
:func:`write_study` saves them as files.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from cohortstream.mr_slices import mr_slice_dataset

__all__ = ["SERIES_PROTOCOLS", "mr_study", "slice_normal", "write_study"]

#: (SeriesDescription, orientation name, row direction, column direction, TR ms, TE ms, TI ms or None)
SERIES_PROTOCOLS: tuple[tuple[str, str, tuple[float, ...], tuple[float, ...], float, float, float | None], ...] = (
    ("T1w", "axial", (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), 500.0, 12.0, None),
    ("T2w", "coronal", (1.0, 0.0, 0.0), (0.0, 0.0, -1.0), 4000.0, 90.0, None),
    ("FLAIR", "sagittal", (0.0, 1.0, 0.0), (0.0, 0.0, -1.0), 9000.0, 120.0, 2500.0),
)

_FOV_MM = 230.0
_IMPLEMENTATION_VERSION = "COHORTSTREAM_SYN"


def slice_normal(image_orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of the image plane: row direction × column direction."""
    row = np.asarray(image_orientation[:3], dtype=float)
    col = np.asarray(image_orientation[3:6], dtype=float)
    normal = np.cross(row, col)
    unit: np.ndarray = normal / np.linalg.norm(normal)
    return unit


def _uid(*parts: object) -> str:
    # pydicom ignores entropy_srcs when prefix is None (it returns a random UUID-based
    # UID), so derive the 2.25 UUID-integer form from a hash of the parts ourselves.
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode("utf-8")).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def _phantom(rows: int, cols: int, slices: int, index: int, contrast: float, rng: np.random.Generator) -> np.ndarray:
    """One slice of an ellipsoid with a brighter core and a little deterministic noise."""
    z = (index + 0.5) / slices * 2.0 - 1.0
    y, x = np.mgrid[-1.0 : 1.0 : complex(0, rows), -1.0 : 1.0 : complex(0, cols)]
    outer = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.85) ** 2
    inner = (x / 0.35) ** 2 + (y / 0.45) ** 2 + (z / 0.4) ** 2
    image = np.where(outer <= 1.0, 400.0, 0.0) + np.where(inner <= 1.0, 400.0 * contrast, 0.0)
    image += rng.normal(0.0, 10.0, size=(rows, cols))
    pixels: np.ndarray = np.clip(image, 0, 32767).astype(np.int16)
    return pixels


def mr_study(
    n_series: int = 3,
    slices: int = 60,
    rows: int = 64,
    cols: int = 64,
    seed: int = 0,
    patient_id: str = "SYNTH-0001",
) -> list[Dataset]:
    """A synthetic brain MR study: ``n_series`` series of ``slices`` slices each.

    Deterministic: the same arguments give the same UIDs, attributes and pixels.
    Each dataset carries its file meta (``ds.file_meta``) and can be saved with
    ``ds.save_as(path, enforce_file_format=True)``.
    """
    if n_series < 1 or slices < 1 or rows < 2 or cols < 2:
        raise ValueError("mr_study needs n_series >= 1, slices >= 1, rows >= 2 and cols >= 2")
    attrs = random.Random(f"{seed}/{patient_id}")
    sex = attrs.choice(["F", "M"])
    age_years = attrs.randint(20, 85)
    study_date = date(2020, 1, 1) + timedelta(days=attrs.randint(0, 4 * 365))
    birth_date = date(study_date.year - age_years, 1 + attrs.randint(0, 11), 1 + attrs.randint(0, 27))
    pixel_rng = np.random.default_rng(seed)

    study_uid = _uid("study", seed, patient_id)
    frame_uid = _uid("frame", seed, patient_id)
    pixel_spacing = _FOV_MM / max(rows, cols)
    slice_thickness = round(180.0 / slices, 3) if slices > 1 else 3.0

    datasets: list[Dataset] = []
    for s in range(n_series):
        description, _orientation, row_dir, col_dir, tr, te, ti = SERIES_PROTOCOLS[s % len(SERIES_PROTOCOLS)]
        if s >= len(SERIES_PROTOCOLS):
            description = f"{description} run-{s // len(SERIES_PROTOCOLS) + 1}"
        series_number = s + 1
        series_uid = _uid("series", seed, patient_id, series_number)
        iop = [*row_dir, *col_dir]
        normal = slice_normal(iop)
        row_v, col_v = np.asarray(row_dir), np.asarray(col_dir)
        # Centre the volume on the origin of the patient coordinate system.
        first = (
            -row_v * pixel_spacing * (cols - 1) / 2
            - col_v * pixel_spacing * (rows - 1) / 2
            - normal * slice_thickness * (slices - 1) / 2
        )
        contrast = 0.5 + 0.4 * (s % len(SERIES_PROTOCOLS))
        for i in range(slices):
            instance_number = i + 1
            sop_uid = _uid("instance", seed, patient_id, series_number, instance_number)
            position = first + normal * slice_thickness * i

            ds = mr_slice_dataset(
                sop_instance_uid=sop_uid,
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                frame_of_reference_uid=frame_uid,
                image_position=[round(float(v), 4) for v in position],
                image_orientation=[float(v) for v in iop],
                pixel_spacing=[round(pixel_spacing, 4), round(pixel_spacing, 4)],
                pixels=_phantom(rows, cols, slices, i, contrast, pixel_rng),
                image_type=["ORIGINAL", "PRIMARY", "M", "NONE"],
                implementation_version_name=_IMPLEMENTATION_VERSION,
            )
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date.strftime("%Y%m%d")
            ds.StudyTime = "090000"
            ds.SeriesTime = f"09{10 + s:02d}00"
            ds.ContentTime = f"09{10 + s:02d}{i % 60:02d}"
            ds.AccessionNumber = f"ACC{seed:06d}"
            ds.Manufacturer = "cohortstream synthetic"
            ds.InstitutionName = "Synthetic Research Site"
            ds.ReferringPhysicianName = ""
            ds.StudyDescription = "Synthetic brain MRI"
            ds.SeriesDescription = description
            ds.PatientName = f"Synthetic^{patient_id}"
            ds.PatientID = patient_id
            ds.PatientBirthDate = birth_date.strftime("%Y%m%d")
            ds.PatientSex = sex
            ds.PatientAge = f"{age_years:03d}Y"
            ds.BodyPartExamined = "HEAD"
            ds.ScanningSequence = "IR" if ti is not None else "SE"
            ds.SequenceVariant = "SK"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.SliceThickness = slice_thickness
            ds.SpacingBetweenSlices = slice_thickness
            ds.RepetitionTime = tr
            ds.EchoTime = te
            if ti is not None:
                ds.InversionTime = ti
            ds.EchoTrainLength = 1
            ds.MagneticFieldStrength = 3.0
            ds.SeriesNumber = series_number
            ds.AcquisitionNumber = 1
            ds.InstanceNumber = instance_number
            ds.SliceLocation = round(float(np.dot(position, normal)), 4)
            ds.WindowCenter = 400
            ds.WindowWidth = 1000
            datasets.append(ds)
    return datasets


def write_study(datasets: Sequence[Dataset], directory: Path) -> list[Path]:
    """Save each dataset as a Part-10 file under ``directory/series-NN/IM-NNNN.dcm``;
    returns the paths in the order of ``datasets``."""
    directory = Path(directory)
    paths: list[Path] = []
    for ds in datasets:
        folder = directory / f"series-{int(ds.SeriesNumber):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"IM-{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
