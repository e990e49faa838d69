"""``cohortstream features rebuild``: recompute every feature document by replaying the log.

The rebuild reads the five topics the features lane consumes from their first offset
up to their end when it starts, folds every event into input documents in memory with
the very functions the live sink uses (:mod:`.fold`), groups identifiers into subjects
with the registry, computes each subject's document with the current spec, and replaces
the ``features`` collection's documents (documents of subjects that no longer exist are
removed). Nothing depends on the order or timing of the replay, so rebuilding twice
gives identical documents, and the same documents as the live stream.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pymongo import DeleteMany, ReplaceOne

from cohortstream.codec import EventCodec
from cohortstream.errors import EventDecodeError
from cohortstream.events import Event
from cohortstream.features.compute import feature_document
from cohortstream.features.inputs import series_ids_of, subject_inputs
from cohortstream.features.spec import FeatureSpec, load_spec
from cohortstream.features.store import lab_code_counts, most_frequent_codes, save_active_spec
from cohortstream.mongo import find_all
from cohortstream.settings import Settings
from cohortstream.subjects import subject_id_for
from consumers.features.fold import apply_update, fold_events
from consumers.mongo_sink import MongoSink

__all__ = ["REPLAY_TOPICS", "RebuildReport", "build_documents", "rebuild_features", "resolved_spec"]

log = logging.getLogger(__name__)

REPLAY_TOPICS = (
    "ehr.record",
    "redcap.record-changed",
    "dicom.instance-received",
    "annotation.suggested",
    "annotation.reviewed",
)
_WRITE_CHUNK = 1000


@dataclass
class RebuildReport:
    """What a rebuild did, with its timings (the benchmark prints them)."""

    events: int = 0
    undecodable: int = 0
    subjects: int = 0
    removed: int = 0
    spec_name: str = ""
    spec_version: int = 0
    spec_sha256: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "undecodable": self.undecodable,
            "subjects": self.subjects,
            "removed": self.removed,
            "spec": {"name": self.spec_name, "version": self.spec_version, "sha256": self.spec_sha256},
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def fold_into(documents: dict[str, dict[str, Any]], events: Iterable[Event]) -> None:
    """Fold events into in-memory input documents, as the live sink folds them into MongoDB."""
    for update in fold_events(events).values():
        apply_update(documents, update)


def resolved_spec(spec: FeatureSpec, inputs: Mapping[str, Mapping[str, Any]]) -> FeatureSpec:
    """``spec`` with ``most_frequent`` fixed to codes counted over the replayed inputs."""
    if spec.labs is None or spec.labs.most_frequent is None:
        return spec
    counts = lab_code_counts(d for k, d in inputs.items() if k.startswith("ehr:"))
    return spec.with_lab_codes(most_frequent_codes(counts, spec.labs.most_frequent))


def build_documents(
    spec: FeatureSpec, inputs: Mapping[str, Mapping[str, Any]], subject_of: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Every subject's document from in-memory inputs; ``subject_of`` is the registry
    (identifier key → subject id); an identifier not in it is a subject of its own."""
    groups: dict[str, list[str]] = {}
    for key in inputs:
        if key.startswith("series:"):
            continue
        subject = subject_of.get(key) or subject_id_for([key])
        groups.setdefault(subject, []).append(key)
    documents = []
    for subject_id in sorted(groups):
        identifier_docs = [inputs[k] for k in sorted(groups[subject_id])]
        series_docs = [inputs[s] for s in series_ids_of(identifier_docs) if s in inputs]
        documents.append(feature_document(spec, subject_inputs(subject_id, identifier_docs, series_docs)))
    return documents


async def _partitions(settings: Settings) -> list[Any]:
    """The partitions of the replayed topics that exist (a topic never created holds nothing)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.structs import TopicPartition

    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-features-rebuild-admin",
        request_timeout_ms=int(settings.kafka_request_timeout_s * 1000),
    )
    await admin.start()
    try:
        described = await admin.describe_topics([settings.topic(name) for name in REPLAY_TOPICS])
    finally:
        await admin.close()
    return [
        TopicPartition(d["topic"], p["partition"])
        for d in described
        if d.get("error_code") == 0
        for p in sorted(d.get("partitions", []), key=lambda p: p["partition"])
    ]


async def _replay(settings: Settings, on_batch: Callable[[list[Event]], None], report: RebuildReport) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        client_id=f"{settings.kafka_client_id}-features-rebuild-{uuid.uuid4().hex[:6]}",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        request_timeout_ms=int(settings.kafka_request_timeout_s * 1000),
    )
    await consumer.start()
    try:
        partitions = await _partitions(settings)
        if not partitions:
            return
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        codec = EventCodec()
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=20_000)
            events: list[Event] = []
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        remaining.discard(tp)
                        break
                    try:
                        events.append(codec.decode_event(record.value))
                    except EventDecodeError:
                        report.undecodable += 1  # the lanes dead-lettered it; nothing to fold
                    if record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
            report.events += len(events)
            on_batch(events)
    finally:
        await consumer.stop()


async def _input_page(sink: MongoSink, query: dict[str, Any]) -> list[dict[str, Any]]:
    cursor = sink.db.feature_inputs.find(query, {"pending": 0, "seq": 0}).sort("_id", 1).limit(5000)
    return await cursor.to_list()


async def _stored_inputs(sink: MongoSink, report: RebuildReport) -> dict[str, dict[str, Any]]:
    """The features lane's input documents, as folded so far (``--from-inputs``)."""
    inputs: dict[str, dict[str, Any]] = {}
    last: str | None = None
    while True:
        query: dict[str, Any] = {} if last is None else {"_id": {"$gt": last}}
        batch = await sink.retry(partial(_input_page, sink, query), "read feature inputs")
        if not batch:
            return inputs
        for doc in batch:
            inputs[doc["_id"]] = doc
        report.events += len(batch)
        last = batch[-1]["_id"]


async def rebuild_features(
    settings: Settings, spec: FeatureSpec | None = None, *, from_inputs: bool = False
) -> RebuildReport:
    """Replay, recompute and replace every feature document (see the module docstring).

    ``from_inputs``: read the input documents the features lane folded instead of
    replaying the log (much faster; the same documents once the lane has caught up, but
    only as complete as the lane is: after losing the collection, replay). ``events`` in
    the report then counts input documents."""
    spec = spec or load_spec(settings.features_spec_file or None)
    report = RebuildReport()
    inputs: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    sink = MongoSink(settings)
    await sink.setup()
    try:
        if from_inputs:
            inputs = await _stored_inputs(sink, report)
            report.seconds["read inputs"] = time.perf_counter() - started
        else:
            await _replay(settings, partial(fold_into, inputs), report)
            report.seconds["replay"] = time.perf_counter() - started
        t = time.perf_counter()
        registry = await sink.retry(
            partial(find_all, sink.db.subject_identifiers, {}, {"subject_id": 1}), "read the subject registry"
        )
        resolved = resolved_spec(spec, inputs)
        documents = build_documents(resolved, inputs, {d["_id"]: d["subject_id"] for d in registry})
        report.seconds["compute"] = time.perf_counter() - t
        t = time.perf_counter()
        await _replace_all(sink, documents, report)
        await save_active_spec(sink.db, spec, resolved)
        report.seconds["write"] = time.perf_counter() - t
    finally:
        await sink.close()
    report.subjects = len(documents)
    report.spec_name, report.spec_version, report.spec_sha256 = resolved.name, resolved.version, resolved.sha256
    report.seconds["total"] = time.perf_counter() - started
    log.info("features rebuilt", extra=report.to_dict())
    return report


async def _replace_all(sink: MongoSink, documents: Sequence[dict[str, Any]], report: RebuildReport) -> None:
    for start in range(0, len(documents), _WRITE_CHUNK):
        chunk = [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in documents[start : start + _WRITE_CHUNK]]
        await sink.retry(partial(sink.db.features.bulk_write, chunk, ordered=False), "write rebuilt features")
    keep = {d["_id"] for d in documents}
    existing = await sink.retry(partial(find_all, sink.db.features, {}, {"_id": 1}), "list feature documents")
    stale = sorted(d["_id"] for d in existing if d["_id"] not in keep)
    for start in range(0, len(stale), _WRITE_CHUNK):
        chunk = stale[start : start + _WRITE_CHUNK]
        await sink.retry(
            partial(sink.db.features.bulk_write, [DeleteMany({"_id": {"$in": chunk}})]), "remove stale features"
        )
    report.removed = len(stale)
