"""MongoDB views of REDCap questionnaires, and the subject links REDCap records carry.

One ``questionnaires`` document per REDCap project/record/event/instrument/repeat
instance (the natural key of DESIGN decision 4), holding the completion status and the
typed values of the latest pull; upserted with ``$set`` of the whole state, so replaying
the topic leaves the same documents. The configured link rules
(``Settings.subject_link_rules`` with a ``redcap_field``) turn a field such as ``mrn``
into a link between the REDCap record and a DICOM PatientID or an EHR subject.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, ClassVar

from pymongo import UpdateOne

from cohortstream.events import RedcapRecordChanged
from cohortstream.mongo import find_all
from cohortstream.settings import SubjectLinkRule
from cohortstream.subject_sets import FACET_INDEXES
from cohortstream.subjects import SubjectIdentifier
from consumers.mongo_sink import IndexSpec
from consumers.statistics import counters_for_redcap, refresh_counters
from consumers.subject_facets import refresh_subject_facets
from consumers.subject_registry import SubjectAwareSink, SubjectLinkConflict

__all__ = ["RedcapViews", "questionnaire_key", "questionnaire_update", "rule_links"]

log = logging.getLogger(__name__)


def redcap_identifier(event: RedcapRecordChanged) -> SubjectIdentifier:
    """The registry identifier of the event's record."""
    return SubjectIdentifier.redcap(event.redcap_url, event.project_id, event.record_id)


def questionnaire_key(event: RedcapRecordChanged) -> str:
    """``_id`` of the questionnaire document: server, project, record, event, instrument, instance."""
    return "|".join(
        [
            event.redcap_url.rstrip("/") + "/",
            event.project_id,
            event.record_id,
            event.event_name or "",
            event.instrument,
            str(event.repeat_instance or 1),
        ]
    )


def questionnaire_update(event: RedcapRecordChanged) -> UpdateOne:
    """The upsert that records the state of one instrument instance."""
    return UpdateOne(
        {"_id": questionnaire_key(event)},
        {
            "$set": {
                "redcap_url": event.redcap_url.rstrip("/") + "/",
                "project_id": event.project_id,
                "record_id": event.record_id,
                "subject_key": redcap_identifier(event).key,
                "event_name": event.event_name,
                "instrument": event.instrument,
                "repeat_instrument": event.repeat_instrument,
                "repeat_instance": event.repeat_instance or 1,
                "data_access_group": event.data_access_group,
                "completion_status": event.completion_status.value,
                "values": dict(event.values),
                "labels": dict(event.labels),
                "pulled_at": event.emitted_at,
                "trigger": event.trigger.value,
            }
        },
        upsert=True,
    )


def rule_links(
    event: RedcapRecordChanged, rules: Sequence[SubjectLinkRule]
) -> list[tuple[SubjectIdentifier, SubjectIdentifier, str]]:
    """The links the configured rules derive from this event's values."""
    links = []
    for rule in rules:
        if rule.redcap_field is None or rule.redcap_field not in event.values:
            continue
        value = event.values[rule.redcap_field]
        if value is None or isinstance(value, bool | list) or str(value).strip() == "":
            continue
        text = str(value).strip()
        if rule.target == "dicom_patient_id":
            other = SubjectIdentifier.dicom(text)
        else:
            assert rule.ehr_source is not None  # the settings model guarantees it
            other = SubjectIdentifier.ehr(rule.ehr_source, text)
        links.append((redcap_identifier(event), other, f"rule: REDCap field {rule.redcap_field} = {rule.target}"))
    return links


class RedcapViews(SubjectAwareSink):
    """View builder for ``redcap.record-changed``."""

    INDEXES: ClassVar[IndexSpec] = {
        "questionnaires": [
            "subject_key",
            ["instrument", "completion_status"],
            "record_id",
            # For the statistics counters (consumers/statistics.py).
            ["instrument", "event_name", "completion_status"],
            "pulled_at",
        ],
        **FACET_INDEXES,
    }

    async def apply(self, events: Sequence[RedcapRecordChanged]) -> list[str]:
        """Fold events into the views; returns the refused links' messages (not errors:
        the questionnaire is stored either way and the conflict is kept for people)."""
        if not events:
            return []
        # Same document twice in a batch: the later state wins, as it would one by one.
        await self.registry.register([redcap_identifier(e) for e in events])
        refused: list[str] = []
        for event in events:
            for first, second, reason in rule_links(event, self._settings.subject_link_rules):
                try:
                    await self.registry.link(first, second, reason)
                except SubjectLinkConflict as exc:
                    refused.append(str(exc))
        # Questionnaires last: once one is visible, its record's links are in place.
        # Same document twice in a batch: the later state wins, as it would one by one.
        latest: dict[str, UpdateOne] = {questionnaire_key(e): questionnaire_update(e) for e in events}
        previous_days = await self._pull_days(list(latest))
        await self.bulk_write("questionnaires", list(latest.values()), "update questionnaires view")
        await refresh_counters(self, counters_for_redcap(events, previous_days))
        # Last: the subjects' read-model documents (records and the identifiers linked to them).
        keys = {redcap_identifier(e).key for e in events}
        keys |= {i.key for e in events for link in rule_links(e, self._settings.subject_link_rules) for i in link[:2]}
        await refresh_subject_facets(self, keys, set(self.registry.merged_subjects))
        self.registry.take_merged_subjects()  # only once their documents are refreshed
        return refused

    async def _pull_days(self, keys: list[str]) -> set[date]:
        """The days of the latest pulls these documents show now: a newer pull moves a
        document to another day, and the day it leaves must be recounted too."""
        days: set[date] = set()
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            docs = await self.retry(
                partial(find_all, self.db["questionnaires"], {"_id": {"$in": chunk}}, {"pulled_at": 1}),
                "read questionnaire pull times",
            )
            days.update(d["pulled_at"].astimezone(UTC).date() for d in docs if isinstance(d.get("pulled_at"), datetime))
        return days

    async def questionnaires_of(self, identifiers: Sequence[SubjectIdentifier]) -> list[dict[str, Any]]:
        """The questionnaire documents of these REDCap identifiers, in a stable order."""
        keys = [i.key for i in identifiers if i.kind == "redcap"]
        if not keys:
            return []
        return list(
            await self.retry(
                lambda: self.db["questionnaires"].find({"subject_key": {"$in": keys}}).sort("_id").to_list(None),
                "read questionnaires",
            )
        )
