"""DICOM ingest: our C-STORE listener → Kafka → Orthanc + MongoDB views, against storescu
straight into Orthanc and into a bare pynetdicom SCP, at 1 and 4 associations, in one run.
Prints figures and checks.

Self-contained: starts its own stack (Kafka, the MongoDB-wire server, Orthanc via ``deploy/stack.sh`` in
a temporary state dir, ports 45092/45093/45017/45042/45242, all shifted by the first
multiple of 10 at which they and the SCP ports are free), creates the topics with a
prefix unique to the run and ``--partitions`` partitions (12), starts ``cohortstream
dicom-scp`` (port 45112; for the alone phases with more listener processes, one more
listener each from port 45116), the bare SCPs ``bench/bare_scp.py`` (ports 45113-45115) and
``cohortstream worker`` processes as subprocesses, and waits until they are ready
(C-ECHO with dcmtk's ``echoscu``; the workers' DICOM consumer groups Stable with one
member per worker process, then a warm-up batch through the whole pipeline).

Every send is dcmtk ``TCP_NODELAY=1 storescu -R +sd +r``; K associations are K storescu
processes started at once, each sending 1/K of the phase's instances (whole series when
they divide evenly). For each association count (``--associations``, 1,4), the receiver
phases (1-3 below: no worker runs yet) are **interleaved**: ``--rounds`` rounds (3), each
sending 1/rounds of every receiver phase's instances in turn, and a phase's time is the
sum of its rounds; each round starts with a different receiver. Before them the Kafka
broker is warmed up: acks=all records one at a time, at least 20,000, until the round
trip stops improving (a JVM broker's first tens of thousands of requests run before its
JIT compiled them, and a deployed broker is long past that). On a shared 2-core VM whose
speed drifts by a third within minutes, phases run one after the other compared different
machines (the same listener measured 0.92x and 0.70x of the bare SCP in two such runs on
2026-12-01).

1. **direct** — N generated MR slices (``cohortstream.synthetic.mr_study``) straight to
   Orthanc's DICOM port; Orthanc answers each C-STORE after storing it, so storescu's
   run time is the baseline.
2. **bare** — the same files to ``bench/bare_scp.py``: pynetdicom receiving to disk as our
   listener does, then one copy + fsync per instance and nothing else (the ceiling of a
   Python listener).
2b. **bare+kafka** — the same files to a second ``bench/bare_scp.py`` that, after the
   fsync, also waits for Kafka's ``acks=all`` on one 600-byte record per instance (topic
   ``<prefix>bench.bare-kafka``; librdkafka configured as our listener's producer): the
   ceiling of a Python listener that keeps design
   decision 3 (success only after the bytes are on disk and Kafka acknowledged), done in
   sequence, still without parsing or staging.
2c. **bare+prompt** — the same files to a third ``bench/bare_scp.py --prompt-dul``: the
   bare SCP with the listener's event-driven upper layer and reactor
   (``producers/dicom/prompt_dul.py``, the listener's default gate) instead of pynetdicom's
   1 ms polling loops, so the report can separate what that change alone gives from the
   rest of the listener.
3. **alone** — (before any worker starts) another N to our listener with no worker
   process running: what the listener acknowledges when it has the cores to itself (the
   workers drain that backlog when they start, before the next phase). At the largest
   association count once per ``--listener-processes`` count.
4. **listener** — another N to our listener. Measured from the first storescu start:
   until the last storescu exits (every C-STORE acknowledged, i.e. staged + Kafka
   acks=all), until Orthanc's ``CountInstances`` grew by N, until all N ``instances`` docs
   exist in MongoDB, and until all N carry ``in_orthanc: true``. Pollers run every 50 ms;
   the one for ``in_orthanc`` asks only for the series not yet complete (asking for every
   archived instance each time cost 2-3 ms of CPU per instance on the shared cores).
   Per-instance end-to-end latency = the first poll that saw the instance doc with
   ``in_orthanc: true`` minus its ``received_at`` (the listener's clock, same machine).
   Also: the CPU each process spent per instance over the phase (the listener, each
   worker lane, Kafka, the MongoDB-wire server, Orthanc, storescu, the benchmark itself;
   ``bench/cpu_accounting.py``), and how busy that kept the cores.
   At the largest association count this phase runs once per ``--workers`` count
   (worker processes started or stopped in between; each has its own data dir and no
   metrics port, and all join the same consumer groups), then once more per further
   ``--listener-processes`` count (the listener restarted with
   ``COHORTSTREAM_DICOM_SCP_PROCESSES``: that many processes on one port, SO_REUSEPORT),
   then once more per further ``--listener-nice`` value (the listener started under
   ``nice -n N``, as ``make up LISTENER_NICE=N`` starts it).

Before the first phase every receiver (Orthanc, the listeners and the three bare SCPs)
gets one warm-up send of the same 100 instances over one association, so no phase
measures a cold process or a broker that has not yet served a produce request (the
listeners' events for them are archived with the alone phases' backlog; they count once
in the totals).

Each figure is printed with its ratio to the bare SCP and to Orthanc direct at the same
association count, plus visible/acknowledged ratios and the scale-out per worker count.
Then the checks (counts per phase, totals, staging and quarantine empty, no ERROR lines in
the logs); the exit status is 1 when one fails.

Run: ``.venv/bin/python -m bench.dicom_ingest [--instances 400] [--rounds 3] [--slices 25] [--rows 256]
[--cols 256] [--associations 1,4] [--workers 1,2] [--listener-processes 1,2] [--listener-nice 0,10]
[--partitions 12] [--keep-stack]``.
Needs dcmtk (``/usr/bin/storescu``, ``/usr/bin/echoscu``) and the stack's installs
(``deploy/stack.sh install``).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pymongo.errors import PyMongoError

from bench import cpu_accounting
from cohortstream.kafka_security import aiokafka_security
from cohortstream.mongo import client_for_url
from cohortstream.settings import Settings
from cohortstream.synthetic import mr_study, write_study

REPO = Path(__file__).resolve().parents[1]
STACK_SH = REPO / "deploy" / "stack.sh"
STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"

STACK_PORTS = {
    "COHORTSTREAM_STACK_KAFKA_PORT": 45092,
    "COHORTSTREAM_STACK_KAFKA_CONTROLLER_PORT": 45093,
    "COHORTSTREAM_STACK_MONGO_PORT": 45017,
    "COHORTSTREAM_STACK_ORTHANC_HTTP_PORT": 45042,
    "COHORTSTREAM_STACK_ORTHANC_DICOM_PORT": 45242,
}
STACK_SERVICES = {"kafka": "kafka", "mongo": "MongoDB-wire server", "orthanc": "orthanc"}
"""The services the benchmark's stack runs (deploy/stack.sh name → its label in the CPU
accounting)."""
SCP_PORT = 45112
SCP_AET = "COHORTSTREAM"
BARE_PORT = 45113
BARE_AET = "BARE"
BARE_KAFKA_PORT = 45114
BARE_KAFKA_AET = "BAREKAFKA"
BARE_PROMPT_PORT = 45115
BARE_PROMPT_AET = "BAREPROMPT"
EXTRA_LISTENER_PORT = 45116
"""The alone phases' listeners with more processes: this port, the next, ..."""
WARMUP_INSTANCES = 8
RECEIVER_WARMUP_INSTANCES = 100
BROKER_WARMUP_BLOCK = 2000
BROKER_WARMUP_MIN_RECORDS = 20000
"""A fresh broker's round trip still fell past 10,000 records (0.34 ms in the first 2,000,
0.17 after 8,000, 0.12-0.14 after 16,000, 2026-12-01); the plateau rule alone stopped
at 6,000-8,000 in half the runs of that day, on a noisy block."""
BROKER_WARMUP_MAX_RECORDS = 40000
POLL_S = 0.05
CHECK_TIMEOUT_S = 10.0

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0


def port_free(port: int) -> bool:
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((host, port))
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno != 98:  # no IPv6 here: only EADDRINUSE counts
                continue
            return False
    return True


def apply_port_offset(requested: int | None) -> int:
    """Shift every port of the run by an offset: ``requested``, or the first multiple of 10
    up to 500 at which all of them are free (another developer's benchmark may hold the
    defaults)."""
    global SCP_PORT, BARE_PORT, BARE_KAFKA_PORT, BARE_PROMPT_PORT, EXTRA_LISTENER_PORT
    base = [
        *STACK_PORTS.values(),
        *(SCP_PORT, BARE_PORT, BARE_KAFKA_PORT, BARE_PROMPT_PORT, EXTRA_LISTENER_PORT, EXTRA_LISTENER_PORT + 1),
    ]
    candidates = [requested] if requested is not None else range(0, 510, 10)
    for offset in candidates:
        if requested is not None or all(port_free(port + offset) for port in base):
            for key in STACK_PORTS:
                STACK_PORTS[key] += offset
            SCP_PORT += offset
            BARE_PORT += offset
            BARE_KAFKA_PORT += offset
            BARE_PROMPT_PORT += offset
            EXTRA_LISTENER_PORT += offset
            return offset
    raise BenchError(f"no port offset up to 500 leaves all of {base} free")


class BenchError(RuntimeError):
    """Something did not become ready or did not arrive in time."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text[-lines:]) or "(empty)"


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def clean_environ() -> dict[str, str]:
    """The inherited environment without any COHORTSTREAM_* setting (self-contained run)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COHORTSTREAM_")}


# --------------------------------------------------------------------------- stack


@dataclass
class Stack:
    state_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def _environ(self) -> dict[str, str]:
        env = clean_environ()
        env["COHORTSTREAM_STACK_DIR"] = str(self.state_dir)
        env["COHORTSTREAM_STACK_SERVICES"] = " ".join(STACK_SERVICES)
        env.update({k: str(v) for k, v in STACK_PORTS.items()})
        if "COHORTSTREAM_CACHE_DIR" in os.environ:
            env["COHORTSTREAM_CACHE_DIR"] = os.environ["COHORTSTREAM_CACHE_DIR"]
        return env

    def up(self) -> None:
        log(f"stack up in {self.state_dir} (log {self.log_path})")
        with self.log_path.open("ab") as out:
            rc = subprocess.run(
                [str(STACK_SH), "up"], env=self._environ(), stdout=out, stderr=subprocess.STDOUT, timeout=600
            ).returncode
        if rc != 0:
            raise BenchError(f"deploy/stack.sh up failed (exit {rc}); last lines:\n{tail(self.log_path, 60)}")
        self.env = read_env_file(self.state_dir / "stack.env")

    def service_pid(self, service: str) -> int:
        """The pid deploy/stack.sh recorded for ``service``."""
        return int((self.state_dir / service / "service.pid").read_text().strip())

    def down(self) -> None:
        log("stack down")
        with self.log_path.open("ab") as out:
            rc = subprocess.run(
                [str(STACK_SH), "down"], env=self._environ(), stdout=out, stderr=subprocess.STDOUT, timeout=300
            ).returncode
        if rc != 0:
            log(f"WARNING: deploy/stack.sh down exited {rc}; last lines:\n{tail(self.log_path, 30)}")


# --------------------------------------------------------------------------- our processes


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log(f"starting {self.name}: {' '.join(self.argv)} (log {self.log_path})")
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError(f"{self.name} was never started")
        return self.proc.pid

    def check_alive(self) -> None:
        if not self.alive():
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"{self.name} exited (status {code}); last lines of its log:\n{tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        log(f"stopping {self.name} (pid {self.proc.pid})")
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log(f"WARNING: {self.name} ignored SIGTERM for {STOP_TIMEOUT_S:.0f}s; killing it")
            self.proc.kill()
            self.proc.wait(timeout=10)


def cohortstream_argv(env_file: Path, *command: str) -> list[str]:
    script = Path(sys.executable).parent / "cohortstream"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "cohortstream.cli"]
    return [*base, "--env-file", str(env_file), *command]


LISTENER_GROUP_READY = "dicom listener ready: every listener process is accepting associations"


def wait_listener(listener: Child, aet: str, port: int, timeout_s: float, processes: int = 1) -> float:
    """C-ECHO the listener until it answers (with several processes, after all of them
    said they are ready: ``producers.dicom.processes.READY_LINE``); returns the seconds."""
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < timeout_s:
        listener.check_alive()
        if processes > 1 and LISTENER_GROUP_READY not in listener.log_path.read_text(errors="replace"):
            last = "not every listener process is ready yet"
            time.sleep(0.2)
            continue
        try:
            result = subprocess.run(
                [ECHOSCU, "-to", "5", "-aec", aet, "127.0.0.1", str(port)],
                capture_output=True,
                text=True,
                timeout=15,
            )
            if result.returncode == 0:
                return time.monotonic() - start
            last = (result.stdout + result.stderr).strip()
        except subprocess.TimeoutExpired:
            last = "echoscu timed out"
        time.sleep(0.5)
    raise BenchError(
        f"listener did not answer C-ECHO within {timeout_s:.0f}s (last: {last}); "
        f"last lines of its log:\n{tail(listener.log_path)}"
    )


async def wait_consumer_groups(
    kafka: Settings, groups: list[str], workers: list[Child], timeout_s: float, members: int = 1
) -> float:
    """Wait until each of the workers' consumer groups (one per lane) is Stable with
    ``members`` members (one per worker process)."""
    waited = 0.0
    for group in groups:
        waited += await wait_consumer_group(kafka, group, workers, max(1.0, timeout_s - waited), members)
    return waited


async def wait_consumer_group(
    kafka: Settings, group: str, workers: list[Child], timeout_s: float, members: int = 1
) -> float:
    """Wait until the workers' consumer group is Stable with ``members`` members; returns seconds."""
    from aiokafka.admin import AIOKafkaAdminClient

    start = time.monotonic()
    # The stack's Kafka settings (its stack.env): plaintext, or SASL_SSL in secure mode.
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka.kafka_bootstrap_servers, client_id="cohortstream-bench", **aiokafka_security(kafka)
    )
    await admin.start()
    state = "unknown"
    try:
        while time.monotonic() - start < timeout_s:
            for worker in workers:
                worker.check_alive()
            try:
                for response in await admin.describe_consumer_groups([group]):
                    for entry in response.groups:
                        # (error_code, group_id, state, protocol_type, protocol, members, ...)
                        state = f"{entry[2]} with {len(entry[5])} member(s)"
                        if entry[2] == "Stable" and len(entry[5]) == members:
                            return time.monotonic() - start
            except Exception as exc:
                state = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    raise BenchError(
        f"worker consumer group {group!r} not Stable with {members} member(s) within {timeout_s:.0f}s "
        f"(last: {state}); last lines of the workers' logs:"
        + "".join(f"\n--- {w.name} ---\n{tail(w.log_path)}" for w in workers)
    )


# --------------------------------------------------------------------------- data


@dataclass
class Batch:
    directory: Path
    parts: list[Path]
    """One directory per association; each holds whole series (a contiguous share of them)."""
    uids: list[str]
    patient_id: str
    file_sizes: list[int]
    series: dict[str, set[str]]
    """SeriesInstanceUID → its SOP instance UIDs."""


def broker_warmup(bootstrap: str, topic: str) -> None:
    """Send acks=all records one at a time (each waited for, as a C-STORE does) in blocks
    of ``BROKER_WARMUP_BLOCK``: at least ``BROKER_WARMUP_MIN_RECORDS``, then until a block's
    median round trip is no more than 5% below the best block before it (at most
    ``BROKER_WARMUP_MAX_RECORDS``), and log the medians."""
    from bench.bare_scp import KafkaAck

    ack = KafkaAck(bootstrap, topic)
    medians: list[float] = []
    try:
        sent = 0
        while sent < BROKER_WARMUP_MAX_RECORDS:
            took: list[float] = []
            for _ in range(BROKER_WARMUP_BLOCK):
                t0 = time.perf_counter()
                ack.send(f"warmup-{sent}")
                took.append(time.perf_counter() - t0)
                sent += 1
            medians.append(statistics.median(took))
            if sent >= BROKER_WARMUP_MIN_RECORDS and medians[-1] > 0.95 * min(medians[:-1]):
                break
    finally:
        ack.stop()
    log(
        f"broker warm-up: {sent} acks=all records one at a time; median round trip per "
        f"{BROKER_WARMUP_BLOCK}: " + ", ".join(f"{m * 1000:.2f}" for m in medians) + " ms"
    )


def make_batch(
    directory: Path,
    count: int,
    slices: int,
    rows: int,
    cols: int,
    seed: int,
    patient_id: str,
    parts: int = 1,
    single_slices: bool = False,
) -> Batch:
    """``count`` MR slices in ``parts`` directories (part ``i`` gets instances
    ``i*count//parts`` .. ``(i+1)*count//parts - 1``, so whole series when the series divide
    evenly). ``single_slices``: ``count`` series of one slice each (spreads over partitions)."""
    if single_slices:
        datasets = mr_study(n_series=count, slices=1, rows=rows, cols=cols, seed=seed, patient_id=patient_id)
    else:
        n_series = max(1, math.ceil(count / slices))
        datasets = mr_study(
            n_series=n_series, slices=min(slices, count), rows=rows, cols=cols, seed=seed, patient_id=patient_id
        )
    datasets = datasets[:count]
    part_dirs = [directory / f"part-{i}" for i in range(parts)]
    paths: list[Path] = []
    for i, part in enumerate(part_dirs):
        paths += write_study(datasets[i * count // parts : (i + 1) * count // parts], part)
    series: dict[str, set[str]] = {}
    for ds in datasets:
        series.setdefault(str(ds.SeriesInstanceUID), set()).add(str(ds.SOPInstanceUID))
    return Batch(
        directory=directory,
        parts=part_dirs,
        uids=[str(ds.SOPInstanceUID) for ds in datasets],
        patient_id=patient_id,
        file_sizes=[p.stat().st_size for p in paths],
        series=series,
    )


def storescu_env() -> dict[str, str]:
    """dcmtk leaves Nagle's algorithm on unless TCP_NODELAY=1 is in its environment
    (about 40 ms per C-STORE otherwise; /work/shared/DESIGN.md "External clients")."""
    return {**os.environ, "TCP_NODELAY": "1"}


async def storescu_parallel(aet: str, port: int, directories: list[Path], log_path: Path) -> tuple[float, float]:
    """One storescu process (one association) per directory, all at once; returns (the
    earliest start, the latest exit), monotonic."""
    results = await asyncio.gather(*(storescu(aet, port, d, log_path) for d in directories))
    return min(start for start, _ in results), max(end for _, end in results)


async def storescu(aet: str, port: int, directory: Path, log_path: Path) -> tuple[float, float]:
    """Send every file under ``directory``; returns (monotonic start, monotonic end)."""
    argv = [STORESCU, "-R", "+sd", "+r", "-aec", aet, "127.0.0.1", str(port), str(directory)]
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=storescu_env()
    )
    output, _ = await proc.communicate()
    end = time.monotonic()
    text = output.decode(errors="replace")
    with log_path.open("a") as fh:
        fh.write(f"$ TCP_NODELAY=1 {' '.join(argv)}\n{text}(exit {proc.returncode}, {end - start:.3f}s)\n")
    if proc.returncode != 0:
        raise BenchError(f"storescu to {aet}@{port} exited {proc.returncode}:\n{text[-3000:]}")
    if text.strip():
        log(f"storescu to {aet}@{port} printed (see {log_path}):\n{text.strip()[-1500:]}")
    return start, end


# --------------------------------------------------------------------------- polling


class Orthanc:
    def __init__(self, env: dict[str, str]) -> None:
        self.client = httpx.AsyncClient(
            base_url=env["COHORTSTREAM_ORTHANC_URL"],
            auth=(env["COHORTSTREAM_ORTHANC_USERNAME"], env["COHORTSTREAM_ORTHANC_PASSWORD"]),
            timeout=30.0,
        )

    async def count_instances(self) -> int:
        response = await self.client.get("/statistics")
        response.raise_for_status()
        return int(response.json()["CountInstances"])

    async def close(self) -> None:
        await self.client.aclose()


async def bounded(operation: Awaitable[Any], what: str, problems: dict[str, str]) -> Any:
    """``operation`` with a time limit; a failure or timeout is noted in ``problems`` and
    gives None (a hung service must not hang the benchmark)."""
    try:
        return await asyncio.wait_for(operation, CHECK_TIMEOUT_S)
    except TimeoutError:
        problems[what] = f"no answer within {CHECK_TIMEOUT_S:.0f}s"
    except (PyMongoError, httpx.HTTPError, OSError) as exc:
        problems[what] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


async def poll_until(
    check: Callable[[], Awaitable[bool]],
    what: str,
    problems: dict[str, str],
    give_up: asyncio.Event,
    intervals: list[float] | None = None,
) -> float | None:
    """Call ``check`` every POLL_S until it returns True (the monotonic time it did), or
    None once ``give_up`` is set."""
    last = None
    while not give_up.is_set():
        tick = time.monotonic()
        if last is not None and intervals is not None:
            intervals.append(tick - last)
        last = tick
        if await bounded(check(), what, problems):
            problems.pop(what, None)
            return time.monotonic()
        await asyncio.sleep(max(0.0, POLL_S - (time.monotonic() - tick)))
    return None


@dataclass
class PipelineResult:
    start: float
    acked: float
    orthanc: float | None
    docs: float | None
    views: float | None
    latencies_s: list[float]
    missing_views: list[str]
    orthanc_delta: int
    docs_count: int
    poll_intervals: list[float]
    outcome: str
    """``complete``, ``stalled`` (no progress for stall_s after storescu ended) or ``timeout``."""
    problems: dict[str, str]


async def run_pipeline(
    batch: Batch,
    orthanc: Orthanc,
    instances: Any,
    timeout_s: float,
    stall_s: float,
    children: list[Child],
    out_log: Path,
) -> PipelineResult:
    expected = set(batch.uids)
    n = len(expected)
    base = await orthanc.count_instances()
    state: dict[str, Any] = {"orthanc_delta": 0, "docs": 0, "outcome": "complete"}
    problems: dict[str, str] = {}
    seen_wall: dict[str, float] = {}  # uid -> wall time of the first poll that saw it complete
    received: dict[str, datetime] = {}
    mongo_intervals: list[float] = []
    give_up = asyncio.Event()

    async def orthanc_done() -> bool:
        state["orthanc_delta"] = await orthanc.count_instances() - base
        return bool(state["orthanc_delta"] >= n)

    async def docs_done() -> bool:
        state["docs"] = await instances.count_documents({"patient_id": batch.patient_id})
        return bool(state["docs"] >= n)

    # Series with an instance not seen yet. The poll asks only for them: asking for every
    # archived instance of the batch returned up to N documents 20 times a second, and that
    # polling cost the benchmark and the MongoDB-wire server 2-3 ms of CPU per instance on
    # the cores the pipeline shares (bench/cpu_accounting.py).
    open_series = {uid: set(members) for uid, members in batch.series.items()}

    async def views_done() -> bool:
        now = time.time()
        cursor = instances.find(
            {"series_instance_uid": {"$in": sorted(open_series)}, "in_orthanc": True}, {"_id": 1, "received_at": 1}
        )
        async for doc in cursor:
            uid = doc["_id"]
            if uid in expected and uid not in seen_wall and doc.get("received_at") is not None:
                seen_wall[uid] = now
                received[uid] = doc["received_at"]
        for uid, members in list(open_series.items()):
            if members <= seen_wall.keys():
                del open_series[uid]
        return expected <= seen_wall.keys()

    async def supervise(deadline: float) -> None:
        """Fail on a dead worker/listener; give up at the deadline or when nothing moved
        for stall_s after storescu ended (independent of the pollers, which may hang)."""
        progress, progress_at = None, time.monotonic()
        while not give_up.is_set():
            for child in children:
                if not child.alive():
                    state["dead"] = child
                    give_up.set()
            current = (state["orthanc_delta"], state["docs"], len(seen_wall))
            if current != progress or not sender.done():
                progress, progress_at = current, time.monotonic()
            elif time.monotonic() - progress_at > stall_s:
                state["outcome"] = "stalled"
                give_up.set()
            if time.monotonic() > deadline:
                state["outcome"] = "timeout"
                give_up.set()
            await asyncio.sleep(0.25)

    sender = asyncio.create_task(storescu_parallel(SCP_AET, SCP_PORT, batch.parts, out_log))
    await asyncio.sleep(0)  # let storescu start before the pollers' first round trip
    pollers = [
        asyncio.create_task(poll_until(orthanc_done, "Orthanc /statistics", problems, give_up)),
        asyncio.create_task(poll_until(docs_done, "MongoDB count_documents", problems, give_up)),
        asyncio.create_task(poll_until(views_done, "MongoDB find in_orthanc", problems, give_up, mongo_intervals)),
    ]
    supervisor = asyncio.create_task(supervise(time.monotonic() + timeout_s))
    try:
        start, acked = await sender
        done = await asyncio.gather(*pollers)
    finally:
        give_up.set()
        for task in [*pollers, supervisor]:
            task.cancel()
        await asyncio.gather(*pollers, supervisor, return_exceptions=True)
    if "dead" in state:
        state["dead"].check_alive()  # raises BenchError with the tail of its log

    latencies = []
    for uid, wall in seen_wall.items():
        at = received[uid]
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        latencies.append(wall - at.timestamp())
    return PipelineResult(
        start=start,
        acked=acked,
        orthanc=done[0],
        docs=done[1],
        views=done[2],
        latencies_s=latencies,
        missing_views=sorted(expected - seen_wall.keys()),
        orthanc_delta=state["orthanc_delta"],
        docs_count=state["docs"],
        poll_intervals=mongo_intervals,
        outcome=state["outcome"],
        problems=dict(problems),
    )


# --------------------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def rate(n: int, start: float, end: float | None) -> float:
    return math.nan if end is None or end <= start else n / (end - start)


# aiokafka logs this at ERROR while a freshly declared changelog topic is not in the
# cluster metadata yet; series completion waits for it before its first write
# (streams/agents/series_completion.py), so it is a start-up message, not a failure.
_EXPECTED_AT_START = re.compile(r"aiokafka\.cluster.*changelog not found in cluster metadata")


def log_problems(path: Path, limit: int = 10) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    hits = [
        line
        for line in lines
        if any(w in line for w in ("ERROR", "CRITICAL", "Traceback", '"level": "error"'))
        and not _EXPECTED_AT_START.search(line)
    ]
    return hits[:limit] + ([f"... and {len(hits) - limit} more"] if len(hits) > limit else [])


def fsync_ms(directory: Path, size: int, rounds: int = 20) -> float:
    """Median time to write and fsync one file of ``size`` bytes in ``directory`` (disk context)."""
    data = os.urandom(size)
    times = []
    for i in range(rounds):
        path = directory / f".fsync-probe-{i}"
        start = time.perf_counter()
        with path.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        times.append(time.perf_counter() - start)
        path.unlink()
    return statistics.median(times) * 1000


def count_files(directory: Path) -> int:
    return sum(1 for p in directory.rglob("*") if p.is_file()) if directory.exists() else 0


def take_files(directory: Path) -> int:
    """Count the files a bare SCP wrote into ``directory`` and delete them (it keeps nothing)."""
    count = count_files(directory)
    for path in directory.iterdir():
        path.unlink()
    return count


# --------------------------------------------------------------------------- main


@dataclass
class Phase:
    """One timed send: storescu (``assoc`` processes at once) to one receiver."""

    kind: str
    """``direct`` (Orthanc's DICOM port), ``bare`` (bench/bare_scp.py), ``bare+kafka`` (the
    same, waiting for Kafka's ack too), ``bare+prompt`` (the same with the listener's
    event-driven DUL and reactor), ``alone`` (our listener, no worker running) or ``listener``."""
    assoc: int
    batch: Batch
    workers: int = 0
    processes: int = 1
    """listener: listener processes sharing the port."""
    nice: int = 0
    """listener: the listener's niceness (``make up LISTENER_NICE=N``)."""
    start: float = math.nan
    end: float = math.nan
    """A receiver phase (interleaved rounds) has ``start`` 0 and ``end`` the sum of its rounds'
    times; a listener phase the clock times of its one send."""
    received: int | None = None
    """direct: CountInstances growth; bare: files the bare SCP wrote."""
    pipe: PipelineResult | None = None
    in_orthanc: int | None = None
    """listener: Orthanc instances with the phase's PatientID at the end."""
    cpu_ms: dict[str, float] = field(default_factory=dict)
    """listener: ms of CPU per instance of each process group while the phase ran
    (bench/cpu_accounting.py)."""
    cpu_busy: float = math.nan
    """listener: the CPU those groups spent, as a share of every core over the phase."""

    @property
    def n(self) -> int:
        return len(self.batch.uids)

    @property
    def layout(self) -> str:
        """A listener phase's processes, as the report names them."""
        return f"{self.workers} worker(s), {self.processes} listener process(es)" + (
            f", listener at nice {self.nice}" if self.nice else ""
        )


def parse_counts(text: str, what: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: a comma-separated list of integers, e.g. 1,4") from None
    if not values or any(v < minimum for v in values):
        raise argparse.ArgumentTypeError(f"{what}: integers >= {minimum}")
    return values


async def measure(args: argparse.Namespace, work: Path, stack: Stack, children: dict[str, Child], command: str) -> int:
    """Run every phase and print the figures; 0 when every phase got all N, 1 otherwise."""
    env_file = stack.state_dir / "stack.env"
    run_id = uuid.uuid4().hex[:8]
    settings_env = clean_environ()
    settings_env.update(
        {
            "COHORTSTREAM_TOPIC_PREFIX": f"bench-{run_id}.",
            "COHORTSTREAM_APP_ID": f"bench-{run_id}",
            "COHORTSTREAM_MONGO_DATABASE": f"bench_{run_id}",
            "COHORTSTREAM_DATA_DIR": str(work / "app"),
            "COHORTSTREAM_STAGING_DIR": str(work / "staging"),
            "COHORTSTREAM_QUARANTINE_DIR": str(work / "quarantine"),
            "COHORTSTREAM_DICOM_SCP_PORT": str(SCP_PORT),
            "COHORTSTREAM_DICOM_SCP_AET": SCP_AET,
            "COHORTSTREAM_LOG_LEVEL": "WARNING",
            # Set before `topics create`: enough partitions for several workers per lane.
            "COHORTSTREAM_TOPIC_PARTITIONS": str(args.partitions),
            "COHORTSTREAM_WORKER_METRICS_PORT": "0",
        }
    )

    n = args.instances
    assocs: list[int] = args.associations
    worker_counts: list[int] = args.workers
    process_counts: list[int] = args.listener_processes
    # The largest association count runs the listener phase once per worker count; the
    # others with the first worker count.
    scale_assoc = max(assocs)
    plan: list[Phase] = []
    seed = 1000
    log(f"generating {n} instances per phase ({args.slices} slices/series, {args.rows}x{args.cols})")
    t = time.monotonic()
    for k in assocs:  # first: no worker runs yet
        # At the largest association count, once per listener process count too: one
        # association is always served by one process, so more can only help there.
        for procs in process_counts if k == scale_assoc else process_counts[:1]:
            seed += 1
            alone = make_batch(
                work / f"data-alone-{k}-p{procs}",
                n,
                args.slices,
                args.rows,
                args.cols,
                seed,
                f"BENCH-ALONE-{k}-P{procs}",
                parts=k * args.rounds,
            )
            plan.append(Phase("alone", k, alone, processes=procs))
    for k in assocs:
        seed += 1
        direct = make_batch(
            work / f"data-direct-{k}",
            n,
            args.slices,
            args.rows,
            args.cols,
            seed,
            f"BENCH-DIRECT-{k}",
            parts=k * args.rounds,
        )
        plan.append(Phase("direct", k, direct))
        # The bare SCP keeps nothing: it gets the same files as the direct phase.
        plan.append(Phase("bare", k, direct))
        plan.append(Phase("bare+kafka", k, direct))
        plan.append(Phase("bare+prompt", k, direct))
        nices: list[int] = args.listener_nice
        layouts = [(w, process_counts[0], nices[0]) for w in (worker_counts if k == scale_assoc else worker_counts[:1])]
        if k == scale_assoc:
            layouts += [(worker_counts[0], p, nices[0]) for p in process_counts[1:]]
            layouts += [(worker_counts[0], process_counts[0], nice) for nice in nices[1:]]
        for w, procs, nice in layouts:
            seed += 1
            batch = make_batch(
                work / f"data-listener-{k}-w{w}-p{procs}-n{nice}",
                n,
                args.slices,
                args.rows,
                args.cols,
                seed,
                f"BENCH-L{k}-W{w}-P{procs}" + (f"-N{nice}" if nice else ""),
                parts=k,
            )
            plan.append(Phase("listener", k, batch, workers=w, processes=procs, nice=nice))
    # One warm-up send per receiver before the first phase (the bare SCPs keep nothing,
    # so they share one batch; the listener's goes to Kafka and is archived later).
    rx_warm = make_batch(
        work / "data-rx-warmup", RECEIVER_WARMUP_INSTANCES, args.slices, args.rows, args.cols, 2900, "BENCH-RXWARM"
    )
    uids = [uid for phase in plan if not phase.kind.startswith("bare") for uid in phase.batch.uids]
    uids += rx_warm.uids
    assert len(uids) == len(set(uids)), "phases must not share instances"
    log(f"generated {len(plan)} phases in {time.monotonic() - t:.1f}s")

    log(f"creating topics ({args.partitions} partitions)")
    result = subprocess.run(
        cohortstream_argv(env_file, "topics", "create"), env=settings_env, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise BenchError(f"topics create failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")

    bare_out = work / "bare-out"

    def listener_child(processes: int, port: int = SCP_PORT, name: str = "listener", nice: int = 0) -> Child:
        env = {
            **settings_env,
            "COHORTSTREAM_DICOM_SCP_PROCESSES": str(processes),
            "COHORTSTREAM_DICOM_SCP_PORT": str(port),
        }
        niced = ["nice", "-n", str(nice)] if nice else []  # as deploy/lib/listener.sh starts it
        return Child(name, [*niced, *cohortstream_argv(env_file, "dicom-scp")], env, work / f"{name}.log")

    listener_processes = process_counts[0]
    # The first --listener-nice value everywhere; the others only in their pipeline phases.
    children["listener"] = listener_child(listener_processes, nice=args.listener_nice[0])
    children["bare-scp"] = Child(
        "bare-scp",
        [sys.executable, "-m", "bench.bare_scp", "--port", str(BARE_PORT), "--aet", BARE_AET, "--out", str(bare_out)],
        clean_environ(),
        work / "bare-scp.log",
    )
    bare_kafka_out = work / "bare-kafka-out"
    children["bare-kafka-scp"] = Child(
        "bare-kafka-scp",
        [
            *(sys.executable, "-m", "bench.bare_scp", "--port", str(BARE_KAFKA_PORT), "--aet", BARE_KAFKA_AET),
            *("--out", str(bare_kafka_out), "--kafka-bootstrap", stack.env["COHORTSTREAM_KAFKA_BOOTSTRAP"]),
            *("--kafka-topic", f"{settings_env['COHORTSTREAM_TOPIC_PREFIX']}bench.bare-kafka"),
        ],
        clean_environ(),
        work / "bare-kafka-scp.log",
    )
    bare_prompt_out = work / "bare-prompt-out"
    children["bare-prompt-scp"] = Child(
        "bare-prompt-scp",
        [
            *(sys.executable, "-m", "bench.bare_scp", "--port", str(BARE_PROMPT_PORT), "--aet", BARE_PROMPT_AET),
            *("--out", str(bare_prompt_out), "--prompt-dul"),
        ],
        clean_environ(),
        work / "bare-prompt-scp.log",
    )
    # The alone phases with more listener processes get their own listeners (same staging
    # store and topics, another port), so the interleaved rounds need no restarts; they
    # stop before the workers start.
    alone_listeners: dict[int, tuple[str, int]] = {listener_processes: ("listener", SCP_PORT)}
    for i, procs in enumerate(
        p for p in sorted({ph.processes for ph in plan if ph.kind == "alone"}) if p != listener_processes
    ):
        alone_listeners[procs] = (f"listener-{procs}p", EXTRA_LISTENER_PORT + i)
        children[f"listener-{procs}p"] = listener_child(
            procs, EXTRA_LISTENER_PORT + i, f"listener-{procs}p", args.listener_nice[0]
        )
        children[f"listener-{procs}p"].start()
    children["listener"].start()
    children["bare-scp"].start()
    children["bare-kafka-scp"].start()
    children["bare-prompt-scp"].start()
    workers: list[Child] = []

    def worker_child(i: int) -> Child:
        env = dict(settings_env)
        # Own data dir (faust table state) and no metrics ports, so workers never collide.
        env["COHORTSTREAM_DATA_DIR"] = str(work / f"app-worker-{i}")
        return Child(f"worker-{i}", cohortstream_argv(env_file, "worker"), env, work / f"worker-{i}.log")

    listener_s = wait_listener(children["listener"], SCP_AET, SCP_PORT, READY_TIMEOUT_S, listener_processes)
    log(f"listener answers C-ECHO after {listener_s:.1f}s")
    listener_layout = (listener_processes, args.listener_nice[0])
    for procs, (name, port) in alone_listeners.items():
        if name != "listener":
            took = wait_listener(children[name], SCP_AET, port, READY_TIMEOUT_S, procs)
            log(f"{name} ({procs} processes, port {port}) answers C-ECHO after {took:.1f}s")
    bare_s = wait_listener(children["bare-scp"], BARE_AET, BARE_PORT, READY_TIMEOUT_S)
    log(f"bare SCP answers C-ECHO after {bare_s:.1f}s")
    bare_kafka_s = wait_listener(children["bare-kafka-scp"], BARE_KAFKA_AET, BARE_KAFKA_PORT, READY_TIMEOUT_S)
    log(f"bare SCP with Kafka acks answers C-ECHO after {bare_kafka_s:.1f}s")
    bare_prompt_s = wait_listener(children["bare-prompt-scp"], BARE_PROMPT_AET, BARE_PROMPT_PORT, READY_TIMEOUT_S)
    log(f"bare SCP with the event-driven DUL and reactor answers C-ECHO after {bare_prompt_s:.1f}s")
    bare_receivers = {
        "bare": ("bare-scp", BARE_AET, BARE_PORT, bare_out),
        "bare+kafka": ("bare-kafka-scp", BARE_KAFKA_AET, BARE_KAFKA_PORT, bare_kafka_out),
        "bare+prompt": ("bare-prompt-scp", BARE_PROMPT_AET, BARE_PROMPT_PORT, bare_prompt_out),
    }

    mongo = client_for_url(stack.env["COHORTSTREAM_MONGO_URL"], socketTimeoutMS=int(CHECK_TIMEOUT_S * 1000))
    instances = mongo[settings_env["COHORTSTREAM_MONGO_DATABASE"]]["instances"]
    orthanc = Orthanc(stack.env)
    storescu_log = work / "storescu.log"
    orthanc_aet = stack.env.get("COHORTSTREAM_ORTHANC_AET", "ORTHANC")
    orthanc_port = int(stack.env["COHORTSTREAM_ORTHANC_DICOM_PORT"])
    ready_notes: list[str] = []
    warm_total = 0
    stopped_logs: list[tuple[str, Path]] = []
    failed = False

    def use_listener(processes: int, nice: int, running: tuple[int, int]) -> tuple[int, int]:
        """Restart the listener with ``processes`` processes at niceness ``nice`` unless it
        runs so (``running``); returns what runs."""
        if (processes, nice) != running:
            children["listener"].stop()
            children["listener"] = listener_child(processes, nice=nice)
            children["listener"].start()
            took = wait_listener(children["listener"], SCP_AET, SCP_PORT, READY_TIMEOUT_S, processes)
            log(f"listener with {processes} process(es) at nice {nice} ready after {took:.1f}s")
        return processes, nice

    async def set_workers(count: int) -> None:
        """Start or stop worker processes until ``count`` run, wait until the DICOM lanes'
        consumer groups are Stable with ``count`` members, then send a warm-up batch through."""
        nonlocal warm_total
        while len(workers) < count:
            child = worker_child(len(workers) + 1)
            children[child.name] = child
            workers.append(child)
            child.start()
        while len(workers) > count:
            workers.pop().stop()
        # The worker runs one consumer group per lane (cohortstream/lanes.py); the DICOM
        # path needs these three.
        group_s = await wait_consumer_groups(
            Settings.load(stack.state_dir / "stack.env"),
            [
                f"{settings_env['COHORTSTREAM_APP_ID']}-{lane}"
                for lane in ("dicom-archive", "dicom-views", "series-completion")
            ],
            workers,
            READY_TIMEOUT_S,
            members=count,
        )
        log(f"{count} worker(s): consumer groups Stable with {count} member(s) after {group_s:.1f}s")
        warm_batch = make_batch(
            work / f"data-warmup-{len(ready_notes) + 1}-w{count}",
            WARMUP_INSTANCES,
            1,
            args.rows,
            args.cols,
            3000 + len(ready_notes),  # a new seed per warm-up: going back to a count must not resend
            f"BENCH-WARMUP-{len(ready_notes) + 1}-W{count}",
            single_slices=True,
        )
        log(f"warm-up: {WARMUP_INSTANCES} instances (one per series) through the whole pipeline")
        warm = await run_pipeline(
            warm_batch, orthanc, instances, READY_TIMEOUT_S, args.stall, [children["listener"], *workers], storescu_log
        )
        warm_total += WARMUP_INSTANCES
        if warm.views is None:
            raise BenchError(
                f"warm-up did not reach Orthanc + views ({warm.outcome}; {warm.problems or 'no poll errors'})"
                + "".join(f"\n--- {w.name} log ---\n{tail(w.log_path)}" for w in workers)
                + f"\n--- listener log ---\n{tail(children['listener'].log_path)}"
            )
        log(f"warm-up went through in {warm.views - warm.start:.2f}s")
        backlog = [p for p in plan if p.kind == "alone"]
        if backlog:
            patients = [p.batch.patient_id for p in backlog] + [rx_warm.patient_id]
            expected_docs = sum(p.n for p in backlog) + len(rx_warm.uids)
            drained_at = time.monotonic()
            while True:
                done = await instances.count_documents({"patient_id": {"$in": patients}, "in_orthanc": True})
                if done >= expected_docs:
                    break
                if time.monotonic() - drained_at > args.timeout:
                    raise BenchError(f"the workers did not drain the alone phases: {done}/{expected_docs} in views")
                await asyncio.sleep(POLL_S * 4)
            log(f"the alone phases' backlog is in Orthanc and the views ({time.monotonic() - drained_at:.1f}s more)")
        ready_notes.append(
            f"{count} worker(s): groups Stable after {group_s:.1f}s, warm-up ({WARMUP_INSTANCES} instances) "
            f"end to end {warm.views - warm.start:.2f}s"
        )

    async def send_round(phase: Phase, r: int) -> None:
        """Round ``r`` of a receiver phase: its share of the instances, ``phase.assoc``
        storescu processes at once; adds the time to the phase's total."""
        k = phase.assoc
        parts = phase.batch.parts[r * k : (r + 1) * k]
        if phase.kind == "direct":
            aet, port, name = orthanc_aet, orthanc_port, None
        elif phase.kind == "alone":
            name, port = alone_listeners[phase.processes]
            aet = SCP_AET
        else:
            name, aet, port, _ = bare_receivers[phase.kind]
        started, ended = await storescu_parallel(aet, port, parts, storescu_log)
        if name is not None:
            children[name].check_alive()
        phase.start = 0.0 if math.isnan(phase.start) else phase.start
        phase.end = (0.0 if math.isnan(phase.end) else phase.end) + (ended - started)

    try:
        # A JVM broker answers its first thousands of requests before the JIT has compiled
        # them; a deployed broker is long past that. Warm it first, one acks=all record at
        # a time as a C-STORE sends them, so the Kafka round trip is not measured cold.
        broker_warmup(
            stack.env["COHORTSTREAM_KAFKA_BOOTSTRAP"], f"{settings_env['COHORTSTREAM_TOPIC_PREFIX']}bench.warmup"
        )
        log(f"receiver warm-up: {RECEIVER_WARMUP_INSTANCES} instances, one association, to each receiver")
        warm_targets = [("Orthanc", orthanc_aet, orthanc_port)]
        warm_targets += [(name, SCP_AET, port) for name, port in alone_listeners.values()]
        warm_targets += [(r[0], r[1], r[2]) for r in bare_receivers.values()]
        for name, aet, port in warm_targets:
            started, ended = await storescu_parallel(aet, port, rx_warm.parts, storescu_log)
            if name in children:
                children[name].check_alive()
            log(f"  {name}: {RECEIVER_WARMUP_INSTANCES / (ended - started):.0f} inst/s (warm-up, not reported)")
        for *_, out in bare_receivers.values():
            take_files(out)
        # The same instances went to Orthanc and to the listeners: once in each total.
        warm_total += len(rx_warm.uids)

        # The receiver phases (no worker runs yet), interleaved: round r sends 1/rounds of
        # every receiver phase at this association count before round r+1 starts, so a
        # machine that slows down for a while slows all of them alike.
        for k in assocs:
            receivers = [p for p in plan if p.assoc == k and p.kind != "listener"]
            direct_phase = next(p for p in receivers if p.kind == "direct")
            base = await orthanc.count_instances()
            log(
                f"{k} association(s): {args.rounds} interleaved rounds of "
                + ", ".join(f"{p.kind}" + (f" ({p.processes} proc)" if p.kind == "alone" else "") for p in receivers)
                + f", {n // args.rounds} instances each"
            )
            for r in range(args.rounds):
                # Each round starts with a different receiver: none always follows the same one.
                shift = r % len(receivers)
                for phase in receivers[shift:] + receivers[:shift]:
                    await send_round(phase, r)
            direct_phase.received = await orthanc.count_instances() - base
            for phase in receivers:
                if phase.kind.startswith("bare"):
                    phase.received = take_files(bare_receivers[phase.kind][3])
            for phase in receivers:
                log(f"  {phase.kind}: {rate(phase.n, phase.start, phase.end):.1f} inst/s over {phase.end:.2f} s")
        for name, _ in alone_listeners.values():
            if name != "listener":
                children.pop(name).stop()  # frees its cores for the pipeline phases (its log is checked below)
                stopped_logs.append((name, work / f"{name}.log"))

        for phase in plan:
            if phase.kind != "listener":
                continue
            label = f"{phase.kind}, {phase.assoc} association(s)"
            listener_layout = use_listener(phase.processes, phase.nice, listener_layout)
            if len(workers) != phase.workers:
                await set_workers(phase.workers)
            label += f", {phase.layout}"
            log(f"{label}: storescu {phase.n} instances -> listener :{SCP_PORT}")
            cpu_roots = {
                "listener": children["listener"].pid,
                **{f"worker {i + 1}": w.pid for i, w in enumerate(workers)},
                **{name: stack.service_pid(svc) for svc, name in STACK_SERVICES.items()},
            }
            cpu_before, wall_before = cpu_accounting.snapshot(cpu_roots), time.monotonic()
            pipe = await run_pipeline(
                phase.batch,
                orthanc,
                instances,
                args.timeout,
                args.stall,
                [children["listener"], *workers],
                storescu_log,
            )
            phase.pipe, phase.start, phase.end = pipe, pipe.start, pipe.acked
            cpu_after, wall_after = cpu_accounting.snapshot(cpu_roots), time.monotonic()
            phase.cpu_ms = cpu_accounting.per_instance_ms(cpu_before, cpu_after, phase.n)
            phase.cpu_busy = (
                sum(phase.cpu_ms.values())
                * phase.n
                / 1000
                / ((wall_after - wall_before) * len(os.sched_getaffinity(0)))
            )
            if pipe.outcome != "complete":
                failed = True
                why = (
                    f"no progress for {args.stall:.0f}s"
                    if pipe.outcome == "stalled"
                    else f"not within {args.timeout:.0f}s"
                )
                log(
                    f"WARNING: {label}: not everything arrived ({why}): Orthanc +{pipe.orthanc_delta}/{phase.n}, "
                    f"{pipe.docs_count}/{phase.n} instance docs, "
                    f"{phase.n - len(pipe.missing_views)}/{phase.n} with in_orthanc"
                    + "".join(f"\n  poll {what}: {problem}" for what, problem in pipe.problems.items())
                    + "".join(f"\n--- {w.name} log ---\n{tail(w.log_path)}" for w in workers)
                    + f"\n--- listener log ---\n{tail(children['listener'].log_path)}"
                    + "".join(
                        f"\n--- {svc} service.log ---\n{tail(stack.state_dir / svc / 'service.log', 15)}"
                        for svc in ("mongo", "orthanc")
                        if any(
                            (svc == "orthanc" and "Orthanc" in what) or (svc == "mongo" and "Mongo" in what)
                            for what in pipe.problems
                        )
                    )
                )

        # Let in-flight work settle a moment, then look for duplicates and strays.
        await asyncio.sleep(1.0)
        check_problems: dict[str, str] = {}
        orthanc_total = await bounded(orthanc.count_instances(), "Orthanc /statistics", check_problems)
        docs_total = await bounded(instances.count_documents({}), "MongoDB count_documents", check_problems)
        for phase in plan:
            if phase.kind not in ("listener", "alone"):
                continue
            found = await bounded(
                orthanc.client.post(
                    "/tools/find", json={"Level": "Instance", "Query": {"PatientID": phase.batch.patient_id}}
                ),
                "Orthanc /tools/find",
                check_problems,
            )
            phase.in_orthanc = len(found.json()) if found is not None and found.status_code == 200 else None
    finally:
        await orthanc.close()
        await mongo.close()

    print_report(args, work, command, plan, ready_notes, listener_s, bare_s)

    # ----------------------------------------------------------------- checks
    def got(value: object) -> str:
        return "no answer" if value is None else str(value)

    listener_n = sum(p.n for p in plan if p.kind in ("listener", "alone"))
    direct_n = sum(p.n for p in plan if p.kind == "direct")
    print()
    print("checks:")
    for phase in plan:
        name = f"  {phase.kind}, {phase.assoc} assoc" + (
            f", {phase.layout}"
            if phase.workers
            else f", {phase.processes} listener process(es)"
            if phase.kind == "alone"
            else ""
        )
        if phase.kind == "direct":
            ok = phase.received == phase.n
            print(f"{name}: Orthanc CountInstances grew by {phase.received} (expected {phase.n})")
        elif phase.kind.startswith("bare"):
            ok = phase.received == phase.n
            print(f"{name}: {phase.kind} SCP wrote {phase.received} files (expected {phase.n})")
        elif phase.kind == "alone":
            ok = phase.in_orthanc == phase.n
            print(
                f"{name}: Orthanc instances with PatientID {phase.batch.patient_id}: {got(phase.in_orthanc)} "
                f"(expected {phase.n}, archived once the workers started)"
            )
        else:
            got_pipe = phase.pipe
            assert got_pipe is not None
            ok = got_pipe.outcome == "complete" and phase.in_orthanc == phase.n and not got_pipe.missing_views
            print(
                f"{name}: {got_pipe.outcome}"
                + (f" (poll problems: {got_pipe.problems})" if got_pipe.problems else "")
                + "; "
                f"Orthanc instances with PatientID {phase.batch.patient_id}: {got(phase.in_orthanc)} "
                f"(expected {phase.n}), CountInstances grew by {got_pipe.orthanc_delta} during the phase; "
                f"view docs missing in_orthanc: {len(got_pipe.missing_views)}"
                + (f" (e.g. {got_pipe.missing_views[:3]})" if got_pipe.missing_views else "")
            )
        failed |= not ok
    print(
        f"  Orthanc total {got(orthanc_total)} (expected {direct_n + listener_n + warm_total} incl. "
        f"{warm_total} warm-up), MongoDB instance docs {got(docs_total)} (expected {listener_n + warm_total})"
        + (f" (check problems: {check_problems})" if check_problems else "")
    )
    failed |= orthanc_total != direct_n + listener_n + warm_total or docs_total != listener_n + warm_total
    staged_left, quarantined = count_files(work / "staging"), count_files(work / "quarantine")
    print(f"  files left in staging: {staged_left}, in quarantine: {quarantined}")
    failed |= staged_left != 0 or quarantined != 0
    for name, log_path in [*((name, child.log_path) for name, child in children.items()), *stopped_logs]:
        problems = log_problems(log_path)
        print(f"  {name} log: {len(problems)} error line(s)" + "".join(f"\n    {p[:300]}" for p in problems))
        failed |= bool(problems)
    return 1 if failed else 0


def print_report(
    args: argparse.Namespace,
    work: Path,
    command: str,
    plan: list[Phase],
    ready_notes: list[str],
    listener_s: float,
    bare_s: float,
) -> None:
    n = args.instances
    sizes = plan[0].batch.file_sizes

    def num(value: float, spec: str, suffix: str = "") -> str:
        return "n/a" if math.isnan(value) else f"{value:{spec}}{suffix}"

    def ratio(a: float, b: float) -> float:
        return math.nan if math.isnan(a) or math.isnan(b) or b == 0 else a / b

    direct = {p.assoc: rate(p.n, p.start, p.end) for p in plan if p.kind == "direct"}
    bare = {p.assoc: rate(p.n, p.start, p.end) for p in plan if p.kind == "bare"}
    bare_kafka = {p.assoc: rate(p.n, p.start, p.end) for p in plan if p.kind == "bare+kafka"}
    bare_prompt = {p.assoc: rate(p.n, p.start, p.end) for p in plan if p.kind == "bare+prompt"}

    print()
    print(f"command: {command}")
    print(
        f"DICOM ingest benchmark — {n} instances per phase ({math.ceil(n / args.slices)} series x <= {args.slices} "
        f"slices, MR {args.rows}x{args.cols} int16, explicit VR LE); K associations = K storescu processes at "
        f"once, each sending 1/K of the instances (TCP_NODELAY=1 {STORESCU} -R +sd +r -aec AET 127.0.0.1 PORT DIR); "
        f"topics with {args.partitions} partitions"
    )
    print(
        f"machine: nproc={os.cpu_count()} (usable {len(os.sched_getaffinity(0))}), "
        f"instance size {min(sizes)}-{max(sizes)} bytes (mean {statistics.mean(sizes):.0f}, "
        f"{sum(sizes) / 1e6:.1f} MB a phase), write+fsync of one instance-sized file in {work}: "
        f"{fsync_ms(work, sizes[0]):.1f} ms (median of 20), Python {sys.version.split()[0]}"
    )
    print(
        f"ready: listener C-ECHO after {listener_s:.1f}s, bare SCP C-ECHO after {bare_s:.1f}s; "
        + "; ".join(ready_notes)
    )
    print()
    header = (
        f"{'path (time from the first storescu start)':<62} {'assoc':>5} {'workers':>7} {'scp-proc':>8} "
        f"{'time':>9} {'inst/s':>8}"
    )
    print(f"{header} {'vs bare':>8} {'vs direct':>9}")

    def row(label: str, phase: Phase, end: float | None, workers: str = "-", procs: str = "-") -> float:
        r = rate(phase.n, phase.start, end)
        took = "not reached" if end is None or math.isnan(end) else f"{end - phase.start:.2f} s"
        print(
            f"{label:<62} {phase.assoc:>5} {workers:>7} {procs:>8} {took:>9} {num(r, '.1f'):>8} "
            f"{num(ratio(r, bare[phase.assoc]), '.2f', 'x'):>8} {num(ratio(r, direct[phase.assoc]), '.2f', 'x'):>9}"
        )
        return r

    summaries: list[str] = []
    scale: list[tuple[Phase, float, float, float]] = []
    for phase in plan:
        if phase.kind == "direct":
            row("storescu -> Orthanc directly (storescu exit)", phase, phase.end)
        elif phase.kind == "bare":
            row("storescu -> bare pynetdicom SCP, write+fsync (storescu exit)", phase, phase.end)
        elif phase.kind == "bare+kafka":
            row("storescu -> bare SCP, write+fsync, then Kafka acks=all", phase, phase.end)
        elif phase.kind == "bare+prompt":
            row("storescu -> bare SCP, write+fsync, event-driven DUL+reactor", phase, phase.end)
        elif phase.kind == "alone":
            alone_ack = row(
                "storescu -> our listener, no worker running: acknowledged",
                phase,
                phase.end,
                "0",
                str(phase.processes),
            )
            summaries.append(
                f"listener alone, {phase.assoc} assoc, {phase.processes} listener process(es): acknowledged/bare {num(ratio(alone_ack, bare[phase.assoc]), '.2f')}"
                f", acknowledged/(bare+kafka) {num(ratio(alone_ack, bare_kafka.get(phase.assoc, math.nan)), '.2f')}"
                f"; (bare+kafka)/bare {num(ratio(bare_kafka.get(phase.assoc, math.nan), bare[phase.assoc]), '.2f')}"
                f"; acknowledged/(bare+prompt) {num(ratio(alone_ack, bare_prompt.get(phase.assoc, math.nan)), '.2f')}"
                f", (bare+prompt)/bare {num(ratio(bare_prompt.get(phase.assoc, math.nan), bare[phase.assoc]), '.2f')}"
            )
        else:
            pipe = phase.pipe
            assert pipe is not None
            w, pr = str(phase.workers), str(phase.processes) + (f" n{phase.nice}" if phase.nice else "")
            ack = row("storescu -> our listener: acknowledged (storescu exit)", phase, pipe.acked, w, pr)
            vis = row("  visible in Orthanc (CountInstances +N)", phase, pipe.orthanc, w, pr)
            row("  all N instance docs in MongoDB", phase, pipe.docs, w, pr)
            views = row("  in MongoDB views with in_orthanc=true", phase, pipe.views, w, pr)
            lat = pipe.latencies_s
            p95 = percentile(lat, 0.95)
            line = (
                f"listener, {phase.assoc} assoc, {phase.layout}: "
                f"acknowledged/bare {num(ratio(ack, bare[phase.assoc]), '.2f')}; visible/acknowledged "
                f"{num(ratio(vis, ack), '.2f')} (Orthanc), {num(ratio(views, ack), '.2f')} (views); "
            )
            if lat:
                line += (
                    f"end-to-end latency (received_at -> first poll seeing in_orthanc=true), n={len(lat)}: "
                    f"p50 {percentile(lat, 0.5) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms"
                )
            if pipe.poll_intervals:
                line += (
                    f" (poll every {POLL_S * 1000:.0f} ms; actual mean "
                    f"{statistics.mean(pipe.poll_intervals) * 1000:.0f} ms, max {max(pipe.poll_intervals) * 1000:.0f} ms)"
                )
            summaries.append(line)
            if phase.cpu_ms:
                summaries.append(
                    "  CPU per instance over the phase (ms; "
                    f"{phase.cpu_busy:.0%} of the {len(os.sched_getaffinity(0))} cores busy): "
                    + ", ".join(f"{label} {ms:.2f}" for label, ms in phase.cpu_ms.items() if ms >= 0.005)
                )
            if phase.assoc == max(args.associations):
                scale.append((phase, ack, vis, views))
    print()
    for line in summaries:
        print(line)
    if len(scale) > 1:
        print()
        first = scale[0]
        print(f"scale-out at {max(args.associations)} associations (inst/s; ratio to {first[0].layout}):")
        for phase, ack, vis, views in scale:
            print(
                f"  {phase.layout}: acknowledged {num(ack, '.1f')} "
                f"({num(ratio(ack, first[1]), '.2f')}x), visible in Orthanc {num(vis, '.1f')} "
                f"({num(ratio(vis, first[2]), '.2f')}x), in views {num(views, '.1f')} ({num(ratio(views, first[3]), '.2f')}x)"
            )


def main(argv: list[str] | None = None) -> int:
    raw_argv = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join([sys.executable, "-m", "bench.dicom_ingest", *raw_argv])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=400, help="instances per phase (default 400)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="the receiver phases (direct, bare*, alone) at each association count run interleaved in this many "
        "rounds of instances/rounds each (default 3)",
    )
    parser.add_argument("--slices", type=int, default=25, help="slices per series (default 25)")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--cols", type=int, default=256)
    parser.add_argument(
        "--associations",
        type=lambda text: parse_counts(text, "--associations"),
        default=[1, 4],
        help="association counts, comma-separated (default 1,4)",
    )
    parser.add_argument(
        "--workers",
        type=lambda text: parse_counts(text, "--workers"),
        default=[1],
        help="worker process counts for the listener phase at the largest association count, comma-separated "
        "(e.g. 1,2; default 1); the other association counts use the first",
    )
    parser.add_argument(
        "--listener-processes",
        type=lambda text: parse_counts(text, "--listener-processes"),
        default=[1],
        help="listener process counts (COHORTSTREAM_DICOM_SCP_PROCESSES) for the listener phase at the largest "
        "association count, comma-separated (e.g. 1,2; default 1); the first is used everywhere else",
    )
    parser.add_argument(
        "--listener-nice",
        type=lambda text: parse_counts(text, "--listener-nice", minimum=0),
        default=[0],
        help="the listener's niceness (make up LISTENER_NICE=N), comma-separated (e.g. 0,10; default 0): the "
        "first everywhere, each further one for one more listener phase at the largest association count",
    )
    parser.add_argument("--partitions", type=int, default=12, help="partitions per topic (default 12)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for all N to arrive")
    parser.add_argument(
        "--stall", type=float, default=60.0, help="give up after this many seconds without progress (default 60)"
    )
    parser.add_argument(
        "--port-offset",
        type=int,
        default=None,
        help="add this to every port (default: the first multiple of 10 at which all ports are free)",
    )
    parser.add_argument("--keep-stack", action="store_true", help="leave the stack and the temp dir in place")
    args = parser.parse_args(raw_argv)
    if args.instances < 1 or args.slices < 1 or args.partitions < 1:
        parser.error("--instances, --slices and --partitions must be >= 1")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.instances < max(args.associations) * args.rounds:
        parser.error("--instances must be at least the largest association count times --rounds")
    for tool in (STORESCU, ECHOSCU):
        if not os.access(tool, os.X_OK):
            parser.error(f"{tool} (dcmtk) is needed")
    print(f"command: {command}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="cohortstream-bench-", dir="/tmp"))
    stack = Stack(state_dir=work / "stack", log_path=work / "stack.log")
    children: dict[str, Child] = {}
    status = 1
    try:
        offset = apply_port_offset(args.port_offset)
        log(
            f"ports (offset {offset}): "
            + ", ".join(f"{k.removeprefix('COHORTSTREAM_STACK_').lower()} {v}" for k, v in STACK_PORTS.items())
            + f", listener {SCP_PORT}, bare SCP {BARE_PORT}"
        )
        stack.up()
        status = asyncio.run(measure(args, work, stack, children, command))
    except BenchError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        status = 130
    except Exception:
        traceback.print_exc()
    finally:
        for child in reversed(list(children.values())):
            try:
                child.stop()
            except Exception as exc:
                log(f"WARNING: stopping {child.name}: {exc}")
        if args.keep_stack:
            log(
                f"--keep-stack: stack left running; stop it with: COHORTSTREAM_STACK_DIR={stack.state_dir} "
                f"{STACK_SH} down   (logs and data in {work})"
            )
        else:
            stack.down()
            if status == 0:
                shutil.rmtree(work, ignore_errors=True)
            else:
                log(f"logs kept in {work}")
    return status


if __name__ == "__main__":
    sys.exit(main())
