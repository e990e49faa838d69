"""Patient-centric MongoDB views of the received DICOM instances.

Four collections, maintained only with upserts so that replaying the topic from offset 0
yields the same documents:

- ``instances`` — one per SOP instance (``_id`` = SOPInstanceUID): UIDs, sha256, size,
  and, once the archive agent confirmed it, the Orthanc ids;
- ``series`` — one per series: attributes, first/last receipt, ``instance_count``;
- ``studies`` — one per study: series, modalities, counts, Orthanc id and viewer link;
- ``patients`` — one per DICOM PatientID: studies, modalities, first/last study date, counts.

Counts are recomputed from ``instances``/``series``/``studies`` for the entities a batch
touched (grouped counts on indexed fields) rather than incremented, because an
increment is not idempotent when a batch is re-applied after a crash. No document holds
a processing time, only times carried by the events, for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, ClassVar

from pymongo import UpdateOne

from cohortstream.events import DicomInstanceReceived
from cohortstream.mongo import aggregate_all
from cohortstream.orthanc_ids import OrthancIds, orthanc_ids
from cohortstream.subject_sets import FACET_INDEXES
from cohortstream.subjects import SubjectIdentifier
from consumers.mongo_sink import IndexSpec, chunks, together
from consumers.statistics import age_years, counters_for_dicom, current_ages, normalise_sex, refresh_counters
from consumers.subject_facets import refresh_subject_facets
from consumers.subject_registry import SubjectAwareSink

__all__ = ["DicomViews", "instance_attributes", "view_updates"]


_INDEXES = {
    "instances": ["series_instance_uid", "study_instance_uid", "patient_id"],
    "series": ["study_instance_uid", "patient_id"],
    "studies": ["patient_id"],
    # For the statistics counters and the API's subject filters (api/subject_store.py).
    "patients": ["modalities", "sex_normalised", "age_years"],
}
_IN_CHUNK = 1000
"""Most values in one ``$in`` of a grouped count."""

_STATISTICS_INDEXES = {
    "instances": ["received_at"],
    "series": ["modality", "body_part_examined"],
}


def _study_date(event: DicomInstanceReceived) -> datetime | None:
    if event.study_date is None:
        return None
    return datetime(event.study_date.year, event.study_date.month, event.study_date.day, tzinfo=UTC)


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _group(
    events: Sequence[DicomInstanceReceived], key: Callable[[DicomInstanceReceived], str]
) -> dict[str, list[DicomInstanceReceived]]:
    groups: dict[str, list[DicomInstanceReceived]] = {}
    for event in events:
        groups.setdefault(key(event), []).append(event)
    return groups


def _received_bounds(events: list[DicomInstanceReceived]) -> tuple[datetime, datetime]:
    received = [e.received_at for e in events]
    return min(received), max(received)


def _study_date_bounds(events: list[DicomInstanceReceived]) -> tuple[datetime | None, datetime | None]:
    dates = [d for d in (_study_date(e) for e in events) if d is not None]
    return (min(dates), max(dates)) if dates else (None, None)


def instance_attributes(event: DicomInstanceReceived) -> dict[str, Any]:
    """What the ``instances`` view records of the first copy of an instance received.

    The first copy wins, as in Orthanc (which keeps the first copy of a SOP instance and
    does not overwrite it): a later copy with other bytes (another transfer syntax, a
    re-send after a correction that should have had a new UID) only adds its hash to
    ``received_sha256``, so the view and the archive never disagree about the bytes.
    Both agents write these with ``$setOnInsert`` because either may create the document;
    ``received_sha256`` is written by the views agent only, so its presence says the
    views agent has folded the instance in.
    """
    ids = orthanc_ids(event.patient_id, event.study_instance_uid, event.series_instance_uid, event.sop_instance_uid)
    return _drop_none(
        {
            "sop_class_uid": event.sop_class_uid,
            "series_instance_uid": event.series_instance_uid,
            "study_instance_uid": event.study_instance_uid,
            "patient_id": event.patient_id,
            "instance_number": event.instance_number,
            "transfer_syntax_uid": event.transfer_syntax_uid,
            "sha256": event.sha256,
            "size_bytes": event.size_bytes,
            "received_at": event.received_at,
            "calling_aet": event.calling_aet,
            "orthanc_id": ids.instance,
            "orthanc_origin": event.orthanc_origin,
        }
    )


def view_updates(
    events: Sequence[DicomInstanceReceived], viewer_url: Callable[[OrthancIds], str]
) -> dict[str, list[UpdateOne]]:
    """The upserts that fold ``events`` into the four views: one per distinct document.

    A batch usually holds many instances of few series, so the series/study/patient
    updates are merged per ``_id`` ($min/$max over the batch, $addToSet with $each)
    instead of sent once per instance: fewer statements, same result, and the result
    does not depend on how the stream was cut into batches.
    """
    updates: dict[str, list[UpdateOne]] = {"instances": [], "series": [], "studies": [], "patients": []}
    for sop_uid, same_instance in _group(events, lambda e: e.sop_instance_uid).items():
        # An event from Orthanc's change feed says Orthanc holds the instance: the views
        # note it here, in the batch, rather than in one write per instance from the
        # archive agent (:meth:`DicomViews.record_archived`).
        archived = {"$set": {"in_orthanc": True}} if any(not e.staged for e in same_instance) else {}
        updates["instances"].append(
            UpdateOne(
                {"_id": sop_uid},
                {
                    **archived,
                    "$setOnInsert": instance_attributes(same_instance[0]),
                    # An event from Orthanc's change feed has no hash of its own (nothing was
                    # staged): it adds the marker "orthanc" instead, so the field still says
                    # the views agent folded the instance in.
                    "$addToSet": {
                        "received_sha256": {"$each": list(dict.fromkeys(e.sha256 or "orthanc" for e in same_instance))}
                    },
                },
                upsert=True,
            )
        )
    for series_uid, in_series in _group(events, lambda e: e.series_instance_uid).items():
        first = min(in_series, key=lambda e: e.received_at)
        ids = orthanc_ids(first.patient_id, first.study_instance_uid, series_uid, first.sop_instance_uid)
        earliest, latest = _received_bounds(in_series)
        updates["series"].append(
            UpdateOne(
                {"_id": series_uid},
                {
                    "$setOnInsert": _drop_none(
                        {
                            "study_instance_uid": first.study_instance_uid,
                            "patient_id": first.patient_id,
                            "modality": first.modality,
                            "series_number": first.series_number,
                            "series_description": first.series_description,
                            "body_part_examined": first.body_part_examined,
                            "orthanc_id": ids.series,
                        }
                    ),
                    "$min": {"first_received_at": earliest},
                    "$max": {"last_received_at": latest},
                },
                upsert=True,
            )
        )
    for study_uid, in_study in _group(events, lambda e: e.study_instance_uid).items():
        first = min(in_study, key=lambda e: e.received_at)
        ids = orthanc_ids(first.patient_id, study_uid, first.series_instance_uid, first.sop_instance_uid)
        earliest, latest = _received_bounds(in_study)
        updates["studies"].append(
            UpdateOne(
                {"_id": study_uid},
                {
                    "$setOnInsert": _drop_none(
                        {
                            "patient_id": first.patient_id,
                            "study_date": _study_date(first),
                            "study_description": first.study_description,
                            "orthanc_id": ids.study,
                            "viewer_url": viewer_url(ids),
                        }
                    ),
                    "$addToSet": {
                        "series": {"$each": sorted({e.series_instance_uid for e in in_study})},
                        "modalities": {"$each": sorted({e.modality for e in in_study})},
                    },
                    "$min": {"first_received_at": earliest},
                    "$max": {"last_received_at": latest},
                },
                upsert=True,
            )
        )
    for patient_id, of_patient in _group(events, lambda e: e.patient_id).items():
        first = min(of_patient, key=lambda e: e.received_at)
        ids = orthanc_ids(patient_id, first.study_instance_uid, first.series_instance_uid, first.sop_instance_uid)
        earliest, latest = _received_bounds(of_patient)
        first_study, last_study = _study_date_bounds(of_patient)
        ages = [a for a in (age_years(e.patient_age) for e in of_patient) if a is not None]
        updates["patients"].append(
            UpdateOne(
                {"_id": patient_id},
                {
                    "$setOnInsert": _drop_none(
                        {
                            "identifiers": {"dicom_patient_id": patient_id},
                            "sex": first.patient_sex,
                            "sex_normalised": normalise_sex(first.patient_sex),
                            "orthanc_id": ids.patient,
                        }
                    ),
                    "$addToSet": {
                        "studies": {"$each": sorted({e.study_instance_uid for e in of_patient})},
                        "modalities": {"$each": sorted({e.modality for e in of_patient})},
                    },
                    "$min": _drop_none({"first_study_date": first_study, "first_received_at": earliest}),
                    # Age at the latest study seen (PatientAge grows with the studies).
                    "$max": _drop_none(
                        {
                            "last_study_date": last_study,
                            "last_received_at": latest,
                            "age_years": max(ages, default=None),
                        }
                    ),
                },
                upsert=True,
            )
        )
    return updates


class DicomViews(SubjectAwareSink):
    """The MongoDB view builder for ``dicom.instance-received`` (and archive confirmations)."""

    INDEXES: ClassVar[IndexSpec] = {
        **{
            name: [*_INDEXES.get(name, []), *_STATISTICS_INDEXES.get(name, [])]
            for name in {**_INDEXES, **_STATISTICS_INDEXES}
        },
        **FACET_INDEXES,
    }

    def viewer_url(self, ids: OrthancIds) -> str:
        """Link to the study in Orthanc Explorer."""
        return f"{self._settings.orthanc_url}/app/explorer.html#study?uuid={ids.study}"

    async def apply(self, events: Sequence[DicomInstanceReceived]) -> None:
        """Fold a batch of received instances into the views (idempotent).

        Round trips, not Python, are what a batch costs (measured: ~40 ms for 200 events
        on an idle store, 0.2–0.8 s while Orthanc, Kafka and the other lanes share the
        cores): independent ones go out together (:func:`together`), and the counts of
        every touched series, study and patient come from six grouped counts instead of
        up to four ``count_documents`` per entity, one after another.
        """
        if not events:
            return
        updates = view_updates(events, self.viewer_url)

        async def children() -> None:
            # Parents after children: a reader never sees a study whose instances are missing.
            for collection in ("instances", "series", "studies"):
                await self.bulk_write(collection, updates[collection], f"update {collection} view")

        # The patients' ages before this batch (for the age-band counters): only the
        # patients write below changes them, so they are read while the children are written.
        previous_ages, _ = await together(
            current_ages(self, "patients", {e.patient_id for e in events if e.patient_age}), children()
        )
        await self.bulk_write("patients", updates["patients"], "update patients view")
        # Every PatientID is a subject of its own until a link joins it to others.
        identifiers = [SubjectIdentifier.dicom(pid) for pid in sorted({e.patient_id for e in events})]
        await together(
            self._refresh_counts(
                series={e.series_instance_uid for e in events},
                studies={e.study_instance_uid for e in events},
                patients={e.patient_id for e in events},
            ),
            refresh_counters(self, counters_for_dicom(events, previous_ages)),
            self.registry.register(identifiers),
        )
        # Last: the subjects' read-model documents, from everything written above.
        await refresh_subject_facets(self, [i.key for i in identifiers], set(self.registry.merged_subjects))
        self.registry.take_merged_subjects()  # only once their documents are refreshed

    async def _counts(self, collection: str, field: str, values: set[str]) -> dict[str, int]:
        """``value → number of documents of collection whose field is value``, for each of ``values``
        (0 when none): one grouped count on the indexed field per chunk of values."""
        counts = dict.fromkeys(values, 0)
        for chunk in chunks(sorted(values), _IN_CHUNK):
            pipeline: list[dict[str, Any]] = [
                {"$match": {field: {"$in": chunk}}},
                {"$group": {"_id": f"${field}", "n": {"$sum": 1}}},
            ]
            docs = await self.retry(partial(aggregate_all, self.db[collection], pipeline), f"count {collection}")
            counts.update({str(doc["_id"]): int(doc["n"]) for doc in docs if str(doc["_id"]) in counts})
        return counts

    async def _set_counts(self, collection: str, counts: dict[str, dict[str, int]]) -> None:
        operations = [UpdateOne({"_id": key}, {"$set": values}) for key, values in sorted(counts.items())]
        await self.bulk_write(collection, operations, f"update {collection} counts")

    async def _refresh_counts(self, series: set[str], studies: set[str], patients: set[str]) -> None:
        """Recount (not increment: a batch applied again must give the same numbers) what
        the touched series, studies and patients hold, from the views themselves."""
        (
            series_instances,
            study_instances,
            study_series,
            patient_instances,
            patient_series,
            patient_studies,
        ) = await together(
            self._counts("instances", "series_instance_uid", series),
            self._counts("instances", "study_instance_uid", studies),
            self._counts("series", "study_instance_uid", studies),
            self._counts("instances", "patient_id", patients),
            self._counts("series", "patient_id", patients),
            self._counts("studies", "patient_id", patients),
        )
        await together(
            self._set_counts("series", {uid: {"instance_count": series_instances[uid]} for uid in series}),
            self._set_counts(
                "studies",
                {uid: {"instance_count": study_instances[uid], "series_count": study_series[uid]} for uid in studies},
            ),
            self._set_counts(
                "patients",
                {
                    pid: {
                        "instance_count": patient_instances[pid],
                        "series_count": patient_series[pid],
                        "study_count": patient_studies[pid],
                    }
                    for pid in patients
                },
            ),
        )

    async def record_archived(self, event: DicomInstanceReceived) -> None:
        """Note that Orthanc confirmed the instance (called by the archive agent)."""
        await self.record_archived_many([event])

    async def record_archived_many(self, events: Sequence[DicomInstanceReceived]) -> None:
        """Note that Orthanc confirmed these instances, in one write (the archive agent's
        actors hand theirs over together: :class:`streams.group_commit.GroupCommit`).

        Events from Orthanc's change feed need nothing: the views agent sets
        ``in_orthanc`` in its batch (:func:`view_updates`), which saves one write per
        instance when Orthanc receives at full speed."""
        operations = [
            UpdateOne(
                {"_id": event.sop_instance_uid},
                {"$set": {"in_orthanc": True}, "$setOnInsert": instance_attributes(event)},
                upsert=True,
            )
            for event in events
            if event.staged
        ]
        if operations:
            await self.bulk_write("instances", operations, "record Orthanc confirmation")
