"""Agent + timer: announce a series as completed after a quiet period.

Like Orthanc's "stable series", but as an event others subscribe to (the annotation
worker does). State lives in two changelog-backed faust tables, so it survives a worker
restart:

- ``dicom-seen-instances``: SOPInstanceUID -> its series and the offset of the message
  that first brought it, so a resent instance neither counts twice nor re-opens a
  completed series;
- ``dicom-series-activity-v2``: per series (keyed by its UID's bytes), the distinct instance count, first/last receipt,
  when the worker last saw a new instance (processing time), the last completed
  revision, whether new instances arrived since, and the offset of the last message
  counted.

One instance means two changelog writes, and a worker killed between them (SIGKILL, a
lost machine) leaves one without the other; the partition's next owner reads the
messages after the last committed offset again. The offsets make that replay exact
(:func:`record_instance`): every instance of a series travels in one partition (the
topic is keyed by SeriesInstanceUID), in offset order, so a series whose state already
counts offset *n* has counted every new instance up to *n*.

The timer emits ``DicomSeriesCompleted`` for each open series whose last new instance
was processed ``series_quiet_period_s`` ago, then marks it closed. It emits *before*
marking, so a crash in between repeats the event (same revision) rather than losing it;
consumers key on (series, revision). Late instances re-open a series and the next
completion carries revision + 1. Each state records its instance-topic partition, and
the timer announces only series of partitions this process owns now
(:func:`is_owned`): after a rebalance, the previous owner's in-memory copy is stale.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

import faust

from cohortstream.codec import EventCodec
from cohortstream.events import DicomInstanceReceived, DicomSeriesCompleted
from cohortstream.settings import Settings
from streams.dead_letter import DeadLetterSender, decoded_events
from streams.topics import StreamTopics

TimerFunction = Callable[[], Awaitable[None]]

__all__ = ["AGENT_NAME", "is_owned", "is_quiet", "observe", "record_instance", "register"]

AGENT_NAME = "series-completion"
log = logging.getLogger(__name__)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def observe(
    state: dict[str, Any] | None, event: DicomInstanceReceived, now_ms: int, offset: int = -1, partition: int = -1
) -> dict[str, Any]:
    """The series state after one new (never seen) instance, brought by the message at
    ``offset`` in ``partition`` of the instance topic."""
    received = _ms(event.received_at)
    if state is None:
        return {
            "offset": offset,
            "partition": partition,
            "study_instance_uid": event.study_instance_uid,
            "patient_id": event.patient_id,
            "modality": event.modality,
            "instance_count": 1,
            "first_received_ms": received,
            "last_received_ms": received,
            "activity_ms": now_ms,
            "revision": 0,
            "open": True,
        }
    return {
        **state,
        "offset": offset,
        "partition": partition,
        "instance_count": state["instance_count"] + 1,
        "first_received_ms": min(state["first_received_ms"], received),
        "last_received_ms": max(state["last_received_ms"], received),
        "activity_ms": now_ms,
        "open": True,
    }


def record_instance(
    seen_entry: dict[str, Any] | str | None,
    state: dict[str, Any] | None,
    event: DicomInstanceReceived,
    offset: int,
    now_ms: int,
    partition: int = -1,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """What one ``DicomInstanceReceived`` message changes: ``(seen entry, series state)``
    to write, ``None`` for what stays as it is.

    ``seen_entry`` is the instance's entry in ``dicom-seen-instances`` (a bare series UID
    from releases before 2026-11, which recorded no offset), ``state`` its series' entry
    in ``dicom-series-activity-v2``, ``offset`` the message's offset in its ``partition``. A
    replay after a crash finds either write without the other, and completes whichever is
    missing without counting the instance twice.
    """
    counted = state is not None and state.get("offset", -1) >= offset
    entry = {"series": event.series_instance_uid, "offset": offset}
    if seen_entry is None:
        # New, or its seen entry was lost in a crash after the series counted it.
        return entry, None if counted else observe(state, event, now_ms, offset, partition)
    if isinstance(seen_entry, str) or seen_entry.get("offset") != offset:
        return None, None  # a resent copy: an earlier message brought this instance
    # This very message, read again after a crash: count it unless that was written too.
    return None, None if counted else observe(state, event, now_ms, offset, partition)


def is_owned(state: dict[str, Any] | None, owned_partitions: set[int]) -> bool:
    """Whether this process owns the instance-topic partition of the series in ``state``.

    faust's in-memory table keeps what this process wrote itself after a rebalance gave
    that partition to another worker (it prunes only what it restored from the
    changelog). The timer must not announce such a stale copy: a worker that had counted
    4 of a series' 12 instances before the partition moved completed it with 4 while the
    new owner was still reading (the two-worker SIGKILL test). States from before the
    partition was recorded count as owned, as they did before.
    """
    if not state:
        return False
    partition = state.get("partition", -1)
    return partition < 0 or partition in owned_partitions


def is_quiet(state: dict[str, Any] | None, now_ms: int, quiet_period_s: float, resumed_ms: int = 0) -> bool:
    """Whether an open series has seen no new instance for the quiet period, counted from
    the later of its last new instance and ``resumed_ms``: when this process took over
    its partition (a restart, or a rebalance after another worker died). The table comes
    back from its changelog with the old activity time, while the instances behind the
    committed offset have not been read again yet; without the restart of the clock, a
    series still arriving would complete early and then again as revision 2."""
    if not (state and state["open"]):
        return False
    return bool(now_ms - max(state["activity_ms"], resumed_ms) >= quiet_period_s * 1000)


async def _wait_for_changelog_metadata(app: faust.App, table: Any) -> None:
    """Create ``table``'s changelog topic if needed, then wait until the producer's
    metadata knows it.

    A table with ``use_partitioner=True`` picks its changelog partition with the
    producer's partitioner at the first write. On a fresh consumer group the topic may not
    exist yet (faust declares it when the table starts, which can be after the agent's
    first message), and the first write crashed (aiokafka: ``partitions_for_topic`` is
    None); the agent crash-looped for ~40 s (seen in the ingest benchmark). Asking for a
    topic that does not exist also made aiokafka log an ERROR ("not found in cluster
    metadata") at every retry: a dozen on each fresh ``make up``. So the changelog is
    declared first, with faust's own settings for it (compacted, the table's partitions;
    idempotent); aiokafka's ``partitions_for`` then waits for the metadata (bounded by its
    request timeout).
    """
    changelog = table.changelog_topic
    topic = changelog.get_topic_name()
    producer = cast(Any, app.producer)._ensure_producer()  # faust's aiokafka producer (not in ProducerT)
    for attempt in range(1, 31):
        try:
            await changelog.maybe_declare()
            if await producer.partitions_for(topic):
                log.info("changelog topic ready", extra={"topic": topic})
                return
        except Exception as exc:  # not created or not in the metadata yet: asked again below
            log.warning(
                "changelog topic not in the metadata yet",
                extra={"topic": topic, "attempt": attempt, "error": repr(exc)},
            )
        await asyncio.sleep(min(0.2 * attempt, 2.0))
    log.error("changelog topic still unknown to the producer; table writes may fail", extra={"topic": topic})


def register(
    app: faust.App,
    raw_topics: StreamTopics,
    typed_topics: StreamTopics,
    dead_letters: DeadLetterSender,
    settings: Settings,
) -> Any:
    """Attach the series-completion agent, its tables and its timer to ``app``."""
    codec = EventCodec()
    seen = app.Table("dicom-seen-instances", default=None, partitions=settings.topic_partitions)
    # use_partitioner: the timer updates this table outside stream iteration, so the
    # producer's partitioner picks each key's changelog partition. That must be the
    # partition of the series' instances, or the partition's next owner restores the series
    # from a changelog partition it does not own: keys are the SeriesInstanceUID's UTF-8
    # bytes (key_type=bytes: faust's "raw" serializer), exactly the source topic's keys. A
    # str key went out JSON-encoded (with quotes), hashed to another partition, and series
    # completion lost series when a second worker took over (the "-v2" table starts clean
    # rather than mix those keys in).
    activity = app.Table(
        "dicom-series-activity-v2",
        default=None,
        key_type=bytes,
        partitions=settings.topic_partitions,
        use_partitioner=True,
    )
    completed_topic = typed_topics["dicom.series-completed"]
    source_topic = raw_topics["dicom.instance-received"].get_topic_name()
    quiet = settings.series_quiet_period_s

    @app.agent(raw_topics["dicom.instance-received"], name=AGENT_NAME)
    async def track_series(stream: faust.StreamT[bytes]) -> None:
        await _wait_for_changelog_metadata(app, activity)
        async for event, message in decoded_events(stream, codec, DicomInstanceReceived, dead_letters):
            key = event.series_instance_uid.encode("utf-8")
            seen_entry, state = record_instance(
                seen.get(event.sop_instance_uid),
                activity.get(key),
                event,
                message.offset,
                int(time.time() * 1000),
                message.partition,
            )
            if seen_entry is not None:
                seen[event.sop_instance_uid] = seen_entry
            if state is not None:
                activity[key] = state

    # faust's decorators are untyped; the timer keeps the function's own signature.
    every = cast(Callable[[TimerFunction], TimerFunction], app.timer(interval=max(0.2, min(5.0, quiet / 4))))

    clock: dict[str, int | None] = {"resumed_ms": None, "paused_since_ms": None}

    @every
    async def complete_quiet_series() -> None:
        now_ms = int(time.time() * 1000)
        if getattr(app, "in_recovery", False) or app.rebalancing:
            clock["resumed_ms"] = None  # tables are incomplete until recovery ends
            paused_since = clock["paused_since_ms"] = clock["paused_since_ms"] or now_ms
            if now_ms - paused_since > 60_000:
                log.warning(
                    "series completion paused by a rebalance or table recovery for over a minute",
                    extra={"paused_s": round((now_ms - paused_since) / 1000)},
                )
            return
        if clock["resumed_ms"] is None:
            clock["resumed_ms"] = now_ms  # the first tick with the partitions (again)
            clock["paused_since_ms"] = None
            log.info(
                "series completion running with its partitions",
                extra={"open_series": sum(1 for state in activity.values() if state and state["open"])},
            )
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == source_topic}
        for key, state in list(activity.items()):
            if not (is_owned(state, owned) and is_quiet(state, now_ms, quiet, clock["resumed_ms"] or 0)):
                continue
            series = key.decode("utf-8")
            revision = state["revision"] + 1
            completed = DicomSeriesCompleted(
                producer=AGENT_NAME,
                study_instance_uid=state["study_instance_uid"],
                series_instance_uid=series,
                patient_id=state["patient_id"],
                modality=state["modality"],
                instance_count=state["instance_count"],
                first_received_at=_utc(state["first_received_ms"]),
                last_received_at=_utc(state["last_received_ms"]),
                revision=revision,
                quiet_period_s=quiet,
            )
            pending = await completed_topic.send(key=series.encode("utf-8"), value=completed)
            await pending
            latest = activity.get(key)
            # Instances that arrived while the event was being sent keep the series open.
            still_quiet = latest is not None and latest["activity_ms"] == state["activity_ms"]
            activity[key] = {**(latest or state), "revision": revision, "open": not still_quiet}
            log.info(
                "series completed",
                extra={
                    "series_instance_uid": series,
                    "study_instance_uid": state["study_instance_uid"],
                    "instance_count": state["instance_count"],
                    "revision": revision,
                },
            )

    return track_series
