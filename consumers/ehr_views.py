"""MongoDB views of EHR records: a timeline per subject and a summary per subject.

- ``ehr_timeline``: one document per source row (``_id`` = source + row id, DESIGN
  decision 4), with the subject's registry key and the time of the fact; read sorted by
  ``effective_at`` it is the subject's clinical timeline.
- ``ehr_subjects``: one document per EHR subject (``_id`` = its registry key) with
  demographics, admissions/encounters and diagnoses as maps keyed by row (so a replay
  overwrites rather than appends), ``diagnosis_codes`` for prefix queries and
  ``latest_labs``: per lab code the most recent value, replaced only by a later one
  (ties broken by row id), so the result does not depend on arrival order.

EHR subjects are registered in the subject registry; a rule with ``ehr_source`` and no
``redcap_field`` links a source's subject id to the DICOM PatientID of the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

from pymongo import UpdateOne

from cohortstream.events import EhrRecord, EhrRecordType
from cohortstream.mongo import safe_key
from cohortstream.subject_sets import FACET_INDEXES
from cohortstream.subjects import SubjectIdentifier
from consumers.mongo_sink import IndexSpec
from consumers.statistics import age_years, counters_for_ehr, current_ages, normalise_sex, refresh_counters
from consumers.subject_facets import refresh_subject_facets
from consumers.subject_registry import SubjectAwareSink, SubjectLinkConflict

__all__ = ["EhrViews", "latest_lab_updates", "subject_updates", "timeline_update"]

_LAB_TYPES = (EhrRecordType.LAB, EhrRecordType.OBSERVATION)
_ADMISSION_TYPES = (EhrRecordType.ADMISSION, EhrRecordType.ENCOUNTER)
_DIAGNOSIS_TYPES = (EhrRecordType.DIAGNOSIS, EhrRecordType.CONDITION)


def ehr_identifier(record: EhrRecord) -> SubjectIdentifier:
    return SubjectIdentifier.ehr(record.source, record.subject_id)


def _fact(record: EhrRecord) -> dict[str, Any]:
    return {
        "record_type": record.record_type.value,
        "effective_at": record.effective_at,
        "code_system": record.code_system,
        "code": record.code,
        "display": record.display,
        "value_number": record.value_number,
        "value_text": record.value_text,
        "unit": record.unit,
        "attributes": dict(record.attributes),
    }


def timeline_update(record: EhrRecord) -> UpdateOne:
    """The upsert of one row into the timeline."""
    return UpdateOne(
        {"_id": f"{record.source}|{record.source_row_id}"},
        {
            "$set": {
                "subject_key": ehr_identifier(record).key,
                "source": record.source,
                "subject_id": record.subject_id,
                "source_file": record.source_file,
                "source_row_id": record.source_row_id,
                # When the row entered the stream (a time the event carries, so replays agree):
                # the statistics count rows per day of ingestion with it.
                "ingested_at": record.emitted_at,
                **_fact(record),
            }
        },
        upsert=True,
    )


def subject_updates(records: Sequence[EhrRecord]) -> list[UpdateOne]:
    """Per EHR subject, one upsert with its demographics, admissions and diagnoses."""
    per_subject: dict[str, dict[str, Any]] = {}
    codes: dict[str, set[str]] = {}
    for record in records:
        key = ehr_identifier(record).key
        fields = per_subject.setdefault(key, {"source": record.source, "subject_id": record.subject_id})
        row = safe_key(record.source_row_id)
        if record.record_type == EhrRecordType.PATIENT:
            fields["demographics"] = dict(record.attributes)
            # Typed copies for the statistics and the API's filters (indexed).
            fields["sex_normalised"] = normalise_sex(record.attributes.get("gender"))
            fields["age_years"] = age_years(record.attributes.get("anchor_age"))
        elif record.record_type in _ADMISSION_TYPES:
            fields[f"admissions.{row}"] = _fact(record)
        elif record.record_type in _DIAGNOSIS_TYPES:
            fields[f"diagnoses.{row}"] = _fact(record)
            if record.code:
                codes.setdefault(key, set()).add(record.code)
    updates = []
    for key, fields in per_subject.items():
        update: dict[str, Any] = {"$set": fields}
        if key in codes:
            update["$addToSet"] = {"diagnosis_codes": {"$each": sorted(codes[key])}}
        updates.append(UpdateOne({"_id": key}, update, upsert=True))
    return updates


def _lab_order(record: EhrRecord) -> tuple[datetime, str]:
    assert record.effective_at is not None
    return record.effective_at, record.source_row_id


def latest_lab_updates(records: Sequence[EhrRecord]) -> list[UpdateOne]:
    """Conditional updates of ``latest_labs``: only a later measurement replaces one.

    The batch is first reduced to its latest row per subject and code; the filter then
    compares with what the document holds, so rows arriving out of order (another
    file, a replay) never overwrite a newer value. No upsert: :func:`subject_updates`
    of the same batch created the document.
    """
    latest: dict[tuple[str, str], EhrRecord] = {}
    for record in records:
        if record.record_type not in _LAB_TYPES or record.effective_at is None or not record.code:
            continue
        slot = (ehr_identifier(record).key, safe_key(record.code))
        if slot not in latest or _lab_order(record) > _lab_order(latest[slot]):
            latest[slot] = record
    updates = []
    for (key, code), record in sorted(latest.items()):
        path = f"latest_labs.{code}"
        at, row = _lab_order(record)
        updates.append(
            UpdateOne(
                {
                    "_id": key,
                    "$or": [
                        {path: {"$exists": False}},
                        {f"{path}.effective_at": {"$lt": at}},
                        {f"{path}.effective_at": at, f"{path}.source_row_id": {"$lte": row}},
                    ],
                },
                {
                    "$set": {
                        path: {
                            "code_system": record.code_system,
                            "code": record.code,
                            "display": record.display,
                            "value": record.value_number,
                            "value_text": record.value_text,
                            "unit": record.unit,
                            "effective_at": at,
                            "source_row_id": row,
                        }
                    }
                },
            )
        )
    return updates


class EhrViews(SubjectAwareSink):
    """View builder for ``ehr.record``."""

    INDEXES: ClassVar[IndexSpec] = {
        "ehr_timeline": [["subject_key", "effective_at"], ["record_type", "code"], "ingested_at"],
        "ehr_subjects": ["diagnosis_codes", "sex_normalised", "age_years"],
        **FACET_INDEXES,
    }

    async def apply(self, records: Sequence[EhrRecord]) -> list[str]:
        """Fold records into the views; returns the messages of refused rule links."""
        if not records:
            return []
        previous_ages = await current_ages(
            self, "ehr_subjects", {ehr_identifier(r).key for r in records if r.record_type == EhrRecordType.PATIENT}
        )
        await self.bulk_write("ehr_subjects", subject_updates(records), "update EHR subjects")
        await self.bulk_write("ehr_subjects", latest_lab_updates(records), "update latest labs")
        subjects = sorted({ehr_identifier(r) for r in records})
        await self.registry.register(subjects)
        refused: list[str] = []
        for rule in self._settings.subject_link_rules:
            if rule.redcap_field is not None or rule.target != "dicom_patient_id":
                continue
            for subject in subjects:
                if subject.scope != rule.ehr_source:
                    continue
                try:
                    await self.registry.link(
                        subject,
                        SubjectIdentifier.dicom(subject.value),
                        f"rule: {rule.ehr_source} subject id = DICOM PatientID",
                    )
                except SubjectLinkConflict as exc:
                    refused.append(str(exc))
        # The timeline last: once a row is in it, everything else of its batch is done.
        timeline = {f"{r.source}|{r.source_row_id}": timeline_update(r) for r in records}
        await self.bulk_write("ehr_timeline", list(timeline.values()), "update EHR timeline")
        await refresh_counters(self, counters_for_ehr(records, previous_ages))
        # Last: the subjects' read-model documents (the EHR subjects and what they were linked to).
        await refresh_subject_facets(self, [s.key for s in subjects], set(self.registry.merged_subjects))
        self.registry.take_merged_subjects()  # only once their documents are refreshed
        return refused
