"""Test data for the review API: a phantom series and a real DICOM SEG of it.

The SEG is made the way the annotation worker makes one (``seg.build_segmentation`` on
the phantom's truth mask), so the upload checks are exercised on a genuine
highdicom-written object, not a hand-built header.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from consumers.annotation.models import DEFAULT_MODEL_NAME, default_registry
from consumers.annotation.phantoms import phantom_series
from consumers.annotation.seg import build_segmentation
from consumers.annotation.volume import volume_from_datasets

__all__ = ["PhantomWithSeg", "dataset_bytes", "phantom_with_seg"]


@dataclass(frozen=True)
class PhantomWithSeg:
    """A phantom series and a SEG that references it."""

    series: list[Dataset]
    seg: Dataset
    seg_bytes: bytes

    @property
    def study_instance_uid(self) -> str:
        return str(self.series[0].StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.series[0].SeriesInstanceUID)


def dataset_bytes(ds: Dataset) -> bytes:
    """``ds`` as a Part-10 file."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def phantom_with_seg(
    seed: int = 3,
    shape: tuple[int, int, int] = (6, 24, 24),
    *,
    content_label: str = "CORRECTED",
    patient_id: str = "PHANTOM-0001",
) -> PhantomWithSeg:
    """A small phantom series and a SEG of its truth mask (a stand-in for a reviewer's correction)."""
    series, truth = phantom_series(seed, shape, patient_id=patient_id)
    volume = volume_from_datasets(series)
    spec = default_registry().get(DEFAULT_MODEL_NAME)
    seg = build_segmentation(volume, truth, spec, content_label=content_label, series_number=9002)
    # The worker's UIDs are derived from (series, model): a person's correction gets its own.
    seg.SeriesInstanceUID = generate_uid()
    seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return PhantomWithSeg(series=series, seg=seg, seg_bytes=dataset_bytes(seg))
