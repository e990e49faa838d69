"""DICOM ingest: our C-STORE listener → Kafka → Orthanc + MongoDB views, against storescu
straight into Orthanc, in one run. Prints figures; asserts nothing.

Self-contained: starts its own stack (Kafka, the MongoDB-wire server, Orthanc via ``deploy/stack.sh`` in
a temporary state dir, ports 45092/45093/45017/45042/45242), creates the topics with a
prefix unique to the run, starts ``cohortstream worker`` and ``cohortstream dicom-scp``
(port 45112) as subprocesses, waits until both are ready (listener: C-ECHO with dcmtk's
``echoscu``; worker: its consumer group is Stable, then one warm-up instance goes through
the whole pipeline), then:

1. **pipeline** — N generated MR slices (``cohortstream.synthetic.mr_study``) are sent
   with dcmtk ``storescu`` (one association) to our listener. Measured from storescu's
   start: until storescu exits (every C-STORE acknowledged, i.e. staged + Kafka acks=all),
   until Orthanc's ``CountInstances`` grew by N, until all N ``instances`` docs exist in
   MongoDB, and until all N carry ``in_orthanc: true``. Pollers run every 50 ms.
   Per-instance end-to-end latency = the first poll that saw the instance doc with
   ``in_orthanc: true`` and its view fields minus its ``received_at`` (the listener's
   clock, same machine), so it has the poll period's resolution.
2. **direct** — a different set of N instances (other seed and patient, so Orthanc stores
   them anew) sent with the same storescu command straight to Orthanc's DICOM port; Orthanc
   answers each C-STORE after storing it, so storescu's run time is the baseline.

Run: ``.venv/bin/python -m bench.dicom_ingest [--instances 2000] [--slices 100]
[--rows 64] [--cols 64] [--keep-stack]``. Needs dcmtk (``/usr/bin/storescu``,
``/usr/bin/echoscu``) and the stack's installs (``deploy/stack.sh install``).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import signal
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

from cohortstream.mongo import client_for_url
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
SCP_PORT = 45112
SCP_AET = "COHORTSTREAM"
POLL_S = 0.05
CHECK_TIMEOUT_S = 10.0

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0


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
        env["COHORTSTREAM_STACK_SERVICES"] = "kafka mongo orthanc"
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


def wait_listener(listener: Child, timeout_s: float) -> float:
    """C-ECHO the listener until it answers; returns the seconds it took."""
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < timeout_s:
        listener.check_alive()
        try:
            result = subprocess.run(
                [ECHOSCU, "-to", "5", "-aec", SCP_AET, "127.0.0.1", str(SCP_PORT)],
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


async def wait_consumer_groups(bootstrap: str, groups: list[str], worker: Child, timeout_s: float) -> float:
    """Wait until each of the worker's consumer groups (one per lane) is Stable with members."""
    waited = 0.0
    for group in groups:
        waited += await wait_consumer_group(bootstrap, group, worker, max(1.0, timeout_s - waited))
    return waited


async def wait_consumer_group(bootstrap: str, group: str, worker: Child, timeout_s: float) -> float:
    """Wait until the worker's consumer group is Stable with members; returns seconds."""
    from aiokafka.admin import AIOKafkaAdminClient

    start = time.monotonic()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="cohortstream-bench")
    await admin.start()
    state = "unknown"
    try:
        while time.monotonic() - start < timeout_s:
            worker.check_alive()
            try:
                for response in await admin.describe_consumer_groups([group]):
                    for entry in response.groups:
                        # (error_code, group_id, state, protocol_type, protocol, members, ...)
                        state = f"{entry[2]} with {len(entry[5])} member(s)"
                        if entry[2] == "Stable" and entry[5]:
                            return time.monotonic() - start
            except Exception as exc:
                state = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    raise BenchError(
        f"worker consumer group {group!r} not Stable within {timeout_s:.0f}s (last: {state}); "
        f"last lines of its log:\n{tail(worker.log_path)}"
    )


# --------------------------------------------------------------------------- data


@dataclass
class Batch:
    directory: Path
    uids: list[str]
    patient_id: str
    file_sizes: list[int]


def make_batch(directory: Path, count: int, slices: int, rows: int, cols: int, seed: int, patient_id: str) -> Batch:
    n_series = max(1, math.ceil(count / slices))
    datasets = mr_study(
        n_series=n_series, slices=min(slices, count), rows=rows, cols=cols, seed=seed, patient_id=patient_id
    )
    datasets = datasets[:count]
    paths = write_study(datasets, directory)
    return Batch(
        directory=directory,
        uids=[str(ds.SOPInstanceUID) for ds in datasets],
        patient_id=patient_id,
        file_sizes=[p.stat().st_size for p in paths],
    )


async def storescu(aet: str, port: int, directory: Path, log_path: Path) -> tuple[float, float]:
    """Send every file under ``directory``; returns (monotonic start, monotonic end)."""
    argv = [STORESCU, "-R", "+sd", "+r", "-aec", aet, "127.0.0.1", str(port), str(directory)]
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await proc.communicate()
    end = time.monotonic()
    text = output.decode(errors="replace")
    with log_path.open("a") as fh:
        fh.write(f"$ {' '.join(argv)}\n{text}(exit {proc.returncode}, {end - start:.3f}s)\n")
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
        return state["orthanc_delta"] >= n

    async def docs_done() -> bool:
        state["docs"] = await instances.count_documents({"patient_id": batch.patient_id})
        return state["docs"] >= n

    async def views_done() -> bool:
        now = time.time()
        cursor = instances.find({"in_orthanc": True, "patient_id": batch.patient_id}, {"_id": 1, "received_at": 1})
        async for doc in cursor:
            uid = doc["_id"]
            if uid not in seen_wall and doc.get("received_at") is not None:
                seen_wall[uid] = now
                received[uid] = doc["received_at"]
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

    sender = asyncio.create_task(storescu(SCP_AET, SCP_PORT, batch.directory, out_log))
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


def log_problems(path: Path, limit: int = 10) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    hits = [line for line in lines if any(w in line for w in ("ERROR", "CRITICAL", "Traceback", '"level": "error"'))]
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


# --------------------------------------------------------------------------- main


async def measure(args: argparse.Namespace, work: Path, stack: Stack, children: dict[str, Child]) -> int:
    """Run both phases and print the figures; 0 when all N arrived, 1 otherwise."""
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
        }
    )

    n = args.instances
    log(f"generating 2 x {n} instances ({args.slices} slices/series, {args.rows}x{args.cols})")
    t = time.monotonic()
    pipe_batch = make_batch(work / "data-pipeline", n, args.slices, args.rows, args.cols, 1001, "BENCH-PIPELINE")
    direct_batch = make_batch(work / "data-direct", n, args.slices, args.rows, args.cols, 2002, "BENCH-DIRECT")
    warm_batch = make_batch(work / "data-warmup", 1, 1, args.rows, args.cols, 3003, "BENCH-WARMUP")
    assert not set(pipe_batch.uids) & set(direct_batch.uids)
    log(f"generated in {time.monotonic() - t:.1f}s")

    log("creating topics")
    result = subprocess.run(
        cohortstream_argv(env_file, "topics", "create"), env=settings_env, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise BenchError(f"topics create failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")

    children["worker"] = Child("worker", cohortstream_argv(env_file, "worker"), settings_env, work / "worker.log")
    children["listener"] = Child(
        "listener", cohortstream_argv(env_file, "dicom-scp"), settings_env, work / "listener.log"
    )
    for child in children.values():
        child.start()
    listener_s = wait_listener(children["listener"], READY_TIMEOUT_S)
    log(f"listener answers C-ECHO after {listener_s:.1f}s")
    # The worker runs one consumer group per lane (cohortstream/lanes.py); the DICOM path
    # needs these three.
    group_s = await wait_consumer_groups(
        stack.env["COHORTSTREAM_KAFKA_BOOTSTRAP"],
        [
            f"{settings_env['COHORTSTREAM_APP_ID']}-{lane}"
            for lane in ("dicom-archive", "dicom-views", "series-completion")
        ],
        children["worker"],
        READY_TIMEOUT_S,
    )
    log(f"worker consumer groups Stable after {group_s:.1f}s")

    mongo = client_for_url(stack.env["COHORTSTREAM_MONGO_URL"], socketTimeoutMS=int(CHECK_TIMEOUT_S * 1000))
    instances = mongo[settings_env["COHORTSTREAM_MONGO_DATABASE"]]["instances"]
    orthanc = Orthanc(stack.env)
    storescu_log = work / "storescu.log"
    child_list = list(children.values())
    try:
        log("warm-up: 1 instance through the whole pipeline")
        warm = await run_pipeline(warm_batch, orthanc, instances, READY_TIMEOUT_S, args.stall, child_list, storescu_log)
        if warm.views is None:
            raise BenchError(
                f"warm-up instance did not reach Orthanc + views ({warm.outcome}; {warm.problems or 'no poll errors'})"
                f"\n--- worker log ---\n{tail(children['worker'].log_path)}"
                f"\n--- listener log ---\n{tail(children['listener'].log_path)}"
            )
        log(f"warm-up went through in {warm.views - warm.start:.2f}s")

        log(f"pipeline: storescu {n} instances -> listener :{SCP_PORT}")
        pipe = await run_pipeline(pipe_batch, orthanc, instances, args.timeout, args.stall, child_list, storescu_log)
        if pipe.outcome != "complete":
            why = (
                f"no progress for {args.stall:.0f}s" if pipe.outcome == "stalled" else f"not within {args.timeout:.0f}s"
            )
            log(
                f"WARNING: not everything arrived ({why}): Orthanc +{pipe.orthanc_delta}/{n}, "
                f"{pipe.docs_count}/{n} instance docs, {n - len(pipe.missing_views)}/{n} with in_orthanc"
                + "".join(f"\n  poll {what}: {problem}" for what, problem in pipe.problems.items())
                + f"\n--- worker log ---\n{tail(children['worker'].log_path)}"
                f"\n--- listener log ---\n{tail(children['listener'].log_path)}"
                + "".join(
                    f"\n--- {svc} service.log ---\n{tail(stack.state_dir / svc / 'service.log', 15)}"
                    for svc in ("mongo", "orthanc")
                    if any(
                        (svc == "orthanc" and "Orthanc" in what) or (svc == "mongo" and "Mongo" in what)
                        for what in pipe.problems
                    )
                )
            )

        log(f"direct: storescu {n} instances -> Orthanc :{stack.env['COHORTSTREAM_ORTHANC_DICOM_PORT']}")
        base = await orthanc.count_instances()
        d_start, d_end = await storescu(
            stack.env.get("COHORTSTREAM_ORTHANC_AET", "ORTHANC"),
            int(stack.env["COHORTSTREAM_ORTHANC_DICOM_PORT"]),
            direct_batch.directory,
            storescu_log,
        )
        direct_delta = await orthanc.count_instances() - base

        # Let in-flight work settle a moment, then look for duplicates and strays.
        await asyncio.sleep(1.0)
        check_problems: dict[str, str] = {}
        orthanc_total = await bounded(orthanc.count_instances(), "Orthanc /statistics", check_problems)
        docs_total = await bounded(instances.count_documents({}), "MongoDB count_documents", check_problems)
        found = await bounded(
            orthanc.client.post(
                "/tools/find", json={"Level": "Instance", "Query": {"PatientID": pipe_batch.patient_id}}
            ),
            "Orthanc /tools/find",
            check_problems,
        )
        pipeline_in_orthanc = len(found.json()) if found is not None and found.status_code == 200 else None
    finally:
        await orthanc.close()
        await mongo.close()

    # ----------------------------------------------------------------- print
    sizes = pipe_batch.file_sizes
    ack_rate = rate(n, pipe.start, pipe.acked)
    orthanc_rate = rate(n, pipe.start, pipe.orthanc)
    docs_rate = rate(n, pipe.start, pipe.docs)
    views_rate = rate(n, pipe.start, pipe.views)
    direct_rate = rate(n, d_start, d_end)
    lat = pipe.latencies_s
    intervals = pipe.poll_intervals

    def secs(end: float | None, start: float) -> str:
        return "not reached" if end is None else f"{end - start:.2f} s"

    def num(value: float, spec: str, suffix: str = "") -> str:
        return "n/a" if math.isnan(value) else f"{value:{spec}}{suffix}"

    print()
    print(
        f"DICOM ingest benchmark — {n} instances ({math.ceil(n / args.slices)} series x <= {args.slices} "
        f"slices, MR {args.rows}x{args.cols} int16, explicit VR LE), dcmtk storescu -R, one association"
    )
    print(
        f"machine: nproc={os.cpu_count()} (usable {len(os.sched_getaffinity(0))}), "
        f"instance size {min(sizes)}-{max(sizes)} bytes (mean {statistics.mean(sizes):.0f}, "
        f"total {sum(sizes) / 1e6:.1f} MB), write+fsync of one instance-sized file in {work}: "
        f"{fsync_ms(work, sizes[0]):.1f} ms (median of 20), Python {sys.version.split()[0]}"
    )
    print(
        f"ready: listener C-ECHO after {listener_s:.1f}s, worker group Stable after {group_s:.1f}s, "
        f"warm-up instance end to end {warm.views - warm.start:.2f}s (not counted)"
    )
    print()
    rows = [
        ("acknowledged by listener (storescu exit)", pipe.acked, ack_rate),
        ("visible in Orthanc (CountInstances +N)", pipe.orthanc, orthanc_rate),
        ("all N instance docs in MongoDB", pipe.docs, docs_rate),
        ("in MongoDB views with in_orthanc=true", pipe.views, views_rate),
    ]
    print(f"{'pipeline: storescu -> listener -> Kafka -> worker':<52} {'time':>12} {'inst/s':>9} {'vs direct':>10}")
    for label, end, r in rows:
        print(f"  {label:<50} {secs(end, pipe.start):>12} {num(r, '.1f'):>9} {num(r / direct_rate, '.2f', 'x'):>10}")
    print(
        f"{'direct: storescu -> Orthanc DICOM port (storescu exit)':<52} {d_end - d_start:>10.2f} s "
        f"{direct_rate:>9.1f} {1.0:>9.2f}x"
    )
    print()
    print(f"ratio pipeline-ack / direct:      {num(ack_rate / direct_rate, '.2f')}")
    print(
        f"ratio pipeline-visible / direct:  {num(orthanc_rate / direct_rate, '.2f')} (Orthanc), "
        f"{num(views_rate / direct_rate, '.2f')} (MongoDB views with in_orthanc)"
    )
    if lat:
        print(
            f"end-to-end latency per instance (first poll seeing in_orthanc=true minus received_at), n={len(lat)}: "
            f"p50 {percentile(lat, 0.5) * 1000:.0f} ms, p95 {percentile(lat, 0.95) * 1000:.0f} ms, "
            f"max {max(lat) * 1000:.0f} ms"
        )
    if intervals:
        print(
            f"  measured with {POLL_S * 1000:.0f} ms poll resolution (actual MongoDB poll period: mean "
            f"{statistics.mean(intervals) * 1000:.0f} ms, max {max(intervals) * 1000:.0f} ms)"
        )
    print()
    print("checks:")

    def got(value: object) -> str:
        return "no answer" if value is None else str(value)

    print(f"  pipeline phase: {pipe.outcome}" + (f" (poll problems: {pipe.problems})" if pipe.problems else ""))
    print(
        f"  Orthanc instances with PatientID {pipe_batch.patient_id}: {got(pipeline_in_orthanc)} (expected {n}); "
        f"CountInstances grew by {pipe.orthanc_delta} during the pipeline phase, {direct_delta} in the direct one"
    )
    print(
        f"  Orthanc total {got(orthanc_total)} (expected {2 * n + 1} incl. warm-up), "
        f"MongoDB instance docs {got(docs_total)} (expected {n + 1})"
        + (f" (check problems: {check_problems})" if check_problems else "")
    )
    print(
        f"  view docs missing in_orthanc: {len(pipe.missing_views)}"
        + (f" (e.g. {pipe.missing_views[:3]})" if pipe.missing_views else "")
    )
    print(
        f"  files left in staging: {count_files(work / 'staging')}, in quarantine: {count_files(work / 'quarantine')}"
    )
    for name, child in children.items():
        problems = log_problems(child.log_path)
        print(f"  {name} log: {len(problems)} error line(s)" + "".join(f"\n    {p[:300]}" for p in problems))
    return 0 if pipe.outcome == "complete" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2000, help="instances per phase (default 2000)")
    parser.add_argument("--slices", type=int, default=100, help="slices per series (default 100)")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--cols", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for all N to arrive")
    parser.add_argument(
        "--stall", type=float, default=60.0, help="give up after this many seconds without progress (default 60)"
    )
    parser.add_argument("--keep-stack", action="store_true", help="leave the stack and the temp dir in place")
    args = parser.parse_args(argv)
    if args.instances < 1 or args.slices < 1:
        parser.error("--instances and --slices must be >= 1")
    for tool in (STORESCU, ECHOSCU):
        if not os.access(tool, os.X_OK):
            parser.error(f"{tool} (dcmtk) is needed")

    work = Path(tempfile.mkdtemp(prefix="cohortstream-bench-", dir="/tmp"))
    stack = Stack(state_dir=work / "stack", log_path=work / "stack.log")
    children: dict[str, Child] = {}
    status = 1
    try:
        stack.up()
        status = asyncio.run(measure(args, work, stack, children))
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
