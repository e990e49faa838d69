"""Synthetic sphere phantoms with ground truth, as arrays and as DICOM MR series.

Training (``train_demo``), the unit tests and the benchmark share this one generator so
the model is trained on exactly the kind of image it is later asked to segment after a
DICOM round trip. The image comes from MONAI's ``create_test_image_3d`` (bright spheres,
intensity 0.5–1, on uniform noise); :func:`phantom_series` stores it like a scanner
would — unsigned 16-bit stored values with a Rescale Slope/Intercept that differ per
seed — so the intensity normalisation in the model's preprocessing has to undo an
arbitrary linear mapping, as it must for real series.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from monai.data.synthetic import create_test_image_3d
from pydicom.dataset import Dataset

from cohortstream.mr_slices import mr_slice_dataset
from cohortstream.synthetic import slice_normal

__all__ = ["AXIAL", "PhantomParams", "phantom_series", "phantom_uid", "phantom_volume"]

#: Image Orientation (Patient) of an axial series.
AXIAL: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: Upper bound of the uniform background noise (objects are 0.5–1.0, so noise above 0.5 overlaps them).
NOISE_MAX = 0.6


class PhantomParams:
    """Object count and radii that fit a volume of a given shape."""

    def __init__(self, shape: Sequence[int], rng: np.random.RandomState) -> None:
        smallest = min(shape)
        self.rad_max = max(2, min(12, smallest // 2 - 2))
        self.rad_min = max(1, min(4, self.rad_max - 2))
        self.num_objs = int(rng.randint(3, 10))


def phantom_uid(*parts: object) -> str:
    """A deterministic ``2.25.<uuid-int>`` UID from a hash of ``parts``."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode("utf-8")).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def phantom_volume(
    seed: int, shape: Sequence[int] = (32, 64, 64), noise_max: float = NOISE_MAX
) -> tuple[np.ndarray, np.ndarray]:
    """``(image float32 in [0, 1], truth mask uint8)`` of the given ``shape``; same seed, same arrays."""
    rng = np.random.RandomState(seed)
    params = PhantomParams(shape, rng)
    image, labels = create_test_image_3d(
        int(shape[0]),
        int(shape[1]),
        int(shape[2]),
        num_objs=params.num_objs,
        rad_max=params.rad_max,
        rad_min=params.rad_min,
        noise_max=noise_max,
        num_seg_classes=1,
        random_state=rng,
    )
    return image.astype(np.float32), (labels > 0).astype(np.uint8)


def phantom_series(
    seed: int,
    shape: Sequence[int] = (32, 64, 64),
    *,
    orientation: Sequence[float] = AXIAL,
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    slice_spacing: float = 1.5,
    origin: Sequence[float] = (-32.0, -32.0, -24.0),
    patient_id: str = "PHANTOM-0001",
    body_part: str = "PHANTOM",
) -> tuple[list[Dataset], np.ndarray]:
    """A single-frame MR series of a phantom and its truth mask.

    ``shape`` is (slices, rows, columns); the returned mask has that shape and the
    slice order of increasing position along the slice normal (the order
    :func:`consumers.annotation.volume.volume_from_datasets` produces). Datasets carry
    their file meta and can be saved as Part-10 files.
    """
    image, truth = phantom_volume(seed, shape)
    slices = int(shape[0])
    # Like a scanner: unsigned stored values, real-world value = stored * slope + intercept.
    value_rng = np.random.RandomState(seed + 7919)
    slope = float(np.round(value_rng.uniform(0.2, 2.0), 4))
    intercept = float(np.round(value_rng.uniform(-200.0, 200.0), 1))
    real_world = image * 1000.0 + intercept + 300.0
    stored = np.clip(np.round((real_world - intercept) / slope), 0, 65535).astype(np.uint16)

    iop = [float(v) for v in orientation]
    normal = slice_normal(iop)
    study_uid = phantom_uid("phantom-study", seed, patient_id)
    series_uid = phantom_uid("phantom-series", seed, patient_id, tuple(shape), tuple(iop))
    frame_uid = phantom_uid("phantom-frame", seed, patient_id)
    origin_v = np.asarray(origin, dtype=float)

    datasets: list[Dataset] = []
    for k in range(slices):
        sop_uid = phantom_uid("phantom-instance", series_uid, k)
        position = origin_v + normal * slice_spacing * k

        ds = mr_slice_dataset(
            sop_instance_uid=sop_uid,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            frame_of_reference_uid=frame_uid,
            image_position=[round(float(v), 4) for v in position],
            image_orientation=[round(v, 6) for v in iop],
            pixel_spacing=[float(pixel_spacing[0]), float(pixel_spacing[1])],
            pixels=stored[k],
            image_type=["ORIGINAL", "PRIMARY", "OTHER"],
        )
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber = f"PH{seed:06d}"
        ds.Manufacturer = "cohortstream phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Sphere phantom"
        ds.SeriesDescription = "Phantom T1w"
        ds.PatientName = f"Phantom^{seed}"
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = body_part
        ds.PatientPosition = "HFS"
        ds.Laterality = ""
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = 500.0
        ds.EchoTime = 12.0
        ds.EchoTrainLength = 1
        ds.SliceThickness = slice_spacing
        ds.SpacingBetweenSlices = slice_spacing
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.RescaleType = "US"
        datasets.append(ds)
    return datasets, truth
