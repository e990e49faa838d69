"""One series in, one suggestion out: pick the model from the series' metadata, fetch
from Orthanc, build the volume, infer, write the SEG back to Orthanc, describe it as an
``AnnotationSuggested`` event.

The model is chosen before any pixel is fetched (:mod:`consumers.annotation.applicability`):
from the facts the caller passes (the completion event's modality and the ``series``
view), or, when it has none, from Orthanc's series record (main DICOM tags only). A
series no model applies to costs one metadata lookup, not a download.

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
from cohortstream.orthanc_ids import orthanc_hash
from cohortstream.settings import Settings
from consumers.annotation.applicability import SeriesFacts
from consumers.annotation.errors import AnnotationError
from consumers.annotation.models import default_registry, model_path, select_model
from consumers.annotation.seg import build_segmentation
from consumers.annotation.volume import volume_from_datasets

__all__ = [
    "SuggestionResult",
    "annotation_id_for",
    "orthanc_series_facts",
    "process_pool",
    "segment_series",
    "suggest_series",
]

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
    flags: tuple[str, ...] = ()
    flag_reasons: tuple[str, ...] = ()


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
    files: list[bytes], model_name: str, options: dict[str, object], weights: dict[str, str]
) -> SegmentedSeries:
    """In the worker process: DICOM files → volume → model ``model_name`` → SEG bytes.

    Raises :class:`AnnotationError` (bad geometry, unreadable data, weights refused) for
    the caller to dead-letter.
    """
    from consumers.annotation.inference import infer_volume

    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    volume = volume_from_datasets(datasets)
    spec = default_registry().get(model_name)
    result = infer_volume(
        volume.array,
        volume.spacing,
        spec.name,
        weights[spec.name],
        affine=volume.affine,
        **options,  # type: ignore[arg-type]
    )
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
        flags=result.flags,
        flag_reasons=result.flag_reasons,
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
    facts: SeriesFacts | None = None,
    revision: int = 1,
    expected_instances: int = 0,
    model_name: str | None = None,
    request_id: uuid.UUID | None = None,
    pool: Executor | None = None,
) -> SuggestionResult:
    """Make (or remake, idempotently) the suggestion for one series.

    ``facts`` (modality, body part, description from the event and the views) decide the
    model before anything is fetched; without them Orthanc's series record is asked
    (metadata only). Raises :class:`AnnotationError` for a series that cannot be
    segmented (bad geometry, unreadable files, weights refused) and the archive's errors
    when Orthanc refuses; Orthanc being down is retried inside the archive (backpressure).
    """
    if facts is None:
        facts = await orthanc_series_facts(archive, study_instance_uid, series_instance_uid, patient_id)
    selection = select_model(default_registry(), facts, model_name)
    if selection.model is None:
        log.info(
            "series skipped: no model applies",
            extra={"series_instance_uid": series_instance_uid, "reason": selection.reason},
        )
        return SuggestionResult(event=None, skipped_reason=selection.reason)
    spec = selection.model
    files = await archive.series_instances(
        study_instance_uid, series_instance_uid, patient_id, expected=expected_instances
    )
    if not files:
        raise AnnotationError(f"Orthanc holds no instance of series {series_instance_uid}")
    from consumers.annotation.inference import options_from_settings

    loop = asyncio.get_running_loop()
    outcome = await loop.run_in_executor(
        pool,
        segment_series,
        files,
        spec.name,
        options_from_settings(settings),
        {spec.name: str(model_path(spec, settings))},
    )
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
        flags=list(outcome.flags),
        flag_reasons=list(outcome.flag_reasons),
    )
    log.info(
        "suggestion made",
        extra={
            "series_instance_uid": series_instance_uid,
            "model": outcome.model_name,
            "device": outcome.device,
            "inference_s": round(outcome.inference_s, 3),
            "uncertainty": round(outcome.uncertainty, 4),
            "flags": list(outcome.flags),
        },
    )
    return SuggestionResult(event=event, seg_bytes=outcome.seg_bytes)


async def orthanc_series_facts(
    archive: OrthancClient, study_instance_uid: str, series_instance_uid: str, patient_id: str
) -> SeriesFacts:
    """The series' facts from Orthanc's series record (``MainDicomTags``: Modality,
    BodyPartExamined, SeriesDescription, ProtocolName), without reading an instance;
    empty facts when Orthanc does not know the series (no model will apply)."""
    series_id = orthanc_hash(patient_id, study_instance_uid, series_instance_uid)

    async def once() -> dict[str, object]:
        response = await archive.request("GET", f"/series/{series_id}")
        if response.status_code != 200:
            return {}
        tags = response.json().get("MainDicomTags", {})
        return dict(tags) if isinstance(tags, dict) else {}

    return SeriesFacts.from_orthanc(await archive.retrying(once, "read series metadata from Orthanc"))
