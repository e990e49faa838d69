"""The feature sink: fold events into input documents, then, within ``features_delay_s``
of a subject's first unprocessed event, recompute and write its feature document.

Why a debounce: a lab extract brings a subject's rows in a burst, a series its slices;
recomputing once per burst instead of once per row is what keeps up with the stream.
Why input documents (``feature_inputs``) and not the other views: the view lanes run in
parallel consumer groups, so reading their collections could miss an event this lane
already saw; the inputs are written by this sink before it marks the subject dirty.

Crash safety: a fold marks its documents ``pending`` (and bumps ``seq``); a flush clears
the mark only where ``seq`` did not move meanwhile. A restarted sink schedules every
pending document, so an event whose offset was committed is never left unapplied.

Snapshots: every input document a flush reads is also published, whole, to the compacted
topic ``features.inputs`` (:mod:`cohortstream.features.snapshot`) after the features are
written and *before* ``pending`` is cleared, so a document that is not pending has its
current state on that topic; ``cohortstream features rebuild`` replays it instead of
every source event. The publication runs after the vectors are written, beside the next
flush (one at a time), so Kafka's acknowledgement is not part of the delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, ClassVar

from prometheus_client import Histogram
from pymongo import DeleteMany, ReplaceOne, UpdateOne

from cohortstream.admin import ensure_compacted_topics
from cohortstream.errors import CohortStreamError
from cohortstream.events import Event
from cohortstream.features.cohort import feature_documents
from cohortstream.features.inputs import series_ids_of, subject_inputs, subject_lab_columns
from cohortstream.features.labs import LabColumns
from cohortstream.features.snapshot import TOPIC as SNAPSHOT_TOPIC
from cohortstream.features.snapshot import encode_snapshot
from cohortstream.features.spec import FeatureSpec, load_spec
from cohortstream.features.store import resolve_lab_codes, save_active_spec
from cohortstream.mongo import find_all
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings
from cohortstream.subjects import subject_id_for
from cohortstream.topics import COMPACTED_TOPIC_MAX_MESSAGE_BYTES
from consumers.features.fold import fold_events, mongo_update
from consumers.mongo_sink import IndexSpec, MongoSink

__all__ = ["FEATURE_DELAY", "FeatureViews", "compute_subjects"]

log = logging.getLogger(__name__)

FEATURE_DELAY = Histogram(
    "cohortstream_feature_delay_seconds",
    "From the latest event of a subject (its emitted_at) to its feature document being written.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300),
)

_FLUSH_CHUNK = 500
_SNAPSHOT_BATCH_BYTES = 1024 * 1024
"""A flush publishes ~5 KB per input document: batches of 1 MiB, not aiokafka's 16 KiB."""


async def compute_subjects(
    sink: MongoSink, spec: FeatureSpec, keys: Iterable[str]
) -> tuple[list[dict[str, Any]], dict[str, str], list[dict[str, Any]]]:
    """Feature documents of the subjects of identifier ``keys`` (read from ``feature_inputs``),
    identifier key → subject id for every member read, and the input documents read."""
    keys = sorted(set(keys))
    if not keys:
        return [], {}, []
    registered = await sink.retry(
        partial(find_all, sink.db.subject_identifiers, {"_id": {"$in": keys}}, {"subject_id": 1}), "resolve subjects"
    )
    subject_of = {d["_id"]: d["subject_id"] for d in registered}
    subject_ids = sorted(set(subject_of.values()))
    members = await sink.retry(
        partial(find_all, sink.db.subject_identifiers, {"subject_id": {"$in": subject_ids}}, {"subject_id": 1}),
        "subject members",
    )
    groups: dict[str, set[str]] = {}
    for d in members:
        groups.setdefault(d["subject_id"], set()).add(d["_id"])
        subject_of[d["_id"]] = d["subject_id"]
    for key in keys:  # not registered yet: a subject of its own, with the id the registry will give it
        if key not in subject_of:
            subject_of[key] = subject_id_for([key])
            groups.setdefault(subject_of[key], set()).add(key)
    all_keys = sorted({k for g in groups.values() for k in g})
    docs = await sink.retry(
        partial(find_all, sink.db.feature_inputs, {"_id": {"$in": all_keys}}, {"pending": 0, "seq": 0}), "read inputs"
    )
    for doc in docs:
        # Once per document: the computation and the snapshot both take the rows as columns.
        doc["lab_columns"] = LabColumns.from_rows(doc.pop("labs", None) or {})
    by_id = {d["_id"]: d for d in docs}
    series = await sink.retry(
        partial(find_all, sink.db.feature_inputs, {"_id": {"$in": series_ids_of(docs)}}, {"pending": 0, "seq": 0}),
        "read series inputs",
    )
    series_by_id = {d["_id"]: d for d in series}
    subjects = []
    labs = []
    for subject_id, group in sorted(groups.items()):
        identifier_docs = [by_id[k] for k in sorted(group) if k in by_id]
        if not identifier_docs:
            continue
        wanted = set(series_ids_of(identifier_docs))
        series_docs = [series_by_id[s] for s in sorted(wanted) if s in series_by_id]
        subjects.append(subject_inputs(subject_id, identifier_docs, series_docs, lab_rows=False))
        labs.append(subject_lab_columns(identifier_docs))
    return feature_documents(spec, subjects, labs), subject_of, [*docs, *series]


def _snapshots(inputs: Sequence[dict[str, Any]]) -> list[tuple[str, bytes | None]]:
    records: list[tuple[str, bytes | None]] = []
    for doc in inputs:
        value = encode_snapshot(doc)
        if len(value) > COMPACTED_TOPIC_MAX_MESSAGE_BYTES - 4096:
            # Never retried forever: left out, and `features rebuild` reports the snapshot
            # short of the view store's inputs (then rebuild --from-events).
            log.error("feature input document too large for the snapshot topic", extra={"bytes": len(value)})
            continue
        records.append((str(doc["_id"]), value))
    return records


class FeatureViews(MongoSink):
    """Sink of the ``features`` lane (several agents share one instance: set up once, closed by the last)."""

    INDEXES: ClassVar[IndexSpec] = {"feature_inputs": ["pending"], "features": ["identifiers"]}

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._users = 0
        self._setup_lock = asyncio.Lock()
        self._spec: FeatureSpec | None = None
        self._dirty: dict[str, float] = {}
        self._recheck: dict[str, tuple[float, str]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._snapshots = EventPublisher(
            settings, max_request_size=COMPACTED_TOPIC_MAX_MESSAGE_BYTES, max_batch_size=_SNAPSHOT_BATCH_BYTES
        )
        self._publishing: asyncio.Task[None] | None = None

    @property
    def spec(self) -> FeatureSpec:
        if self._spec is None:
            raise RuntimeError("FeatureViews.setup() was not awaited")
        return self._spec

    async def setup(self) -> None:
        async with self._setup_lock:
            self._users += 1
            if self._users > 1:
                return
            await super().setup()
            try:
                await ensure_compacted_topics(self._settings)
            except CohortStreamError as exc:  # e.g. a role without CREATE: the deployment made it
                log.warning("cannot check the features snapshot topic", extra={"error": str(exc)})
            await self._snapshots.start()
            spec = load_spec(self._settings.features_spec_file or None)
            codes = await resolve_lab_codes(self.db, spec)
            self._spec = spec.with_lab_codes(codes) if codes is not None else spec
            await save_active_spec(self.db, spec, self._spec)
            pending = await self.retry(
                partial(find_all, self.db.feature_inputs, {"pending": True}, {"_id": 1}), "pending inputs"
            )
            now = time.monotonic()
            for doc in pending:
                self._dirty.setdefault(doc["_id"], now)
            self._flusher = asyncio.create_task(self._run_flusher(), name="features-flusher")

    async def close(self) -> None:
        async with self._setup_lock:
            self._users -= 1
            if self._users > 0:
                return
            if self._flusher is not None:
                self._flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._flusher
                self._flusher = None
            try:
                await self._finish_publishing()
            finally:
                await self._snapshots.stop()
            await super().close()

    async def apply(self, events: Sequence[Event]) -> None:
        """Fold the events into the inputs, then schedule their subjects."""
        updates = fold_events(events)
        if not updates:
            return
        await self.bulk_write("feature_inputs", [mongo_update(u) for u in updates.values()], "fold feature inputs")
        due = time.monotonic() + self._settings.features_delay_s
        for doc_id in updates:
            # The earliest due time wins: a subject with a steady trickle of events is still
            # recomputed within the delay of its first pending one.
            self._dirty.setdefault(doc_id, due)

    def pending(self) -> int:
        """Input documents waiting for their subject's recomputation."""
        return len(self._dirty)

    async def _run_flusher(self) -> None:
        tick = min(0.25, self._settings.features_delay_s / 4)
        while True:
            await asyncio.sleep(tick)
            try:
                await self.flush_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Kept scheduled: the next tick tries again (the sink's retries already
                # waited out an outage; this is a bug or bad data, logged without identifiers).
                log.exception("feature flush failed; will retry")

    async def flush_due(self, *, everything: bool = False) -> int:
        """Recompute the subjects whose time has come (all with ``everything``); returns how many."""
        async with self._flush_lock:
            now = time.monotonic()
            due = sorted(k for k, at in self._dirty.items() if everything or at <= now)
            rechecks = sorted(k for k, (at, _) in self._recheck.items() if everything or at <= now)
            written = 0
            for start in range(0, len(due), _FLUSH_CHUNK):
                chunk = due[start : start + _FLUSH_CHUNK]
                # Taken before the flush: an event folded while it runs schedules its key
                # again (popping afterwards would drop that event's recomputation).
                taken = {key: self._dirty.pop(key) for key in chunk if key in self._dirty}
                try:
                    written += await self._flush(chunk)
                except BaseException:
                    for key, at in taken.items():
                        self._dirty[key] = min(at, self._dirty.get(key, at))
                    raise
            if rechecks:
                await self._recheck_links(rechecks)
            if everything:
                await self._finish_publishing()
            return written

    async def _flush(self, doc_ids: Sequence[str]) -> int:
        seqs = await self.retry(
            partial(find_all, self.db.feature_inputs, {"_id": {"$in": list(doc_ids)}}, {"seq": 1, "patient_id": 1}),
            "read input sequence numbers",
        )
        keys = set()
        for doc in seqs:
            if doc["_id"].startswith("series:"):
                if doc.get("patient_id"):
                    keys.add(f"dicom:{doc['patient_id']}")
            else:
                keys.add(doc["_id"])
        documents, subject_of, inputs = await compute_subjects(self, self.spec, keys)
        if documents:
            writes: list[Any] = [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in documents]
            members = sorted(subject_of)
            # A merge gave some identifiers a new subject: the old subjects' documents go.
            writes.append(DeleteMany({"identifiers": {"$in": members}, "_id": {"$nin": [d["_id"] for d in documents]}}))
            await self.retry(partial(self.db.features.bulk_write, writes, ordered=True), "write features")
        clear = [
            UpdateOne({"_id": d["_id"], "seq": d.get("seq")}, {"$unset": {"pending": ""}}) for d in seqs if "seq" in d
        ]
        # The vectors are written: the snapshot and the end of `pending` follow off the path
        # of the delay (the next flush waits only if the previous publication is still running).
        await self._finish_publishing()
        self._publishing = asyncio.create_task(self._publish_then_clear(_snapshots(inputs), clear, list(doc_ids)))
        wall = time.time()
        for d in documents:
            if d.get("as_of") is not None:
                FEATURE_DELAY.observe(max(0.0, wall - d["as_of"].timestamp()))
        if self._settings.features_link_grace_s > 0:
            at = time.monotonic() + self._settings.features_link_grace_s
            for key in keys:
                self._recheck[key] = (at, subject_of.get(key, ""))
        return len(documents)

    async def _publish_then_clear(
        self, records: list[tuple[str, bytes | None]], clear: list[UpdateOne], doc_ids: list[str]
    ) -> None:
        """Publish the snapshots and, once Kafka acknowledged them, clear ``pending``: a crash
        before that leaves the documents pending, and a restart recomputes and publishes them."""
        try:
            if records:
                await self._snapshots.publish_records(self._settings.topic(SNAPSHOT_TOPIC), records)
            if clear:
                await self.retry(partial(self.db.feature_inputs.bulk_write, clear, ordered=False), "clear pending")
        except asyncio.CancelledError:
            raise
        except Exception:
            # Still pending: scheduled again, so the next tick recomputes and republishes them.
            log.exception("features snapshot not published; will retry")
            now = time.monotonic()
            for doc_id in doc_ids:
                self._dirty.setdefault(doc_id, now)

    async def _finish_publishing(self) -> None:
        if self._publishing is not None:
            task, self._publishing = self._publishing, None
            await task

    async def _recheck_links(self, keys: Sequence[str]) -> None:
        registered = await self.retry(
            partial(find_all, self.db.subject_identifiers, {"_id": {"$in": list(keys)}}, {"subject_id": 1}),
            "recheck links",
        )
        now_subject = {d["_id"]: d["subject_id"] for d in registered}
        changed = []
        for key in keys:
            _, written = self._recheck.pop(key)
            if now_subject.get(key, written) != written:
                changed.append(key)
        if changed:
            await self._flush(changed)
