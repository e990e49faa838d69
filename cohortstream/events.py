"""Typed Python records for the Avro events in ``avro_schemas/``.

The ``.avsc`` files are the contract; these frozen models are how Python code holds an
event. Each model names its schema in ``avro_name``; ``tests/unit/test_events.py`` checks
that every schema has a model whose fields match it name for name and null for null, so
the two cannot drift apart. Models validate on construction (a malformed event cannot be
built), the codec validates again against the schema when encoding.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, ClassVar, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ORTHANC_FEED_PRODUCER",
    "AccessAudited",
    "AnnotationRequestReason",
    "AnnotationRequested",
    "AnnotationReviewed",
    "AnnotationSuggested",
    "AuditOutcome",
    "DeadLetter",
    "DicomInstanceReceived",
    "DicomSeriesCompleted",
    "EhrRecord",
    "EhrRecordType",
    "Event",
    "FailureStage",
    "RedcapCompletionStatus",
    "RedcapRecordChanged",
    "RedcapTrigger",
    "ReviewDecision",
    "SuggestedSegment",
    "event_model",
    "event_models",
]

NAMESPACE = "org.cohortstream.events"

#: ``producer`` of the events the Orthanc change feed publishes (``producers/orthanc``).
#: The annotation view reads it: a review from the feed is a correction made outside the
#: API (a SEG a viewer saved in Orthanc), and the API's own record of the same SEG wins.
ORTHANC_FEED_PRODUCER = "orthanc-feed"


def _now() -> datetime:
    # Avro timestamp-millis keeps milliseconds; truncating here makes a round trip exact.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Event(BaseModel):
    """Fields every event carries, and the link from a model to its Avro schema."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    avro_name: ClassVar[str]
    """Full Avro name of the schema this model mirrors."""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    emitted_at: AwareDatetime = Field(default_factory=_now)
    producer: str

    def to_avro(self) -> dict[str, Any]:
        """The record as the codec writes it (enums as their symbols)."""
        return self.model_dump(mode="python")

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> Self:
        """Build the model from a decoded Avro record."""
        return cls.model_validate(record)


class DicomInstanceReceived(Event):
    """See ``avro_schemas/dicom_instance_received.avsc``."""

    avro_name: ClassVar[str] = f"{NAMESPACE}.DicomInstanceReceived"

    calling_aet: str
    called_aet: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str
    patient_sex: str | None = None
    patient_age: str | None = None
    study_date: date | None = None
    study_description: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    modality: str
    body_part_examined: str | None = None
    size_bytes: int = Field(ge=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    staged_uri: str | None = None
    received_at: AwareDatetime
    orthanc_instance_id: str | None = None
    orthanc_origin: str | None = None
    orthanc_change_seq: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _staged_or_archived(self) -> Self:
        # Two routes, one contract: the listener's claim check (a staged file and its
        # hash, both or neither), or an instance Orthanc already holds (its id). An event
        # with neither could be neither stored nor found by the archive agent.
        if (self.sha256 is None) != (self.staged_uri is None):
            raise ValueError("sha256 and staged_uri come together (a staged file and its hash)")
        if self.staged_uri is None and self.orthanc_instance_id is None:
            raise ValueError("an event without a staged file must name the Orthanc instance (orthanc_instance_id)")
        return self

    @property
    def staged(self) -> bool:
        """Whether the bytes wait in the staging store (listener) rather than already in Orthanc (change feed)."""
        return self.staged_uri is not None


class DicomSeriesCompleted(Event):
    """See ``avro_schemas/dicom_series_completed.avsc``."""

    avro_name: ClassVar[str] = f"{NAMESPACE}.DicomSeriesCompleted"

    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    modality: str
    instance_count: int = Field(ge=1)
    first_received_at: AwareDatetime
    last_received_at: AwareDatetime
    revision: int = Field(ge=1)
    quiet_period_s: float = Field(ge=0)


class RedcapCompletionStatus(StrEnum):
    """REDCap's ``[instrument]_complete``: 0, 1, 2."""

    INCOMPLETE = "INCOMPLETE"
    UNVERIFIED = "UNVERIFIED"
    COMPLETE = "COMPLETE"


class RedcapTrigger(StrEnum):
    """What caused a REDCap record to be pulled."""

    DATA_ENTRY_TRIGGER = "DATA_ENTRY_TRIGGER"
    FULL_SYNC = "FULL_SYNC"


RedcapValue = None | bool | int | float | str | list[str]


class RedcapRecordChanged(Event):
    """See ``avro_schemas/redcap_record_changed.avsc``."""

    avro_name: ClassVar[str] = f"{NAMESPACE}.RedcapRecordChanged"

    redcap_url: str
    project_id: str
    record_id: str
    event_name: str | None = None
    instrument: str
    repeat_instrument: str | None = None
    repeat_instance: int | None = None
    data_access_group: str | None = None
    completion_status: RedcapCompletionStatus
    trigger: RedcapTrigger
    values: dict[str, RedcapValue]
    labels: dict[str, str] = Field(default_factory=dict)


class EhrRecordType(StrEnum):
    """Kind of clinical fact in an EHR row."""

    PATIENT = "PATIENT"
    ADMISSION = "ADMISSION"
    ENCOUNTER = "ENCOUNTER"
    LAB = "LAB"
    OBSERVATION = "OBSERVATION"
    DIAGNOSIS = "DIAGNOSIS"
    CONDITION = "CONDITION"


class EhrRecord(Event):
    """See ``avro_schemas/ehr_record.avsc``."""

    avro_name: ClassVar[str] = f"{NAMESPACE}.EhrRecord"

    source: str
    source_file: str
    source_row_id: str
    subject_id: str
    record_type: EhrRecordType
    effective_at: AwareDatetime | None = None
    code_system: str | None = None
    code: str | None = None
    display: str | None = None
    value_number: float | None = None
    value_text: str | None = None
    unit: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)


class AnnotationRequestReason(StrEnum):
    """Why a segmentation suggestion is wanted."""

    SERIES_COMPLETED = "SERIES_COMPLETED"
    MANUAL = "MANUAL"
    REPROCESS = "REPROCESS"


class AnnotationRequested(Event):
    """See ``avro_schemas/annotation_requested.avsc``."""

    avro_name: ClassVar[str] = f"{NAMESPACE}.AnnotationRequested"

    request_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    study_instance_uid: str
    series_instance_uid: str
    series_revision: int = Field(ge=1)
    model_name: str | None = None
    requested_by: str
    reason: AnnotationRequestReason


class SuggestedSegment(BaseModel):
    """One segment of a suggested segmentation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    segment_number: int = Field(ge=1)
    label: str
    property_category: str | None = None
    property_type: str | None = None
    voxel_count: int = Field(ge=0)
    volume_ml: float = Field(ge=0)


class AnnotationSuggested(Event):
    """See ``avro_schemas/annotation_suggested.avsc``."""

    avro_name: ClassVar[str] = f"{NAMESPACE}.AnnotationSuggested"

    annotation_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    request_id: uuid.UUID | None = None
    study_instance_uid: str
    series_instance_uid: str
    model_name: str
    model_version: str
    seg_sop_instance_uid: str
    segments: list[SuggestedSegment]
    uncertainty: float | None = Field(default=None, ge=0, le=1)
    device: str
    inference_s: float = Field(ge=0)
    #: e.g. ``["implausible"]``: the suggestion needs a person's eye before anything else.
    flags: list[str] = Field(default_factory=list)
    flag_reasons: list[str] = Field(default_factory=list)


class ReviewDecision(StrEnum):
    """Outcome of a review of a suggestion."""

    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"
    CORRECTED = "CORRECTED"


class AnnotationReviewed(Event):
    """See ``avro_schemas/annotation_reviewed.avsc``."""

    avro_name: ClassVar[str] = f"{NAMESPACE}.AnnotationReviewed"

    annotation_id: uuid.UUID
    study_instance_uid: str
    series_instance_uid: str
    reviewer: str
    decision: ReviewDecision
    reason: str | None = None
    corrected_seg_sop_instance_uid: str | None = None
    reviewed_at: AwareDatetime


class FailureStage(StrEnum):
    """Where processing of a dead-lettered message failed."""

    DECODE = "DECODE"
    VALIDATE = "VALIDATE"
    SINK = "SINK"
    OTHER = "OTHER"


class DeadLetter(Event):
    """See ``avro_schemas/dead_letter.avsc``."""

    avro_name: ClassVar[str] = f"{NAMESPACE}.DeadLetter"

    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    source_location: str | None = None
    key: bytes | None = None
    value: bytes | None = None
    stage: FailureStage
    error_type: str
    reason: str
    attempts: int = Field(ge=0)


class AuditOutcome(StrEnum):
    """How an audited access ended (from the HTTP status for the API)."""

    SUCCESS = "SUCCESS"
    NOT_FOUND = "NOT_FOUND"
    INVALID = "INVALID"
    FAILED = "FAILED"


class AccessAudited(Event):
    """See ``avro_schemas/access_audited.avsc``: one record of the audit trail."""

    avro_name: ClassVar[str] = f"{NAMESPACE}.AccessAudited"

    actor_id: str = Field(min_length=1)
    actor_name: str
    actor_role: str | None = None
    action: str = Field(min_length=1)
    endpoint: str
    query_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    subject_ids: list[str] = Field(default_factory=list)
    subject_count: int | None = Field(default=None, ge=0)
    subject_ids_truncated: bool = False
    outcome: AuditOutcome
    status: int | None = None
    source_address: str | None = None


_MODELS: dict[str, type[Event]] = {
    model.avro_name: model
    for model in (
        DicomInstanceReceived,
        DicomSeriesCompleted,
        RedcapRecordChanged,
        EhrRecord,
        AnnotationRequested,
        AnnotationSuggested,
        AnnotationReviewed,
        DeadLetter,
        AccessAudited,
    )
}


def event_models() -> dict[str, type[Event]]:
    """Every event model by the full Avro name of its schema."""
    return dict(_MODELS)


def event_model(avro_name: str) -> type[Event]:
    """The model class for a schema name; KeyError names the unknown schema."""
    try:
        return _MODELS[avro_name]
    except KeyError:
        raise KeyError(f"no event model for schema {avro_name!r}") from None
