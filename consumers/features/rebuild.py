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
import contextlib
import gc
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from pymongo import DeleteMany, InsertOne, ReplaceOne
from pymongo.errors import BulkWriteError

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
    "documents_of",
    "fold_into",
    "rebuild_features",
    "resolved_spec",
    "subject_groups",
]

log = logging.getLogger(__name__)

REPLAY_TOPICS = EVENT_TOPICS
_WRITE_CHUNK = 1000
_WRITES_IN_FLIGHT = 4
_COMPUTE_SLICE = 5000
_DUPLICATE_KEY = 11000

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


def subject_groups(
    inputs: Mapping[str, Mapping[str, Any]], subject_of: Mapping[str, str]
) -> list[tuple[str, list[str]]]:
    """(subject id, its identifier keys) in subject id order; ``subject_of`` is the registry
    (identifier key → subject id); an identifier not in it is a subject of its own."""
    groups: dict[str, list[str]] = {}
    for key in inputs:
        if key.startswith("series:"):
            continue
        subject = subject_of.get(key) or subject_id_for([key])
        groups.setdefault(subject, []).append(key)
    return [(subject_id, sorted(groups[subject_id])) for subject_id in sorted(groups)]


def documents_of(
    spec: FeatureSpec, inputs: Mapping[str, Mapping[str, Any]], groups: Sequence[tuple[str, Sequence[str]]]
) -> list[dict[str, Any]]:
    """The documents of ``groups`` (from :func:`subject_groups`), computed together."""
    subjects = []
    labs = []
    for subject_id, keys in groups:
        identifier_docs = [inputs[k] for k in keys]
        series_docs = [inputs[s] for s in series_ids_of(identifier_docs) if s in inputs]
        subjects.append(subject_inputs(subject_id, identifier_docs, series_docs, lab_rows=False))
        labs.append(subject_lab_columns(identifier_docs))
    return feature_documents(spec, subjects, labs)


def build_documents(
    spec: FeatureSpec, inputs: Mapping[str, Mapping[str, Any]], subject_of: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Every subject's document from in-memory inputs (``labs`` maps or snapshot
    ``lab_columns``); ``subject_of`` as for :func:`subject_groups`."""
    return documents_of(spec, inputs, subject_groups(inputs, subject_of))


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


async def _rebuild(
    settings: Settings, sink: MongoSink, spec: FeatureSpec, report: RebuildReport, started: float
) -> tuple[list[dict[str, Any]], FeatureSpec]:
    writer = _Writer(sink)  # lists the stored ids while the source is read
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
        groups = subject_groups(inputs, {d["_id"]: d["subject_id"] for d in registry})
        # Computed a slice of the cohort at a time, each slice's bulk writes started before the
        # next is computed: the view store (another process, the other core) stores one slice
        # while this process computes the next.
        documents: list[dict[str, Any]] = []
        compute_s = 0.0
        for start in range(0, len(groups), _COMPUTE_SLICE):
            c = time.perf_counter()
            chunk = documents_of(resolved, inputs, groups[start : start + _COMPUTE_SLICE])
            compute_s += time.perf_counter() - c
            documents += chunk
            await writer.start(chunk)
        report.seconds["compute"] = compute_s
        w = time.perf_counter()
        await writer.finish(documents, report)
        await save_active_spec(sink.db, spec, resolved)
        report.seconds["write left after compute"] = time.perf_counter() - w
        report.seconds["compute + write"] = time.perf_counter() - t
    except BaseException:
        writer.cancel()
        raise
    return documents, resolved


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a rebuild makes its millions of objects
    (decoded snapshots, documents; none of them cyclic): its passes over the growing heap
    took about 40% of the computation for 50,000 subjects. On again afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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
        with _collector_paused():
            documents, resolved = await _rebuild(settings, sink, spec, report, started)
    finally:
        await sink.close()
    report.subjects = len(documents)
    report.spec_name, report.spec_version, report.spec_sha256 = resolved.name, resolved.version, resolved.sha256
    report.seconds["total"] = time.perf_counter() - started
    log.info("features rebuilt", extra=report.to_dict())
    for note in report.notes:
        log.warning("features rebuild: %s", note, extra={"source": report.source})
    return report


class _Writer:
    """Writes the rebuilt documents with a few bulk writes in flight, then removes the
    documents of subjects that are gone.

    A document whose id the collection did not hold when the rebuild started is inserted,
    the others replaced: an insert costs the view store less than half of an upserting
    replace (measured: 20,000 documents in 0.46 s against 1.07–1.23 s). The ids are listed
    while the rebuild reads its source. One that appeared since (the lane wrote it) fails
    as a duplicate and is replaced instead."""

    def __init__(self, sink: MongoSink) -> None:
        self._sink = sink
        self._slots = asyncio.Semaphore(_WRITES_IN_FLIGHT)
        self._writes: list[asyncio.Task[None]] = []
        self._listed = asyncio.create_task(
            sink.retry(partial(find_all, sink.db.features, {}, {"_id": 1}), "list feature documents")
        )
        self._existing: set[str] | None = None

    async def _existing_ids(self) -> set[str]:
        if self._existing is None:
            self._existing = {d["_id"] for d in await self._listed}
        return self._existing

    async def _bulk(self, documents: Sequence[dict[str, Any]], existing: set[str]) -> None:
        operations: list[Any] = [
            ReplaceOne({"_id": d["_id"]}, d, upsert=True) if d["_id"] in existing else InsertOne(d) for d in documents
        ]
        try:
            await self._sink.db.features.bulk_write(operations, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if not errors or any(e.get("code") != _DUPLICATE_KEY for e in errors):
                raise
            again = [documents[e["index"]] for e in errors]
            await self._sink.db.features.bulk_write(
                [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in again], ordered=False
            )

    async def _write(self, chunk: Sequence[dict[str, Any]]) -> None:
        async with self._slots:
            existing = await self._existing_ids()
            await self._sink.retry(partial(self._bulk, chunk, existing), "write rebuilt features")

    async def start(self, documents: Sequence[dict[str, Any]]) -> None:
        """Queue the writes of ``documents`` and let the first ones go out."""
        for start in range(0, len(documents), _WRITE_CHUNK):
            self._writes.append(asyncio.create_task(self._write(documents[start : start + _WRITE_CHUNK])))
        await asyncio.sleep(0)

    def cancel(self) -> None:
        """Stop whatever is still running (the rebuild failed)."""
        for task in [*self._writes, self._listed]:
            task.cancel()

    async def finish(self, documents: Sequence[dict[str, Any]], report: RebuildReport) -> None:
        """Wait for every write, then remove what no longer has a subject."""
        try:
            await asyncio.gather(*self._writes)
        except BaseException:
            self.cancel()
            raise
        keep = {d["_id"] for d in documents}
        stale = sorted(i for i in await self._existing_ids() if i not in keep)
        for start in range(0, len(stale), _WRITE_CHUNK):
            chunk = stale[start : start + _WRITE_CHUNK]
            await self._sink.retry(
                partial(self._sink.db.features.bulk_write, [DeleteMany({"_id": {"$in": chunk}})]),
                "remove stale features",
            )
        report.removed = len(stale)
