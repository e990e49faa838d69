"""Response models of ``/subjects`` and ``/cohorts``, and their construction from the views.

The views are schemaless documents written by the sinks; these models are the API's
contract (OpenAPI shows them) and pick the fields a client may rely on. Orthanc links
are built from ``orthanc_url`` and the Orthanc ids the views already hold, so no call to
Orthanc is needed to answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from api.viewer_links import ohif_study_url

__all__ = [
    "AnnotationBrief",
    "CohortAnswer",
    "EhrSummary",
    "ImagingPatient",
    "ImagingSeries",
    "ImagingStudy",
    "LabValue",
    "Questionnaire",
    "SubjectDetail",
    "SubjectPage",
    "SubjectSummary",
    "TimelineEntry",
    "TimelinePage",
    "subject_detail",
    "timeline_entry",
]


class SubjectSummary(BaseModel):
    """One subject in a list or an export."""

    subject_id: str = Field(description="Registry subject id (S + 15 hex digits).")
    identifiers: list[str] = Field(description="Source identifiers: dicom:..., redcap:..., ehr:...")
    sources: list[str]
    modalities: list[str] = Field(description="DICOM modalities of the subject's imaging.")
    sex: str | None = Field(None, description="M/F/O from DICOM PatientSex, else the EHR's gender.")
    age_years: int | None = Field(None, description="DICOM PatientAge at the latest study, else EHR anchor_age.")
    study_count: int = 0
    series_count: int = 0
    questionnaire_count: int = 0
    has_ehr: bool = False


class SubjectPage(BaseModel):
    """One page of subjects; ``next_cursor`` is null on the last page."""

    items: list[SubjectSummary]
    next_cursor: str | None
    limit: int


class AnnotationBrief(BaseModel):
    """An AI suggestion on a series; details at ``/annotations/{annotation_id}``."""

    annotation_id: str
    model_name: str | None = None
    model_version: str | None = None
    status: str | None = None
    uncertainty: float | None = None
    #: e.g. ``["implausible"]`` (a segment volume outside the model's plausible range).
    flags: list[str] = Field(default_factory=list)
    seg_sop_instance_uid: str | None = None
    suggested_at: datetime | None = None
    reviewed_at: datetime | None = None
    viewer_url: str | None = Field(None, description="The study in the OHIF viewer (a path on this API).")


class ImagingSeries(BaseModel):
    series_instance_uid: str
    modality: str | None = None
    body_part_examined: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    instance_count: int | None = None
    first_received_at: datetime | None = None
    last_received_at: datetime | None = None
    orthanc_id: str | None = None
    orthanc_url: str | None = Field(None, description="The series in Orthanc's REST API.")
    viewer_url: str | None = Field(None, description="Its study in the OHIF viewer (a path on this API).")
    annotations: list[AnnotationBrief] = Field(default_factory=list)


class ImagingStudy(BaseModel):
    study_instance_uid: str
    study_date: datetime | None = None
    study_description: str | None = None
    modalities: list[str] = Field(default_factory=list)
    series_count: int | None = None
    instance_count: int | None = None
    orthanc_id: str | None = None
    orthanc_url: str | None = Field(None, description="The study in Orthanc's REST API.")
    viewer_url: str | None = Field(
        None, description="The study in the OHIF viewer with the MONAI Label panel (a path on this API)."
    )
    explorer_url: str | None = Field(None, description="The study in Orthanc Explorer.")
    series: list[ImagingSeries] = Field(default_factory=list)


class ImagingPatient(BaseModel):
    patient_id: str = Field(description="DICOM PatientID.")
    sex: str | None = None
    age_years: int | None = None
    modalities: list[str] = Field(default_factory=list)
    study_count: int | None = None
    series_count: int | None = None
    instance_count: int | None = None
    first_study_date: datetime | None = None
    last_study_date: datetime | None = None
    orthanc_id: str | None = None
    orthanc_url: str | None = None
    studies: list[ImagingStudy] = Field(default_factory=list)


class Questionnaire(BaseModel):
    questionnaire_id: str
    project_id: str | None = None
    record_id: str | None = None
    event_name: str | None = None
    instrument: str
    repeat_instance: int | None = None
    completion_status: str | None = None
    values: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    pulled_at: datetime | None = None


class LabValue(BaseModel):
    code: str | None = None
    code_system: str | None = None
    display: str | None = None
    value: float | None = None
    value_text: str | None = None
    unit: str | None = None
    effective_at: datetime | None = None


class EhrSummary(BaseModel):
    ehr_key: str = Field(description="The EHR identifier (ehr:<source>|<subject_id>).")
    source: str | None = None
    subject_id: str | None = None
    demographics: dict[str, Any] = Field(default_factory=dict)
    sex: str | None = None
    age_years: int | None = None
    diagnosis_codes: list[str] = Field(default_factory=list)
    admission_count: int = 0
    diagnosis_count: int = 0
    latest_labs: dict[str, LabValue] = Field(default_factory=dict, description="Per lab code, the latest value.")


class SubjectDetail(BaseModel):
    """Everything the views hold about one subject, by modality."""

    subject_id: str
    identifiers: list[str]
    imaging: list[ImagingPatient]
    questionnaires: list[Questionnaire]
    ehr: list[EhrSummary]


class TimelineEntry(BaseModel):
    entry_id: str = Field(description="Source and row id.")
    source: str | None = None
    record_type: str | None = None
    effective_at: datetime | None = None
    code_system: str | None = None
    code: str | None = None
    display: str | None = None
    value_number: float | None = None
    value_text: str | None = None
    unit: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class TimelinePage(BaseModel):
    """EHR facts in time order; pass ``next_after`` as ``after`` for the next page."""

    subject_id: str
    items: list[TimelineEntry]
    limit: int
    next_after: datetime | None = Field(None, description="null when no dated entry follows.")


class CohortAnswer(BaseModel):
    """The subjects meeting every criterion, and how many meet each criterion alone."""

    count: int
    subject_ids: list[str]
    per_criterion: dict[str, int]


def _pick(model: type[BaseModel], doc: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {**{k: doc[k] for k in model.model_fields if k in doc}, **more}


def _series(doc: dict[str, Any], orthanc_url: str, annotations: dict[str, list[dict[str, Any]]]) -> ImagingSeries:
    oid = doc.get("orthanc_id")
    study_uid = doc.get("study_instance_uid")
    viewer = ohif_study_url(str(study_uid)) if study_uid else None
    return ImagingSeries(
        **_pick(
            ImagingSeries,
            doc,
            series_instance_uid=str(doc["_id"]),
            orthanc_url=f"{orthanc_url}/series/{oid}" if oid else None,
            viewer_url=viewer,
            annotations=[
                AnnotationBrief(**_pick(AnnotationBrief, a, annotation_id=str(a["_id"]), viewer_url=viewer))
                for a in annotations.get(str(doc["_id"]), [])
            ],
        )
    )


def _study(doc: dict[str, Any], orthanc_url: str, annotations: dict[str, list[dict[str, Any]]]) -> ImagingStudy:
    oid = doc.get("orthanc_id")
    return ImagingStudy(
        **_pick(
            ImagingStudy,
            {k: v for k, v in doc.items() if k != "series"},
            study_instance_uid=str(doc["_id"]),
            orthanc_url=f"{orthanc_url}/studies/{oid}" if oid else None,
            viewer_url=ohif_study_url(str(doc["_id"])),
            explorer_url=doc.get("viewer_url"),  # the view stores Orthanc Explorer's link
            series=[_series(s, orthanc_url, annotations) for s in doc.get("series_detail", [])],
        )
    )


def _patient(doc: dict[str, Any], orthanc_url: str, annotations: dict[str, list[dict[str, Any]]]) -> ImagingPatient:
    oid = doc.get("orthanc_id")
    return ImagingPatient(
        **_pick(
            ImagingPatient,
            {k: v for k, v in doc.items() if k not in ("studies", "sex")},
            patient_id=str(doc["_id"]),
            sex=doc.get("sex_normalised") or doc.get("sex"),
            orthanc_url=f"{orthanc_url}/patients/{oid}" if oid else None,
            studies=[_study(s, orthanc_url, annotations) for s in doc.get("study_detail", [])],
        )
    )


def _ehr(doc: dict[str, Any]) -> EhrSummary:
    return EhrSummary(
        ehr_key=str(doc["_id"]),
        source=doc.get("source"),
        subject_id=doc.get("subject_id"),
        demographics=doc.get("demographics") or {},
        sex=doc.get("sex_normalised"),
        age_years=doc.get("age_years"),
        diagnosis_codes=sorted(doc.get("diagnosis_codes") or []),
        admission_count=len(doc.get("admissions") or {}),
        diagnosis_count=len(doc.get("diagnoses") or {}),
        latest_labs={k: LabValue(**_pick(LabValue, v)) for k, v in (doc.get("latest_labs") or {}).items()},
    )


def subject_detail(
    view: dict[str, Any], orthanc_url: str, annotations: dict[str, list[dict[str, Any]]]
) -> SubjectDetail:
    """The model of :func:`cohortstream.subject_view.subject_view`'s answer, with the
    annotations of each series (``annotations``: series uid → suggestion documents)."""
    base = orthanc_url.rstrip("/")
    return SubjectDetail(
        subject_id=view["subject_id"],
        identifiers=view["identifiers"],
        imaging=[_patient(p, base, annotations) for p in view["imaging"]],
        questionnaires=[
            Questionnaire(**_pick(Questionnaire, q, questionnaire_id=str(q["_id"]))) for q in view["questionnaires"]
        ],
        ehr=[_ehr(e) for e in view["ehr"]],
    )


def timeline_entry(doc: dict[str, Any]) -> TimelineEntry:
    """A timeline document as the API shows it."""
    return TimelineEntry(**_pick(TimelineEntry, doc, entry_id=str(doc["_id"])))
