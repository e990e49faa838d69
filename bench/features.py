"""Feature vectors: rebuild by replay, the features lane's throughput, and the delay from
a subject's last event to its updated vector at a steady event rate.

Needs a running stack (``COHORTSTREAM_ENV_FILE``, as ``deploy/stack.sh up`` writes it);
every run uses its own topic prefix and database and drops the database at the end.

1. **Rebuild.** ``--subjects`` subjects with one PATIENT row and ``--labs`` lab rows each
   (6 codes over a year) are published to ``ehr.record``; ``features rebuild --from-events``
   replays them, computes and writes every document: subjects/s and events/s, with the
   replay, compute and write stages (``--no-from-events``: skipped, and nothing published).
   Then the lane's state for the same events is set up (folded here, untimed: the
   ``feature_inputs`` documents, and one snapshot message per document on the compacted
   ``features.inputs`` topic, as the lane publishes them) and ``features rebuild`` (the
   default: by replay of the snapshot topic) runs: subjects/s with the read, decode, compute
   and write stages; then ``--from-inputs``. The in-memory part alone (fold + compute, no
   Kafka, no MongoDB) is timed too.
2. **Lane throughput.** The features lane alone (its own consumer group) folds a backlog
   of ``--lane-subjects`` × ``--labs`` rows: events/s until every document is written.
3. **Delay at a steady rate.** With the lane running and caught up, ``--rate`` lab rows/s
   go to random subjects for ``--duration`` s; probe rows on ``--probes``/s subjects are
   timed from their acknowledgement to the first read of the subject's document whose
   ``as_of`` covers them (polled every 50 ms): p50/p95/max.

    .venv/bin/python -m bench.features [--subjects 50000] [--labs 100] [--lane-subjects 5000] \\
        [--rate 2000] [--duration 60] [--probes 5] [--delay 2.0] [--no-from-events] [--no-from-inputs] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cohortstream.admin import ensure_topics
from cohortstream.events import EhrRecord, EhrRecordType, Event
from cohortstream.features.spec import default_spec
from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings

CODES = ("50912", "51222", "50931", "50971", "50983", "51301")
T0 = datetime(2150, 1, 1, tzinfo=UTC)


def _lab(sid: str, source_file: str, row_id: str, at: datetime, code: str, value: float) -> EhrRecord:
    """One MIMIC-like lab row of subject ``sid``."""
    return EhrRecord(
        producer="bench",
        source="mimic-iv",
        source_file=source_file,
        source_row_id=row_id,
        subject_id=sid,
        record_type=EhrRecordType.LAB,
        effective_at=at,
        code=code,
        value_number=value,
        unit="mg/dL",
    )


def _subject_events(subject: int, labs: int, rng: random.Random) -> list[EhrRecord]:
    sid = str(30_000_000 + subject)
    events = [
        EhrRecord(
            producer="bench",
            source="mimic-iv",
            source_file="hosp/patients.csv",
            source_row_id=sid,
            subject_id=sid,
            record_type=EhrRecordType.PATIENT,
            attributes={"gender": rng.choice("MF"), "anchor_age": str(rng.randint(18, 90))},
        )
    ]
    for i in range(labs):
        at = T0 + timedelta(minutes=rng.randrange(525_600))
        value = round(rng.uniform(0.5, 15.0), 1)
        events.append(_lab(sid, "hosp/labevents.csv", f"{subject}-{i}", at, CODES[i % len(CODES)], value))
    return events


async def _publish(settings: Settings, subjects: range, labs: int, seed: int) -> tuple[int, float]:
    rng = random.Random(seed)
    started = time.perf_counter()
    count = 0
    async with EventPublisher(settings) as publisher:
        batch: list[tuple[Event, str]] = []
        for s in subjects:
            batch += [(e, f"mimic-iv/{e.subject_id}") for e in _subject_events(s, labs, rng)]
            if len(batch) >= 20_000:
                await publisher.publish_many(batch)
                count += len(batch)
                batch = []
        if batch:
            await publisher.publish_many(batch)
            count += len(batch)
    return count, time.perf_counter() - started


def _in_memory(subjects: int, labs: int) -> tuple[float, float]:
    """Fold + compute of ``subjects`` (no Kafka, no MongoDB): (seconds, subjects/s)."""
    from consumers.features.rebuild import build_documents, fold_into

    rng = random.Random(1)
    events = [e for s in range(subjects) for e in _subject_events(s, labs, rng)]
    started = time.perf_counter()
    inputs: dict[str, dict[str, Any]] = {}
    fold_into(inputs, events)
    build_documents(default_spec(), inputs, {})
    seconds = time.perf_counter() - started
    return seconds, subjects / seconds


def _settings(base: Settings, tag: str, delay: float) -> Settings:
    unique = f"{tag}-{uuid.uuid4().hex[:8]}"
    return base.model_copy(
        update={
            "topic_prefix": f"bench-{unique}.",
            "app_id": f"bench-{unique}",
            "mongo_database": f"bench_{unique.replace('-', '_')}",
            "data_dir": Path(f"/tmp/cohortstream-bench-{unique}"),
            "features_delay_s": delay,
            "log_level": "WARNING",
        }
    )


async def _store_inputs(settings: Settings, args: argparse.Namespace) -> tuple[int, float]:
    """The lane's state for the published events: ``feature_inputs`` documents and their
    snapshot messages (the lane publishes one per input document it recomputes from).
    Returns (snapshot messages, seconds spent publishing them)."""
    from cohortstream.features.snapshot import TOPIC, encode_snapshot
    from consumers.features.rebuild import fold_into

    client = mongo_client(settings)
    db = mongo_database(client, settings)
    rng = random.Random(2)  # the seed _publish used: the same events
    published, seconds = 0, 0.0
    try:
        async with EventPublisher(settings) as publisher:
            for start in range(0, args.subjects, 2000):
                inputs: dict[str, dict[str, Any]] = {}
                fold_into(
                    inputs,
                    [
                        e
                        for s in range(start, min(start + 2000, args.subjects))
                        for e in _subject_events(s, args.labs, rng)
                    ],
                )
                await db.feature_inputs.insert_many(list(inputs.values()))
                records: list[tuple[str, bytes | None]] = [(k, encode_snapshot(d)) for k, d in inputs.items()]
                t = time.perf_counter()
                await publisher.publish_records(settings.topic(TOPIC), records)
                seconds += time.perf_counter() - t
                published += len(records)
    finally:
        await client.close()
    return published, seconds


def _stages(report: Any) -> str:
    return ", ".join(f"{k} {v:.2f} s" for k, v in report.seconds.items() if k != "total")


async def _rebuild(base: Settings, args: argparse.Namespace) -> None:
    from consumers.features.rebuild import rebuild_features

    settings = _settings(base, "rebuild", args.delay)
    await ensure_topics(settings)
    client = mongo_client(settings)
    try:
        if args.from_events:
            events, seconds = await _publish(settings, range(args.subjects), args.labs, seed=2)
            print(f"published {events} events ({args.subjects} subjects x {args.labs} labs + 1) in {seconds:.1f} s")
            report = await rebuild_features(settings, source="events")
            total = report.seconds["total"]
            print(
                f"rebuild --from-events: {report.subjects} subjects, {report.events} events in {total:.1f} s = "
                f"{report.subjects / total:.0f} subjects/s, {report.events / total:.0f} events/s "
                f"({_stages(report)}; replay = {report.events / report.seconds['replay']:.0f} events/s)"
            )
        # The lane's input documents and snapshot for the same events (folded here, untimed setup).
        snapshots, seconds = await _store_inputs(settings, args)
        print(
            f"setup: {snapshots} input documents stored and published to the snapshot topic ({seconds:.1f} s publishing)"
        )
        for run in range(1, args.repeat + 1):
            report = await rebuild_features(settings)
            total = report.seconds["total"]
            print(
                f"rebuild (default, source={report.source}) #{run}: {report.subjects} subjects from "
                f"{report.input_documents} input documents ({report.events} snapshot messages) in {total:.2f} s = "
                f"{report.subjects / total:.0f} subjects/s ({_stages(report)})"
            )
            for note in report.notes:
                print(f"  note: {note}")
            goal = report.subjects / total >= 5000
            print(f"goal rebuild >= 5,000 subjects/s by replay (snapshot): {'MET' if goal else 'NOT MET'}")
        if args.from_inputs:
            fast = await rebuild_features(settings, from_inputs=True)
            total = fast.seconds["total"]
            print(
                f"rebuild --from-inputs: {fast.subjects} subjects ({fast.events} input documents) in {total:.1f} s = "
                f"{fast.subjects / total:.0f} subjects/s ({_stages(fast)})"
            )
    finally:
        await client.drop_database(settings.mongo_database)
        await client.close()


async def _lane(base: Settings, args: argparse.Namespace) -> None:
    from streams.worker import build_lane_app

    settings = _settings(base, "lane", args.delay)
    await ensure_topics(settings)
    client = mongo_client(settings)
    db = mongo_database(client, settings)
    app = None
    try:
        events, seconds = await _publish(settings, range(args.lane_subjects), args.labs, seed=3)
        print(f"backlog: {events} events for {args.lane_subjects} subjects published in {seconds:.1f} s")
        app = build_lane_app(settings, "features")
        started = time.perf_counter()
        await app.start()
        while (
            await db.features.count_documents({}) < args.lane_subjects
            or await db.feature_inputs.count_documents({"pending": True}) > 0
        ):
            await asyncio.sleep(0.5)
        lane_s = time.perf_counter() - started
        print(
            f"features lane: {events} events folded, {args.lane_subjects} documents in {lane_s:.1f} s = {events / lane_s:.0f} events/s"
        )
        await _steady(settings, db, args)
    finally:
        if app is not None:
            await app.stop()
        await client.drop_database(settings.mongo_database)
        await client.close()


async def _steady(settings: Settings, db: Any, args: argparse.Namespace) -> None:
    rng = random.Random(4)
    delays: list[float] = []
    outstanding: dict[str, tuple[datetime, float]] = {}
    sent = 0
    done = False

    async def poll() -> None:
        from cohortstream.subjects import SubjectIdentifier, subject_id_for

        while not done or outstanding:
            if outstanding:
                ids = {subject_id_for([SubjectIdentifier.ehr("mimic-iv", s).key]): s for s in outstanding}
                for doc in await db.features.find({"_id": {"$in": list(ids)}}, {"as_of": 1}).to_list():
                    subject = ids[doc["_id"]]
                    emitted, acked = outstanding[subject]
                    if doc.get("as_of") is not None and doc["as_of"] >= emitted:
                        delays.append(time.perf_counter() - acked)
                        del outstanding[subject]
            await asyncio.sleep(0.05)

    poller = asyncio.create_task(poll())
    async with EventPublisher(settings) as publisher:
        started = time.perf_counter()
        tick = 0.1
        per_tick = max(1, int(args.rate * tick))
        next_probe = started
        row = 0
        while time.perf_counter() - started < args.duration:
            t = time.perf_counter()
            batch: list[tuple[Event, str]] = []
            for _ in range(per_tick):
                s = rng.randrange(args.lane_subjects)
                row += 1
                sid = str(30_000_000 + s)
                event = _lab(
                    sid, "steady", f"steady-{row}", T0 + timedelta(days=400, seconds=row), CODES[row % len(CODES)], 1.0
                )
                batch.append((event, f"mimic-iv/{sid}"))
            await publisher.publish_many(batch)
            sent += len(batch)
            # Probes: their subject's document must come to cover their emitted_at.
            if time.perf_counter() >= next_probe:
                next_probe += 1.0 / args.probes
                probe = batch[-1][0]
                assert isinstance(probe, EhrRecord)
                if probe.subject_id not in outstanding:
                    outstanding[probe.subject_id] = (probe.emitted_at, time.perf_counter())
            await asyncio.sleep(max(0.0, tick - (time.perf_counter() - t)))
        elapsed = time.perf_counter() - started
    done = True
    try:
        await asyncio.wait_for(poller, timeout=120)
    except TimeoutError:
        print(f"{len(outstanding)} probes never showed within 120 s")
    delays.sort()
    if delays:
        p50 = delays[len(delays) // 2]
        p95 = delays[min(len(delays) - 1, int(len(delays) * 0.95))]
        print(
            f"steady rate: {sent} events in {elapsed:.1f} s = {sent / elapsed:.0f} events/s, features_delay_s "
            f"{settings.features_delay_s}; delay from the last event (acked) to the updated vector over "
            f"{len(delays)} probes: p50 {p50:.2f} s, p95 {p95:.2f} s, max {delays[-1]:.2f} s"
        )
        print(f"goal delay p95 < 5 s: {'MET' if p95 < 5 else 'NOT MET'}")


async def _run(args: argparse.Namespace) -> None:
    env_file = os.environ.get("COHORTSTREAM_ENV_FILE")
    if not env_file:
        sys.exit("set COHORTSTREAM_ENV_FILE to the running stack's env file (deploy/stack.sh up writes it)")
    base = Settings.load(env_file)
    if args.in_memory:
        seconds, rate = _in_memory(min(args.subjects, 5000), args.labs)
        print(
            f"in memory (fold + compute, {min(args.subjects, 5000)} subjects): {seconds:.2f} s = {rate:.0f} subjects/s"
        )
    if args.rebuild:
        await _rebuild(base, args)
    if args.lane:
        await _lane(base, args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=50_000)
    parser.add_argument("--labs", type=int, default=100)
    parser.add_argument("--lane-subjects", type=int, default=5_000)
    parser.add_argument("--rate", type=float, default=2_000, help="events/s in the steady phase")
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--probes", type=float, default=5, help="timed subjects per second")
    parser.add_argument("--delay", type=float, default=2.0, help="COHORTSTREAM_FEATURES_DELAY_S")
    parser.add_argument("--no-in-memory", dest="in_memory", action="store_false")
    parser.add_argument("--no-rebuild", dest="rebuild", action="store_false")
    parser.add_argument("--no-lane", dest="lane", action="store_false")
    parser.add_argument(
        "--no-from-events",
        dest="from_events",
        action="store_false",
        help="skip publishing the events and the rebuild --from-events (the snapshot rebuild needs neither)",
    )
    parser.add_argument("--no-from-inputs", dest="from_inputs", action="store_false")
    parser.add_argument("--repeat", type=int, default=1, help="how many times the default (snapshot) rebuild runs")
    args = parser.parse_args(argv)
    print("$ .venv/bin/python -m bench.features " + shlex.join(sys.argv[1:] if argv is None else argv), flush=True)
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
