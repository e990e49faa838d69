"""What the export reads from the views (MongoDB) and from REDCap: subjects, their
identifiers and demographics, studies, series and reviewed annotations.

Every query of the export is here, so that the rest of the export works on plain
documents and a test can hand it a selection without a database.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cohortstream.cohort_query import CohortQuery, run_cohort_query
from cohortstream.mongo import AsyncDatabase, open_database
from cohortstream.settings import Settings
from cohortstream.subject_view import resolve_subject_id, subject_identifiers
from export.bids.participants import Demographics
from export.bids.phenotype import Dictionary

__all__ = ["EXPORTED_ANNOTATIONS", "SelectedSubject", "ViewSelection", "redcap_dictionary"]

EXPORTED_ANNOTATIONS = ("accepted", "corrected")
"""Review states whose segmentation goes into the derivatives."""


@dataclass
class SelectedSubject:
    """One subject of the export: its identifiers per source and what the sources say."""

    subject_id: str
    patient_ids: list[str]
    redcap_keys: list[str]
    ehr_keys: list[str]
    demographics: Demographics = field(default_factory=Demographics)


class ViewSelection:
    """The export's reads of the views, on a client opened by :meth:`open`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stack: contextlib.AsyncExitStack | None = None
        self._db: AsyncDatabase | None = None

    async def open(self) -> None:
        stack = contextlib.AsyncExitStack()
        self._db = await stack.enter_async_context(open_database(self.settings))
        self._stack = stack

    async def close(self) -> None:
        stack, self._stack, self._db = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @property
    def db(self) -> AsyncDatabase:
        if self._db is None:
            raise RuntimeError("ViewSelection.open() was not awaited")
        return self._db

    async def subject_ids(self, query: CohortQuery | None, subjects: Sequence[str] | None) -> list[str]:
        """The registry subject ids: of ``subjects`` (ids or identifiers), else of ``query``, else everyone."""
        if subjects:
            return sorted({await resolve_subject_id(self.db, text) for text in subjects})
        return (await run_cohort_query(self.db, query or CohortQuery())).subject_ids

    async def subject(self, subject_id: str) -> SelectedSubject:
        """A subject's identifiers and its documents in the patient, EHR and questionnaire views."""
        identifiers = await subject_identifiers(self.db, subject_id)
        subject = SelectedSubject(
            subject_id=subject_id,
            patient_ids=[i.value for i in identifiers if i.kind == "dicom"],
            redcap_keys=[i.key for i in identifiers if i.kind == "redcap"],
            ehr_keys=[i.key for i in identifiers if i.kind == "ehr"],
        )
        db = self.db
        if subject.patient_ids:
            subject.demographics.dicom_patients = (
                await db["patients"].find({"_id": {"$in": subject.patient_ids}}).to_list()
            )
        if subject.ehr_keys:
            subject.demographics.ehr_subjects = (
                await db["ehr_subjects"].find({"_id": {"$in": subject.ehr_keys}}).sort("_id").to_list()
            )
        if subject.redcap_keys:
            subject.demographics.questionnaires = (
                await db["questionnaires"].find({"subject_key": {"$in": subject.redcap_keys}}).sort("_id").to_list()
            )
        return subject

    async def studies(self, patient_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The studies of these DICOM patients, by study date then UID."""
        if not patient_ids:
            return []
        studies = await self.db["studies"].find({"patient_id": {"$in": list(patient_ids)}}).to_list()
        studies.sort(key=lambda d: (str(d.get("study_date") or ""), d["_id"]))
        return studies

    async def series(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """The series of a study, by series number then UID."""
        docs = await self.db["series"].find({"study_instance_uid": study_instance_uid}).to_list()
        docs.sort(key=lambda d: (int(d.get("series_number") or 0), d["_id"]))
        return docs

    async def reviewed_annotations(self, series_instance_uid: str) -> list[dict[str, Any]]:
        """The annotations of a series that a reviewer accepted or corrected."""
        return (
            await self.db["annotations"]
            .find({"series_instance_uid": series_instance_uid, "status": {"$in": list(EXPORTED_ANNOTATIONS)}})
            .sort("_id")
            .to_list()
        )


async def redcap_dictionary(settings: Settings, questionnaires: list[dict[str, Any]]) -> tuple[Dictionary, list[str]]:
    """The data dictionaries of the configured REDCap projects the questionnaires come from,
    and a warning for each project whose dictionary could not be read."""
    from producers.redcap.api import RedcapApiClient

    wanted = {(str(q.get("redcap_url")), str(q.get("project_id"))) for q in questionnaires}
    rows: list[dict[str, str]] = []
    warnings: list[str] = []
    for project in settings.redcap_projects:
        if (project.redcap_url, project.project_id) not in wanted:
            continue
        try:
            async with RedcapApiClient(settings, project) as client:
                rows += await client.export_metadata()
        except Exception as exc:
            warnings.append(f"REDCap project {project.project_id}: data dictionary not read ({type(exc).__name__})")
    return Dictionary.from_metadata(rows), warnings
