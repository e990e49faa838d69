"""One series in, one suggestion out: fetch from Orthanc, build the volume, infer, write
the SEG back to Orthanc, describe it as an ``AnnotationSuggested`` event.

The CPU/GPU-heavy steps (decoding the DICOM files, building the volume, inference, SEG
encoding) run in a separate worker process (:func:`process_pool`), so the event loop of
the consumer keeps heartbeating to Kafka while a model runs; the model is loaded once per
worker process. Ids are deterministic (annotation id and SEG UIDs from series, revision
and model), so processing the same completion twice stores the same SEG once and
publishes an event the views fold into the same document.
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import pydicom

from cohortstream.events import AnnotationSuggested, SuggestedSegment
from cohortstream.orthanc import OrthancClient
from cohortstream.settings import Settings
from consumers.annotation.errors import AnnotationError
from consumers.annotation.inference import infer_volume, options_from_settings
from consumers.annotation.models import default_registry, model_path, select_model
from consumers.annotation.seg import build_segmentation
from consumers.annotation.volume import volume_from_datasets

__all__ = ["SuggestionResult", "annotation_id_for", "process_pool", "segment_series", "suggest_series"]

log = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("6f1c1c4e-3a51-4e0b-9a53-2f1c0a7d5e11")


def annotation_id_for(series_instance_uid: str, revision: int, model_name: str, model_version: str) -> uuid.UUID:
    """The id of the suggestion a model makes for one revision of a series."""
    return uuid.uuid5(_NAMESPACE, f"{series_instance_uid}|{revision}|{model_name}|{model_version}")


@dataclass(frozen=True)
class SegmentedSeries:
    """What the worker process sends back: plain, picklable values."""

    model_name: str
    model_version: str
    seg_bytes: bytes
    seg_sop_instance_uid: str
    seg_series_instance_uid: str
    segments: tuple[SuggestedSegment, ...]
    uncertainty: float
    device: str
    inference_s: float


@dataclass(frozen=True)
class SuggestionResult:
    """The event to publish, or why the series was skipped (no model applies)."""

    event: AnnotationSuggested | None
    seg_bytes: bytes | None = None
    skipped_reason: str | None = None


def process_pool() -> ProcessPoolExecutor:
    """One worker process ('spawn': CUDA and torch threads do not survive a fork)."""
    return ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))


def segment_series(
    files: list[bytes], model_name: str | None, options: dict[str, object], weights: dict[str, str]
) -> SegmentedSeries | str:
    """In the worker process: DICOM files → volume → model → SEG bytes.

    Returns the reason as text when no model applies; raises :class:`AnnotationError`
    (bad geometry, unreadable data) for the caller to dead-letter.
    """
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    volume = volume_from_datasets(datasets)
    first = volume.source_datasets[0]
    selection = select_model(
        default_registry(),
        str(first.get("Modality", "")) or None,
        str(first.get("BodyPartExamined", "")) or None,
        model_name,
    )
    if selection.model is None:
        return selection.reason
    spec = selection.model
    result = infer_volume(volume.array, volume.spacing, spec.name, weights[spec.name], **options)  # type: ignore[arg-type]
    seg = build_segmentation(volume, result.labels, spec)
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    by_number = {s.number: s for s in spec.segments}
    segments = tuple(
        SuggestedSegment(
            segment_number=stats.segment_number,
            label=stats.label,
            property_category=_coded(by_number[stats.segment_number].property_category),
            property_type=_coded(by_number[stats.segment_number].property_type),
            voxel_count=stats.voxel_count,
            volume_ml=stats.volume_ml,
        )
        for stats in result.segments
    )
    return SegmentedSeries(
        model_name=spec.name,
        model_version=spec.version,
        seg_bytes=buffer.getvalue(),
        seg_sop_instance_uid=str(seg.SOPInstanceUID),
        seg_series_instance_uid=str(seg.SeriesInstanceUID),
        segments=segments,
        uncertainty=float(result.uncertainty),
        device=result.device,
        inference_s=float(result.inference_s),
    )


def _coded(code: Any) -> str:
    """A coded concept as text for the event: ``SCHEME:VALUE:meaning``."""
    return f"{code.scheme_designator}:{code.value}:{code.meaning}"


async def suggest_series(
    settings: Settings,
    archive: OrthancClient,
    *,
    study_instance_uid: str,
    series_instance_uid: str,
    patient_id: str,
    revision: int = 1,
    expected_instances: int = 0,
    model_name: str | None = None,
    request_id: uuid.UUID | None = None,
    pool: Executor | None = None,
) -> SuggestionResult:
    """Make (or remake, idempotently) the suggestion for one series.

    Raises :class:`AnnotationError` for a series that cannot be segmented (bad geometry,
    unreadable files) and the archive's errors when Orthanc refuses; Orthanc being down
    is retried inside the archive (backpressure).
    """
    files = await archive.series_instances(
        study_instance_uid, series_instance_uid, patient_id, expected=expected_instances
    )
    if not files:
        raise AnnotationError(f"Orthanc holds no instance of series {series_instance_uid}")
    loop = asyncio.get_running_loop()
    outcome = await loop.run_in_executor(
        pool,
        segment_series,
        files,
        model_name,
        options_from_settings(settings),
        {spec.name: str(model_path(spec, settings)) for spec in default_registry()},
    )
    if isinstance(outcome, str):
        log.info(
            "series skipped: no model applies", extra={"series_instance_uid": series_instance_uid, "reason": outcome}
        )
        return SuggestionResult(event=None, skipped_reason=outcome)
    await archive.store_bytes(outcome.seg_bytes, f"SEG of series {series_instance_uid}")
    event = AnnotationSuggested(
        producer="annotation-worker",
        annotation_id=annotation_id_for(series_instance_uid, revision, outcome.model_name, outcome.model_version),
        request_id=request_id,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        model_name=outcome.model_name,
        model_version=outcome.model_version,
        seg_sop_instance_uid=outcome.seg_sop_instance_uid,
        segments=list(outcome.segments),
        uncertainty=min(1.0, max(0.0, outcome.uncertainty)),
        device=outcome.device,
        inference_s=outcome.inference_s,
    )
    log.info(
        "suggestion made",
        extra={
            "series_instance_uid": series_instance_uid,
            "model": outcome.model_name,
            "device": outcome.device,
            "inference_s": round(outcome.inference_s, 3),
            "uncertainty": round(outcome.uncertainty, 4),
        },
    )
    return SuggestionResult(event=event, seg_bytes=outcome.seg_bytes)
