"""``cohortstream features rebuild``: recompute every feature document by replay.

What is replayed (``source``):

- ``snapshot`` (the default): the features lane's compacted topic ``features.inputs``,
  one message per input document holding its whole folded state, every lab row of every
  code as columns (:mod:`cohortstream.features.snapshot`). A changed spec is recomputed
  from all rows, as from the events, at a fraction of the cost: 50,000 messages instead of
  5 million Avro events. It is as complete as the lane's last flush: the report counts the
  snapshot's documents against the view store's ``feature_inputs`` and the pending ones,
  and says so when they differ. When the topic is missing or empty the rebuild replays
  the events instead and says that it did.
- ``events`` (``--from-events``): the five source topics from offset 0, folded in memory
  with the very functions the live sink uses (:mod:`.fold`): independent of the lane, for
  when the snapshot is missing or not trusted.
- ``inputs`` (``--from-inputs``): the ``feature_inputs`` documents in the view store.

Then, whatever the source: identifiers are grouped into subjects with the registry, every
subject's document is computed with the current spec (the lab statistics of the whole
cohort at once, :mod:`cohortstream.features.cohort`, as the lane computes them), and the
``features`` collection's documents are replaced (those of subjects that no longer exist
are removed) with several bulk writes in flight. Nothing depends on the order or timing
of the replay, so rebuilding twice gives identical documents, and the same documents as
the live stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from pymongo import DeleteMany, ReplaceOne

from cohortstream.errors import EventDecodeError
from cohortstream.events import Event
from cohortstream.features.cohort import feature_documents
from cohortstream.features.inputs import series_ids_of, subject_inputs, subject_lab_columns
from cohortstream.features.snapshot import TOPIC as SNAPSHOT_TOPIC
from cohortstream.features.snapshot import decode_snapshot
from cohortstream.features.spec import FeatureSpec, load_spec
from cohortstream.features.store import lab_code_counts, most_frequent_codes, save_active_spec
from cohortstream.mongo import find_all
from cohortstream.settings import Settings
from cohortstream.subjects import subject_id_for
from consumers.features.fold import apply_update, fold_events
from consumers.features.replay import EVENT_TOPICS, ReplayCounts, latest_snapshots, replay_events
from consumers.mongo_sink import MongoSink

__all__ = [
    "REPLAY_TOPICS",
    "RebuildReport",
    "RebuildSource",
    "build_documents",
    "fold_into",
    "rebuild_features",
    "resolved_spec",
]

log = logging.getLogger(__name__)

REPLAY_TOPICS = EVENT_TOPICS
_WRITE_CHUNK = 1000
_WRITES_IN_FLIGHT = 4

RebuildSource = Literal["snapshot", "events", "inputs"]


@dataclass
class RebuildReport:
    """What a rebuild did, with its timings (the benchmark prints them)."""

    source: RebuildSource = "snapshot"
    """What was replayed: the snapshot topic, the source events, or the view store's inputs."""
    events: int = 0
    """Messages read (source events, snapshot messages, or input documents)."""
    undecodable: int = 0
    subjects: int = 0
    removed: int = 0
    input_documents: int = 0
    """Input documents the subjects were computed from."""
    view_store_inputs: int | None = None
    """``feature_inputs`` documents in the view store, and how many were pending (snapshot source)."""
    pending_inputs: int | None = None
    notes: list[str] = field(default_factory=list)
    """What a person should know about this rebuild (fallbacks, an incomplete snapshot)."""
    spec_name: str = ""
    spec_version: int = 0
    spec_sha256: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "notes": list(self.notes),
            "input_documents": self.input_documents,
            "view_store_inputs": self.view_store_inputs,
            "pending_inputs": self.pending_inputs,
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
    """Every subject's document from in-memory inputs (``labs`` maps or snapshot
    ``lab_columns``); ``subject_of`` is the registry (identifier key → subject id); an
    identifier not in it is a subject of its own."""
    groups: dict[str, list[str]] = {}
    for key in inputs:
        if key.startswith("series:"):
            continue
        subject = subject_of.get(key) or subject_id_for([key])
        groups.setdefault(subject, []).append(key)
    subjects = []
    labs = []
    for subject_id in sorted(groups):
        identifier_docs = [inputs[k] for k in sorted(groups[subject_id])]
        series_docs = [inputs[s] for s in series_ids_of(identifier_docs) if s in inputs]
        subjects.append(subject_inputs(subject_id, identifier_docs, series_docs, lab_rows=False))
        labs.append(subject_lab_columns(identifier_docs))
    return feature_documents(spec, subjects, labs)


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


async def _read_snapshot(
    settings: Settings, sink: MongoSink, report: RebuildReport
) -> dict[str, dict[str, Any]] | None:
    """The input documents on the snapshot topic; None (with a note) when it is missing or empty."""
    topic = settings.topic(SNAPSHOT_TOPIC)
    counts = ReplayCounts()
    started = time.perf_counter()
    # The view store's counts are read meanwhile: they say whether the snapshot is complete.
    total = asyncio.create_task(sink.retry(partial(sink.db.feature_inputs.count_documents, {}), "count inputs"))
    pending = asyncio.create_task(
        sink.retry(partial(sink.db.feature_inputs.count_documents, {"pending": True}), "count pending inputs")
    )
    latest = await latest_snapshots(settings, topic, counts)
    report.view_store_inputs, report.pending_inputs = await total, await pending
    report.seconds["read snapshot"] = time.perf_counter() - started
    report.events = counts.messages
    if not latest:
        report.notes.append(
            f"the snapshot topic {topic} is {'missing' if latest is None else 'empty'}: replayed the source events instead"
        )
        return None
    started = time.perf_counter()
    inputs: dict[str, dict[str, Any]] = {}
    for key, value in latest.items():
        try:
            inputs[key] = decode_snapshot(value)
        except EventDecodeError:
            report.undecodable += 1
    report.seconds["decode"] = time.perf_counter() - started
    if report.undecodable:
        report.notes.append(f"{report.undecodable} snapshot messages could not be decoded and were left out")
    if len(inputs) != report.view_store_inputs or report.pending_inputs:
        report.notes.append(
            f"the snapshot holds {len(inputs)} input documents, the view store {report.view_store_inputs} "
            f"({report.pending_inputs} pending in the features lane): the documents follow the snapshot; "
            "wait for the lane to catch up, or rebuild --from-events"
        )
    return inputs


async def _read_events(settings: Settings, report: RebuildReport) -> dict[str, dict[str, Any]]:
    inputs: dict[str, dict[str, Any]] = {}
    counts = ReplayCounts()
    started = time.perf_counter()
    await replay_events(settings, partial(fold_into, inputs), counts)
    report.events, report.undecodable = counts.messages, counts.undecodable
    report.seconds["replay"] = time.perf_counter() - started
    return inputs


async def rebuild_features(
    settings: Settings,
    spec: FeatureSpec | None = None,
    *,
    source: RebuildSource = "snapshot",
    from_inputs: bool = False,
) -> RebuildReport:
    """Replay, recompute and replace every feature document (see the module docstring).

    ``source``: ``snapshot`` (default; the source events when the snapshot topic is
    missing or empty, noted in the report), ``events`` or ``inputs`` (``from_inputs=True``
    is the same). ``events`` in the report counts the messages (or documents) read."""
    spec = spec or load_spec(settings.features_spec_file or None)
    report = RebuildReport(source="inputs" if from_inputs else source)
    started = time.perf_counter()
    sink = MongoSink(settings)
    await sink.setup()
    try:
        registry_read = asyncio.create_task(
            sink.retry(
                partial(find_all, sink.db.subject_identifiers, {}, {"subject_id": 1}), "read the subject registry"
            )
        )
        inputs: dict[str, dict[str, Any]] | None = None
        if report.source == "inputs":
            inputs = await _stored_inputs(sink, report)
            report.seconds["read inputs"] = time.perf_counter() - started
        elif report.source == "snapshot":
            inputs = await _read_snapshot(settings, sink, report)
        if inputs is None:
            report.source = "events"
            inputs = await _read_events(settings, report)
        registry = await registry_read
        t = time.perf_counter()
        report.input_documents = len(inputs)
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
    for note in report.notes:
        log.warning("features rebuild: %s", note, extra={"source": report.source})
    return report


async def _replace_all(sink: MongoSink, documents: Sequence[dict[str, Any]], report: RebuildReport) -> None:
    """Replace the documents with a few bulk writes in flight (the view store works on one
    while the next is encoded), then remove the documents of subjects that are gone."""
    slots = asyncio.Semaphore(_WRITES_IN_FLIGHT)

    async def write(chunk: Sequence[dict[str, Any]]) -> None:
        async with slots:
            operations = [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in chunk]
            await sink.retry(partial(sink.db.features.bulk_write, operations, ordered=False), "write rebuilt features")

    listed = asyncio.create_task(
        sink.retry(partial(find_all, sink.db.features, {}, {"_id": 1}), "list feature documents")
    )
    await asyncio.gather(
        *(write(documents[start : start + _WRITE_CHUNK]) for start in range(0, len(documents), _WRITE_CHUNK))
    )
    keep = {d["_id"] for d in documents}
    stale = sorted(d["_id"] for d in await listed if d["_id"] not in keep)
    for start in range(0, len(stale), _WRITE_CHUNK):
        chunk = stale[start : start + _WRITE_CHUNK]
        await sink.retry(
            partial(sink.db.features.bulk_write, [DeleteMany({"_id": {"$in": chunk}})]), "remove stale features"
        )
    report.removed = len(stale)
