"""Patient-centric MongoDB views of the received DICOM instances.

Four collections, maintained only with upserts so that replaying the topic from offset 0
yields the same documents:

- ``instances`` — one per SOP instance (``_id`` = SOPInstanceUID): UIDs, sha256, size,
  and, once the archive agent confirmed it, the Orthanc ids;
- ``series`` — one per series: attributes, first/last receipt, ``instance_count``;
- ``studies`` — one per study: series, modalities, counts, Orthanc id and viewer link;
- ``patients`` — one per DICOM PatientID: studies, modalities, first/last study date, counts.

Counts are recomputed from ``instances``/``series``/``studies`` for the entities a batch
touched (``count_documents`` on indexed fields) rather than incremented, because an
increment is not idempotent when a batch is re-applied after a crash. No document holds
a processing time, only times carried by the events, for the same reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase
from pymongo import UpdateOne
from pymongo.errors import AutoReconnect, ConnectionFailure, ServerSelectionTimeoutError

from cohortstream.events import DicomInstanceReceived
from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.orthanc_ids import OrthancIds, orthanc_ids
from cohortstream.settings import Settings
from consumers.backoff import retry_transient

__all__ = ["DicomViews", "TRANSIENT_MONGO_ERRORS"]

TRANSIENT_MONGO_ERRORS = (AutoReconnect, ConnectionFailure, ServerSelectionTimeoutError)

_INDEXES = {
    "instances": ["series_instance_uid", "study_instance_uid", "patient_id"],
    "series": ["study_instance_uid", "patient_id"],
    "studies": ["patient_id"],
}


def _study_date(event: DicomInstanceReceived) -> datetime | None:
    if event.study_date is None:
        return None
    return datetime(event.study_date.year, event.study_date.month, event.study_date.day, tzinfo=UTC)


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class DicomViews:
    """The MongoDB view builder for ``dicom.instance-received`` (and archive confirmations)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: AsyncIOMotorClient | None = None
        self._db: AsyncIOMotorDatabase | None = None

    async def setup(self) -> None:
        """Connect and create the indexes the count queries use."""
        self._client = mongo_client(self._settings)
        self._db = mongo_database(self._client, self._settings)
        for collection, fields in _INDEXES.items():
            for field in fields:
                await self._retry(lambda c=collection, f=field: self.db[c].create_index(f), f"index {collection}.{field}")

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def db(self) -> AsyncIOMotorDatabase:
        if self._db is None:
            raise RuntimeError("DicomViews.setup() was not awaited")
        return self._db

    async def _retry(self, operation: Any, what: str) -> Any:
        return await retry_transient(
            operation,
            what=what,
            transient=TRANSIENT_MONGO_ERRORS,
            pause_after=self._settings.sink_retry_attempts,
            max_delay_s=self._settings.sink_retry_max_delay_s,
        )

    def viewer_url(self, ids: OrthancIds) -> str:
        """Link to the study in Orthanc Explorer."""
        return f"{self._settings.orthanc_url}/app/explorer.html#study?uuid={ids.study}"

    def _updates(self, event: DicomInstanceReceived) -> dict[str, UpdateOne]:
        ids = orthanc_ids(event.patient_id, event.study_instance_uid, event.series_instance_uid, event.sop_instance_uid)
        received = event.received_at
        study_date = _study_date(event)
        return {
            "instances": UpdateOne(
                {"_id": event.sop_instance_uid},
                {
                    # $set, not $setOnInsert: the archive agent may have created the
                    # document first (in_orthanc); the values are the same on replay.
                    "$set": _drop_none({
                        "sop_class_uid": event.sop_class_uid,
                        "series_instance_uid": event.series_instance_uid,
                        "study_instance_uid": event.study_instance_uid,
                        "patient_id": event.patient_id,
                        "instance_number": event.instance_number,
                        "transfer_syntax_uid": event.transfer_syntax_uid,
                        "sha256": event.sha256,
                        "size_bytes": event.size_bytes,
                        "received_at": received,
                        "calling_aet": event.calling_aet,
                        "orthanc_id": ids.instance,
                    })
                },
                upsert=True,
            ),
            "series": UpdateOne(
                {"_id": event.series_instance_uid},
                {
                    "$setOnInsert": _drop_none({
                        "study_instance_uid": event.study_instance_uid,
                        "patient_id": event.patient_id,
                        "modality": event.modality,
                        "series_number": event.series_number,
                        "series_description": event.series_description,
                        "body_part_examined": event.body_part_examined,
                        "orthanc_id": ids.series,
                    }),
                    "$min": {"first_received_at": received},
                    "$max": {"last_received_at": received},
                },
                upsert=True,
            ),
            "studies": UpdateOne(
                {"_id": event.study_instance_uid},
                {
                    "$setOnInsert": _drop_none({
                        "patient_id": event.patient_id,
                        "study_date": study_date,
                        "study_description": event.study_description,
                        "orthanc_id": ids.study,
                        "viewer_url": self.viewer_url(ids),
                    }),
                    "$addToSet": {"series": event.series_instance_uid, "modalities": event.modality},
                    "$min": {"first_received_at": received},
                    "$max": {"last_received_at": received},
                },
                upsert=True,
            ),
            "patients": UpdateOne(
                {"_id": event.patient_id},
                {
                    "$setOnInsert": _drop_none({
                        "identifiers": {"dicom_patient_id": event.patient_id},
                        "sex": event.patient_sex,
                        "orthanc_id": ids.patient,
                    }),
                    "$addToSet": {"studies": event.study_instance_uid, "modalities": event.modality},
                    "$min": _drop_none({"first_study_date": study_date, "first_received_at": received}),
                    "$max": _drop_none({"last_study_date": study_date, "last_received_at": received}),
                },
                upsert=True,
            ),
        }

    async def apply(self, events: Sequence[DicomInstanceReceived]) -> None:
        """Fold a batch of received instances into the views (idempotent)."""
        if not events:
            return
        batches: dict[str, list[UpdateOne]] = {"instances": [], "series": [], "studies": [], "patients": []}
        for event in events:
            for collection, update in self._updates(event).items():
                batches[collection].append(update)
        # Parents after children: a reader never sees a study whose instances are missing.
        for collection in ("instances", "series", "studies", "patients"):
            await self._retry(
                lambda c=collection: self.db[c].bulk_write(batches[c], ordered=True), f"update {collection} view"
            )
        await self._refresh_counts(
            series={e.series_instance_uid for e in events},
            studies={e.study_instance_uid for e in events},
            patients={e.patient_id for e in events},
        )

    async def _count(self, collection: str, query: dict[str, Any]) -> int:
        return int(await self._retry(lambda: self.db[collection].count_documents(query), f"count {collection}"))

    async def _set(self, collection: str, key: str, values: dict[str, Any]) -> None:
        await self._retry(lambda: self.db[collection].update_one({"_id": key}, {"$set": values}), f"update {collection} counts")

    async def _refresh_counts(self, series: set[str], studies: set[str], patients: set[str]) -> None:
        for uid in sorted(series):
            await self._set("series", uid, {"instance_count": await self._count("instances", {"series_instance_uid": uid})})
        for uid in sorted(studies):
            await self._set("studies", uid, {
                "instance_count": await self._count("instances", {"study_instance_uid": uid}),
                "series_count": await self._count("series", {"study_instance_uid": uid}),
            })
        for pid in sorted(patients):
            await self._set("patients", pid, {
                "instance_count": await self._count("instances", {"patient_id": pid}),
                "series_count": await self._count("series", {"patient_id": pid}),
                "study_count": await self._count("studies", {"patient_id": pid}),
            })

    async def record_archived(self, event: DicomInstanceReceived) -> None:
        """Note that Orthanc confirmed the instance (called by the archive agent)."""
        await self._retry(
            lambda: self.db["instances"].update_one(
                {"_id": event.sop_instance_uid}, {"$set": {"in_orthanc": True}}, upsert=True
            ),
            "record Orthanc confirmation",
        )
