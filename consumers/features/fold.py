"""Fold events into feature input documents (shapes: :mod:`cohortstream.features.inputs`).

Each event becomes ``$set`` operations on natural keys (a lab row by its source row id,
a questionnaire by project/record/event/instrument/instance, a series by its UID, an
annotation by its id, a review by its event id), so applying an event twice, or the
topics in another order, leaves the same documents (DESIGN decision 4). The same
updates are applied to MongoDB by the live sink and to plain dicts by the rebuild.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo import UpdateOne

from cohortstream.events import (
    AnnotationReviewed,
    AnnotationSuggested,
    DicomInstanceReceived,
    EhrRecord,
    EhrRecordType,
    Event,
    RedcapRecordChanged,
)
from cohortstream.mongo import safe_key
from cohortstream.subjects import SubjectIdentifier
from consumers.statistics import age_years, normalise_sex

__all__ = ["InputUpdate", "apply_update", "fold_event", "fold_events", "mongo_update"]

_LAB_TYPES = (EhrRecordType.LAB, EhrRecordType.OBSERVATION)
_DIAGNOSIS_TYPES = (EhrRecordType.DIAGNOSIS, EhrRecordType.CONDITION)


@dataclass
class InputUpdate:
    """``$set`` of dotted paths on one input document, and the latest event time."""

    doc_id: str
    sets: dict[str, Any] = field(default_factory=dict)
    last_event_at: datetime | None = None

    def merge(self, other: InputUpdate) -> None:
        self.sets.update(other.sets)
        if other.last_event_at is not None and (self.last_event_at is None or other.last_event_at > self.last_event_at):
            self.last_event_at = other.last_event_at


def _ehr(event: EhrRecord) -> list[InputUpdate]:
    doc = InputUpdate(SubjectIdentifier.ehr(event.source, event.subject_id).key, last_event_at=event.emitted_at)
    row = safe_key(event.source_row_id)
    if event.record_type == EhrRecordType.PATIENT:
        doc.sets["demographics.sex"] = normalise_sex(event.attributes.get("gender"))
        doc.sets["demographics.age"] = age_years(event.attributes.get("anchor_age"))
    elif (
        event.record_type in _LAB_TYPES
        and event.code
        and event.effective_at is not None
        and event.value_number is not None
    ):
        doc.sets[f"labs.{row}"] = [event.code, event.effective_at, event.value_number, event.unit]
    elif event.record_type in _DIAGNOSIS_TYPES and event.code:
        doc.sets[f"diagnoses.{row}"] = event.code
    return [doc]


def _redcap(event: RedcapRecordChanged) -> list[InputUpdate]:
    identifier = SubjectIdentifier.redcap(event.redcap_url, event.project_id, event.record_id)
    key = "|".join(
        [event.event_name or "", event.instrument, str(event.repeat_instance or 1)],
    )
    doc = InputUpdate(identifier.key, last_event_at=event.emitted_at)
    doc.sets[f"questionnaires.{safe_key(key)}"] = {
        "instrument": event.instrument,
        "event_name": event.event_name,
        "repeat_instance": event.repeat_instance or 1,
        "values": dict(event.values),
        "labels": dict(event.labels),
        "pulled_at": event.emitted_at,
    }
    return [doc]


def _dicom(event: DicomInstanceReceived) -> list[InputUpdate]:
    patient = InputUpdate(SubjectIdentifier.dicom(event.patient_id).key, last_event_at=event.emitted_at)
    patient.sets[f"series.{safe_key(event.series_instance_uid)}"] = {
        "uid": event.series_instance_uid,
        "study": event.study_instance_uid,
        "modality": event.modality,
    }
    if (sex := normalise_sex(event.patient_sex)) is not None:
        patient.sets["demographics.sex"] = sex
    if (age := age_years(event.patient_age)) is not None:
        patient.sets["demographics.age"] = age
    series = InputUpdate(f"series:{event.series_instance_uid}", last_event_at=event.emitted_at)
    series.sets["patient_id"] = event.patient_id
    return [patient, series]


def _suggested(event: AnnotationSuggested) -> list[InputUpdate]:
    doc = InputUpdate(f"series:{event.series_instance_uid}", last_event_at=event.emitted_at)
    doc.sets[f"annotations.{event.annotation_id}"] = {
        "model": event.model_name,
        "version": event.model_version,
        "segments": {safe_key(s.label): s.volume_ml for s in event.segments},
        "suggested_at": event.emitted_at,
    }
    return [doc]


def _reviewed(event: AnnotationReviewed) -> list[InputUpdate]:
    doc = InputUpdate(f"series:{event.series_instance_uid}", last_event_at=event.emitted_at)
    doc.sets[f"reviews.{event.annotation_id}.{event.event_id}"] = [event.decision.value, event.reviewed_at]
    return [doc]


def fold_event(event: Event) -> list[InputUpdate]:
    """The input updates of one event (none for an event kind features do not use)."""
    if isinstance(event, EhrRecord):
        return _ehr(event)
    if isinstance(event, RedcapRecordChanged):
        return _redcap(event)
    if isinstance(event, DicomInstanceReceived):
        return _dicom(event)
    if isinstance(event, AnnotationSuggested):
        return _suggested(event)
    if isinstance(event, AnnotationReviewed):
        return _reviewed(event)
    return []


def fold_events(events: Iterable[Event]) -> dict[str, InputUpdate]:
    """The updates of many events, merged per document (later events' values win a path)."""
    merged: dict[str, InputUpdate] = {}
    for event in events:
        for update in fold_event(event):
            if update.doc_id in merged:
                merged[update.doc_id].merge(update)
            else:
                merged[update.doc_id] = update
    return merged


def mongo_update(update: InputUpdate) -> UpdateOne:
    """The upsert of one merged update; marks the document pending until its subject's
    features are written (``seq`` tells a flush whether it saw the latest fold)."""
    operation: dict[str, Any] = {"$set": {**update.sets, "pending": True}, "$inc": {"seq": 1}}
    if update.last_event_at is not None:
        operation["$max"] = {"last_event_at": update.last_event_at}
    return UpdateOne({"_id": update.doc_id}, operation, upsert=True)


def apply_update(documents: MutableMapping[str, dict[str, Any]], update: InputUpdate) -> None:
    """Apply an update to in-memory documents as MongoDB would (the rebuild's path)."""
    doc = documents.setdefault(update.doc_id, {"_id": update.doc_id})
    for path, value in update.sets.items():
        *parents, leaf = path.split(".")
        target = doc
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    if update.last_event_at is not None:
        current = doc.get("last_event_at")
        if current is None or update.last_event_at > current:
            doc["last_event_at"] = update.last_event_at
