"""Orthanc change feed: does it keep up with Orthanc's own receiver?

Self-contained like ``bench/dicom_ingest.py``, whose helpers it imports (stack, child
processes, storescu, batches of 132 KB MR slices, consumer-group waits): starts its own
stack (Kafka, the MongoDB-wire server, Orthanc with ``TCP_NODELAY=1``) in a temporary
state dir on ports of its own (the first offset ≥ 300, in steps of 10, at which all are
free: another benchmark may hold dicom_ingest's), then ``cohortstream worker`` with the
three DICOM lanes and ``cohortstream orthanc feed``, on a topic prefix and database unique
to the run.

First, before the worker and the feed start, N slices per association count straight to
Orthanc: its storage rate with the machine to itself. Then, for each association count
(``--associations``, 1,4): another N generated MR slices go straight
to Orthanc's DICOM port (dcmtk ``TCP_NODELAY=1 storescu -R +sd +r``, K processes at once),
while the benchmark watches:

- **Orthanc stored**: its own poll of ``/changes`` every 20 ms; the first poll that lists
  an instance's ``NewInstance`` is the instance's "stored" time (later than the truth by
  at most one poll interval plus a request, so the lags below are *under*-estimated by
  at most that: ~25 ms);
- **feed**: the ``CreateTime`` Kafka gives each of the feed's events (the producer's clock:
  same machine);
- **views**: a poll of the ``instances`` view every 50 ms, for the instances Orthanc was
  seen storing and the views do not show yet; the first poll that shows the instance
  folded in by the views agent (``received_sha256``);
- **series completion**: ``DicomSeriesCompleted`` read from its topic as it arrives.

Figures: Orthanc's storage rate (N / storescu's run time), the feed's event rate (N / from
storescu's start to the feed's last event) and its ratio to Orthanc's (goal ≥ 0.9), the
p50/p95/max lag from "stored" to the feed's event and to the views (goal p95 < 2 s), and
series completion's p95 lag after the quiet period (completion seen − last instance
stored − ``--quiet-period``), then the CPU each process of the run used during the phase
per instance (Linux ``/proc``: Orthanc, Kafka, the MongoDB-wire server, each worker lane,
the feed, this benchmark with its storescu children) and the load average: on a shared
machine wall-clock lags are noisy, CPU per instance is what a change moves. Exit status 1
when an instance or a completion is missing.

Run: ``.venv/bin/python -m bench.orthanc_feed [--instances 2000] [--slices 100] [--rows 256]
[--cols 256] [--associations 1,4] [--quiet-period 1] [--page-size 1000] [--timeout 300]
[--keep-stack]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

import bench.dicom_ingest as ingest
from bench.dicom_ingest import (
    BenchError,
    Child,
    Stack,
    clean_environ,
    cohortstream_argv,
    log,
    percentile,
    port_free,
    storescu_parallel,
    wait_consumer_groups,
)
from cohortstream.codec import EventCodec
from cohortstream.events import DicomInstanceReceived, DicomSeriesCompleted
from cohortstream.kafka_security import aiokafka_security
from cohortstream.mongo import client_for_url
from cohortstream.orthanc_ids import orthanc_ids
from cohortstream.settings import Settings
from cohortstream.synthetic import mr_study, write_study

CHANGES_POLL_S = 0.02
VIEWS_POLL_S = 0.05
FEED_PORT = 45192


def pick_ports() -> int:
    """An offset ≥ 300 at which this run's ports are free, applied to dicom_ingest's table."""
    global FEED_PORT
    base = [*ingest.STACK_PORTS.values(), FEED_PORT]
    for offset in range(300, 1000, 10):
        if all(port_free(port + offset) for port in base):
            ingest.apply_port_offset(offset)
            FEED_PORT += offset
            return offset
    raise BenchError(f"no port offset from 300 to 990 leaves all of {base} free")


@dataclass
class Phase:
    associations: int
    parts: list[Path]
    sops: dict[str, str]
    """Orthanc instance id → SOP Instance UID."""
    series: dict[str, str]
    """SOP Instance UID → Series Instance UID."""
    stored: dict[str, float] = field(default_factory=dict)
    """Orthanc id → wall time first seen in /changes."""
    feed: dict[str, float] = field(default_factory=dict)
    """SOP → wall time of the feed's event (Kafka CreateTime)."""
    views: dict[str, float] = field(default_factory=dict)
    completed: dict[str, float] = field(default_factory=dict)
    """Series UID → wall time the completion was read."""
    start: float = 0.0
    end: float = 0.0


def make_phase(directory: Path, n: int, slices: int, rows: int, cols: int, seed: int, k: int) -> Phase:
    n_series = max(1, -(-n // slices))
    patient = f"FEED-BENCH-{seed}"
    datasets = mr_study(n_series=n_series, slices=min(slices, n), rows=rows, cols=cols, seed=seed, patient_id=patient)[
        :n
    ]
    parts = [directory / f"part-{i}" for i in range(k)]
    for i, part in enumerate(parts):
        write_study(datasets[i * n // k : (i + 1) * n // k], part)
    sops, series = {}, {}
    for ds in datasets:
        ids = orthanc_ids(patient, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        sops[ids.instance] = str(ds.SOPInstanceUID)
        series[str(ds.SOPInstanceUID)] = str(ds.SeriesInstanceUID)
    return Phase(k, parts, sops, series)


async def watch_changes(orthanc: httpx.AsyncClient, phase: Phase, since: int, done: asyncio.Event) -> None:
    while not done.is_set():
        body = (await orthanc.get("/changes", params={"since": since, "limit": 10000})).json()
        now = time.time()
        for change in body.get("Changes", []):
            since = max(since, int(change["Seq"]))
            if change.get("ChangeType") == "NewInstance" and change["ID"] in phase.sops:
                phase.stored.setdefault(change["ID"], now)
        if len(phase.stored) == len(phase.sops):
            return
        await asyncio.sleep(CHANGES_POLL_S)  # poll interval


async def watch_views(instances: Any, phase: Phase, done: asyncio.Event) -> None:
    # Only instances Orthanc was seen storing are asked for (the views cannot hold one
    # before the feed read it from /changes, which the stored-watcher polls every 20 ms):
    # asking for all N every 50 ms cost the MongoDB-wire server ~10 ms of CPU per 1,000
    # ids, ~0.3 ms per instance at four associations, as much as the views agent itself
    # on these two shared cores.
    while len(phase.views) < len(phase.sops) and not done.is_set():
        pending = [phase.sops[i] for i in list(phase.stored) if phase.sops[i] not in phase.views]
        if pending:
            found = instances.find({"_id": {"$in": pending}, "received_sha256": {"$exists": True}}, {"_id": 1})
            now = time.time()
            async for doc in found:
                phase.views.setdefault(doc["_id"], now)
        await asyncio.sleep(VIEWS_POLL_S)  # poll interval


async def watch_topics(kafka: Settings, prefix: str, phase: Phase, done: asyncio.Event) -> None:
    codec = EventCodec()
    wanted_series = set(phase.series.values())
    consumer = AIOKafkaConsumer(
        f"{prefix}dicom.instance-received",
        f"{prefix}dicom.series-completed",
        bootstrap_servers=kafka.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        **aiokafka_security(kafka),
    )
    await consumer.start()
    try:
        while not done.is_set() and (len(phase.feed) < len(phase.sops) or not wanted_series <= set(phase.completed)):
            batches = await consumer.getmany(timeout_ms=200)
            now = time.time()
            for records in batches.values():
                for record in records:
                    event = codec.decode_event(record.value or b"")
                    if isinstance(event, DicomInstanceReceived) and event.sop_instance_uid in phase.series:
                        phase.feed.setdefault(event.sop_instance_uid, record.timestamp / 1000)
                    elif isinstance(event, DicomSeriesCompleted) and event.series_instance_uid in wanted_series:
                        phase.completed.setdefault(event.series_instance_uid, now)
    finally:
        await consumer.stop()


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (Linux ``/proc``), None when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return None


def _role(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    if "worker" in cmdline and cmdline.count("--lane") == 1:
        return "lane " + cmdline[cmdline.index("--lane") + 1]
    if "worker" in cmdline:
        return "worker supervisor"
    if "orthanc" in cmdline and "feed" in cmdline:
        return "feed"
    if "kafka.Kafka" in text:
        return "Kafka"
    if "secantusd" in text:
        return "MongoDB-wire"
    if "Orthanc" in Path(cmdline[0]).name:
        return "Orthanc"
    return Path(cmdline[0]).name


def cpu_by_role(stack_dir: Path, children: dict[str, Child]) -> dict[str, float]:
    """CPU seconds so far of this run's processes, summed by role: the stack's services
    (found by their state directory on the command line), the worker's lanes and the feed,
    and this benchmark (with its finished storescu children). Linux only (empty elsewhere)."""
    if not Path("/proc/self/stat").exists():
        return {}
    parents: dict[int, int] = {}
    commands: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            commands[int(entry.name)] = (entry / "cmdline").read_text().split("\0")
        except (OSError, IndexError, ValueError):
            continue
    ours = {pid for pid, cmd in commands.items() if str(stack_dir) in " ".join(cmd)}
    roots = [c.proc.pid for c in children.values() if c.proc is not None and c.proc.poll() is None]
    while roots:  # the worker's lanes are its children
        pid = roots.pop()
        ours.add(pid)
        roots += [child for child, parent in parents.items() if parent == pid and child not in ours]
    totals: dict[str, float] = {}
    for pid in ours:
        cpu = _proc_cpu_s(pid)
        if cpu is not None and commands.get(pid):
            role = _role(commands[pid])
            totals[role] = totals.get(role, 0.0) + cpu
    times = os.times()
    totals["benchmark + storescu"] = times.user + times.system + times.children_user + times.children_system
    return totals


def cpu_line(before: dict[str, float], after: dict[str, float], n: int) -> str:
    used = {role: after[role] - before.get(role, 0.0) for role in after if role in before}
    parts = [f"{role} {seconds / n * 1000:.2f}" for role, seconds in sorted(used.items(), key=lambda x: -x[1])]
    return f"  CPU ms per instance (total {sum(used.values()) / n * 1000:.2f}): " + ", ".join(parts)


def stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {percentile(values, 0.5):.3f} s, p95 {percentile(values, 0.95):.3f} s, max {max(values):.3f} s"


def report(phase: Phase, quiet: float) -> tuple[list[str], bool]:
    n = len(phase.sops)
    stored = {phase.sops[i]: t for i, t in phase.stored.items()}
    feed_lag = [phase.feed[s] - stored[s] for s in stored if s in phase.feed]
    views_lag = [phase.views[s] - stored[s] for s in stored if s in phase.views]
    last_stored: dict[str, float] = {}
    for sop, t in stored.items():
        series = phase.series[sop]
        last_stored[series] = max(t, last_stored.get(series, 0.0))
    completion_lag = [phase.completed[s] - last_stored[s] - quiet for s in phase.completed if s in last_stored]
    storage_rate = n / (phase.end - phase.start)
    feed_end = max(phase.feed.values(), default=float("nan"))
    feed_rate = len(phase.feed) / (feed_end - phase.start) if phase.feed else float("nan")
    views_end = max(phase.views.values(), default=float("nan"))
    views_rate = len(phase.views) / (views_end - phase.start) if phase.views else float("nan")
    ok = len(phase.feed) == n and len(phase.views) == n and set(phase.completed) == set(phase.series.values())
    lines = [
        f"{phase.associations} association(s), {n} instances:",
        f"  Orthanc stored (storescu run time {phase.end - phase.start:.2f} s): {storage_rate:.0f} inst/s",
        f"  feed events: {len(phase.feed)}/{n}, {feed_rate:.0f} inst/s from the first C-STORE = "
        f"{feed_rate / storage_rate:.2f}x Orthanc's storage rate (goal >= 0.9)",
        f"  views: {len(phase.views)}/{n}, {views_rate:.0f} inst/s = {views_rate / storage_rate:.2f}x",
        f"  lag stored -> feed event: {stats(feed_lag)}",
        f"  lag stored -> views:      {stats(views_lag)}  (goal p95 < 2 s)",
        f"  series completion: {len(phase.completed)}/{len(set(phase.series.values()))} series, lag after the "
        f"{quiet:g} s quiet period: {stats(completion_lag)}",
    ]
    return lines, ok


async def measure(args: argparse.Namespace, work: Path, stack: Stack, children: dict[str, Child]) -> int:
    env_file = stack.state_dir / "stack.env"
    run_id = uuid.uuid4().hex[:8]
    prefix = f"feedbench-{run_id}."
    settings_env = clean_environ()
    settings_env.update(
        {
            "COHORTSTREAM_TOPIC_PREFIX": prefix,
            "COHORTSTREAM_APP_ID": f"feedbench-{run_id}",
            "COHORTSTREAM_MONGO_DATABASE": f"feedbench_{run_id}",
            "COHORTSTREAM_DATA_DIR": str(work / "app"),
            "COHORTSTREAM_LOG_LEVEL": "WARNING",
            "COHORTSTREAM_TOPIC_PARTITIONS": str(args.partitions),
            "COHORTSTREAM_WORKER_METRICS_PORT": "0",
            "COHORTSTREAM_SERIES_QUIET_PERIOD_S": str(args.quiet_period),
            "COHORTSTREAM_ORTHANC_FEED_START": "now",
            "COHORTSTREAM_ORTHANC_FEED_PAGE_SIZE": str(args.page_size),
            "COHORTSTREAM_ORTHANC_FEED_PORT": str(FEED_PORT),
        }
    )
    phases = []
    for i, k in enumerate(args.associations):
        phases.append(make_phase(work / f"data-{k}", args.instances, args.slices, args.rows, args.cols, 5000 + i, k))
    result = await asyncio.to_thread(
        subprocess.run,
        cohortstream_argv(env_file, "topics", "create"),
        env=settings_env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise BenchError(f"topics create failed: {result.stdout}{result.stderr}")
    baselines = [
        make_phase(work / f"alone-{k}", args.instances, args.slices, args.rows, args.cols, 6000 + i, k)
        for i, k in enumerate(args.associations)
    ]
    orthanc_aet = stack.env.get("COHORTSTREAM_ORTHANC_AET", "ORTHANC")
    orthanc_port = int(stack.env["COHORTSTREAM_ORTHANC_DICOM_PORT"])
    alone_rates: dict[int, float] = {}
    for base in baselines:  # Orthanc with the cores to itself: no worker, no feed yet
        start_m, end_m = await storescu_parallel(orthanc_aet, orthanc_port, base.parts, work / "storescu.log")
        alone_rates[base.associations] = len(base.sops) / (end_m - start_m)
        log(f"Orthanc alone, {base.associations} association(s): {alone_rates[base.associations]:.0f} inst/s")
    lanes = ("dicom-archive", "dicom-views", "series-completion")
    worker = Child(
        "worker",
        cohortstream_argv(env_file, "worker", *[a for lane in lanes for a in ("--lane", lane)]),
        settings_env,
        work / "worker.log",
    )
    feed = Child("feed", cohortstream_argv(env_file, "orthanc", "feed"), settings_env, work / "feed.log")
    children.update(worker=worker, feed=feed)
    worker.start()
    feed.start()
    kafka = Settings.load(stack.state_dir / "stack.env")
    await wait_consumer_groups(kafka, [f"feedbench-{run_id}-{lane}" for lane in lanes], [worker], 180)
    async with httpx.AsyncClient(timeout=5) as client:
        deadline = time.monotonic() + 120
        while True:
            feed.check_alive()
            try:
                if (await client.get(f"http://127.0.0.1:{FEED_PORT}/healthz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise BenchError("the feed's /healthz never answered 200")
            await asyncio.sleep(0.2)
    log("worker lanes and feed ready")

    auth = (stack.env["COHORTSTREAM_ORTHANC_USERNAME"], stack.env["COHORTSTREAM_ORTHANC_PASSWORD"])
    mongo = client_for_url(stack.env["COHORTSTREAM_MONGO_URL"])
    instances = mongo[settings_env["COHORTSTREAM_MONGO_DATABASE"]]["instances"]
    lines: list[str] = [
        f"Orthanc alone (no worker, no feed), {k} association(s): {rate:.0f} inst/s" for k, rate in alone_rates.items()
    ]
    failed = False
    async with httpx.AsyncClient(base_url=stack.env["COHORTSTREAM_ORTHANC_URL"], auth=auth, timeout=30) as orthanc:
        for phase in phases:
            since = int((await orthanc.get("/changes", params={"last": ""})).json()["Last"])
            done = asyncio.Event()
            watchers = [
                asyncio.create_task(watch_changes(orthanc, phase, since, done)),
                asyncio.create_task(watch_views(instances, phase, done)),
                asyncio.create_task(watch_topics(kafka, prefix, phase, done)),
            ]
            log(f"{phase.associations} association(s): {len(phase.sops)} instances straight to Orthanc")
            cpu_before = cpu_by_role(stack.state_dir, children)
            load_before = os.getloadavg()[0]
            start_m, end_m = await storescu_parallel(orthanc_aet, orthanc_port, phase.parts, work / "storescu.log")
            phase.start = time.time() - (time.monotonic() - start_m)
            phase.end = time.time() - (time.monotonic() - end_m)
            try:
                await asyncio.wait_for(asyncio.gather(*watchers), args.timeout)
            except TimeoutError:
                log(f"WARNING: not everything arrived within {args.timeout} s")
            finally:
                done.set()
                for task in watchers:
                    task.cancel()
            worker.check_alive()
            feed.check_alive()
            phase_lines, ok = report(phase, args.quiet_period)
            phase_lines.append(cpu_line(cpu_before, cpu_by_role(stack.state_dir, children), len(phase.sops)))
            phase_lines.append(
                f"  load average (1 min) at the start / end: {load_before:.2f} / {os.getloadavg()[0]:.2f}"
            )
            failed |= not ok
            lines += phase_lines
            log("\n".join(phase_lines))
        async with httpx.AsyncClient(timeout=5) as client:
            health = (await client.get(f"http://127.0.0.1:{FEED_PORT}/healthz")).json()
    await mongo.close()
    print("\n".join(lines))
    print(f"feed /healthz at the end: {health}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--cols", type=int, default=256)
    parser.add_argument("--associations", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    parser.add_argument("--quiet-period", type=float, default=1.0)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--keep-stack", action="store_true")
    args = parser.parse_args(argv)
    print(
        f"$ {shlex.join([sys.executable, '-m', 'bench.orthanc_feed', *(argv if argv is not None else sys.argv[1:])])}"
    )
    offset = pick_ports()
    log(
        f"port offset {offset}: Orthanc HTTP {ingest.STACK_PORTS['COHORTSTREAM_STACK_ORTHANC_HTTP_PORT']}, feed {FEED_PORT}"
    )
    work = Path(tempfile.mkdtemp(prefix="cohortstream-feedbench-"))
    stack = Stack(work / "stack", work / "stack.log")
    children: dict[str, Child] = {}
    try:
        stack.up()
        return asyncio.run(measure(args, work, stack, children))
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        for child in children.values():
            child.stop()
        if not args.keep_stack:
            stack.down()


if __name__ == "__main__":
    sys.exit(main())
