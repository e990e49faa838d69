"""The deployed worker: one child process per lane (:mod:`cohortstream.lanes`), supervised.

Each child is ``cohortstream worker --lane NAME`` with the parent's settings in its
environment, its own data directory and, when the worker's metrics port is set, its own
metrics port (``worker_metrics_port + i``, i counting lanes, then replicas). With
``worker_replicas`` N, every lane runs N times, all in the lane's consumer group: Kafka
splits the lane's partitions between them, and takes a dead one's over. The parent:

- relays the children's output to its own, and prints :data:`READY_LINE` once every lane
  printed :data:`streams.app.READY_MARKER` (at any log level; the local stack's health
  check and the benchmarks wait for that line);
- forwards SIGTERM/SIGINT and waits up to ``worker_shutdown_timeout_s`` for the lanes to
  stop cleanly (faust commits only what was applied; a message held by a sink paused by
  an outage is released uncommitted, see ``streams.app.CohortStreamApp``), then kills what
  is left, which commits nothing more;
- restarts a lane that died, with a growing delay, so one crashed lane never stops the
  others;
- asks the kernel to kill every child when the parent dies (``PR_SET_PDEATHSIG``): a
  SIGKILL of the worker leaves no lane running, as with a single process.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

from cohortstream.errors import ConfigurationError
from cohortstream.lanes import LANES
from cohortstream.settings import Settings, env_var_name, settings_environment
from streams.app import READY_MARKER

__all__ = ["READY_LINE", "check_metrics_ports", "run_worker"]

log = logging.getLogger(__name__)

READY_LINE = "worker ready: every lane is running"
_PR_SET_PDEATHSIG = 1
_POLL_S = 0.2
_MAX_RESTART_DELAY_S = 30.0


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class _Lane:
    name: str
    lane: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    ready: bool = False
    restarts: int = 0
    restart_at: float | None = None
    relays: list[threading.Thread] = field(default_factory=list)


class _Supervisor:
    def __init__(self, settings: Settings, lanes: Sequence[str], replicas: int) -> None:
        base = os.environ | settings_environment(settings)
        self._lanes: list[_Lane] = []
        for replica in range(replicas):
            for i, lane in enumerate(lanes):
                index = replica * len(lanes) + i
                name = lane if replicas == 1 else f"{lane}#{replica + 1}"
                env = dict(base)
                env[env_var_name("worker_metrics_port")] = str(
                    settings.worker_metrics_port + index if settings.worker_metrics_port else 0
                )
                env[env_var_name("data_dir")] = str(settings.data_dir / name.replace("#", "-"))
                self._lanes.append(_Lane(name, lane, env))
        self._timeout_s = settings.worker_shutdown_timeout_s
        self._stopping = threading.Event()
        self._announced = False
        self._out_lock = threading.Lock()

    def _relay(self, lane: _Lane, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            with self._out_lock:
                sys.stdout.buffer.write(raw)
                sys.stdout.buffer.flush()
            if READY_MARKER.encode() in raw:
                lane.ready = True

    def _start(self, lane: _Lane) -> None:
        argv = [sys.executable, "-m", "cohortstream.cli", "worker", "--lane", lane.lane]
        lane.process = subprocess.Popen(
            argv,
            env=lane.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        lane.ready = False
        lane.restart_at = None
        assert lane.process.stdout is not None
        relay = threading.Thread(target=self._relay, args=(lane, lane.process.stdout), daemon=True)
        relay.start()
        lane.relays = [relay]
        log.info("worker lane started", extra={"lane": lane.name, "pid": lane.process.pid})

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for lane in self._lanes:
            self._start(lane)
        while not self._stopping.wait(_POLL_S):
            now = time.monotonic()
            for lane in self._lanes:
                assert lane.process is not None
                code = lane.process.poll()
                if code is not None and lane.restart_at is None:
                    lane.restarts += 1
                    delay = min(2.0**lane.restarts, _MAX_RESTART_DELAY_S)
                    lane.restart_at = now + delay
                    lane.ready = False
                    log.error(
                        "worker lane exited; restarting it",
                        extra={"lane": lane.name, "exit_code": code, "restart_in_s": delay},
                    )
                elif lane.restart_at is not None and now >= lane.restart_at:
                    self._start(lane)
            if not self._announced and all(lane.ready for lane in self._lanes):
                self._announced = True
                log.info(READY_LINE, extra={"lanes": [lane.name for lane in self._lanes]})
                with self._out_lock:
                    print(READY_LINE, flush=True)
        return self._stop()

    def _stop(self) -> int:
        running = [lane for lane in self._lanes if lane.process is not None and lane.process.poll() is None]
        log.info("stopping worker lanes", extra={"lanes": [lane.name for lane in running]})
        for lane in running:
            assert lane.process is not None
            lane.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._timeout_s
        clean = True
        for lane in running:
            assert lane.process is not None
            try:
                lane.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                clean = False
                log.error(
                    "worker lane did not stop in time; killing it",
                    extra={"lane": lane.name, "timeout_s": self._timeout_s},
                )
                lane.process.kill()
                lane.process.wait()
        for lane in self._lanes:
            for relay in lane.relays:
                relay.join(timeout=1.0)
        return 0 if clean else 1


def run_worker(settings: Settings, lanes: Sequence[str] | None = None) -> int:
    """Run ``lanes`` (all when None), ``worker_replicas`` processes each, as supervised
    child processes until SIGTERM/SIGINT. The replicas of a lane share its consumer group,
    so Kafka splits the lane's partitions between them."""
    chosen = list(LANES) if not lanes else list(lanes)
    unknown = [lane for lane in chosen if lane not in LANES]
    if unknown:
        raise ConfigurationError(f"unknown worker lane(s) {', '.join(unknown)} (known: {', '.join(LANES)})")
    check_metrics_ports(settings, len(chosen) * settings.worker_replicas)
    return _Supervisor(settings, chosen, settings.worker_replicas).run()


def check_metrics_ports(settings: Settings, lanes: int) -> None:
    """Refuse a layout where a lane's metrics port is the annotator's (a lane would fail
    to bind it and restart for ever): lanes take ``worker_metrics_port`` .. ``+ lanes - 1``."""
    base = settings.worker_metrics_port
    if base and settings.annotator_metrics_port and base <= settings.annotator_metrics_port < base + lanes:
        raise ConfigurationError(
            f"{env_var_name('worker_metrics_port')}={base}: the worker's {lanes} lanes serve metrics on ports "
            f"{base}-{base + lanes - 1}, which includes {env_var_name('annotator_metrics_port')}="
            f"{settings.annotator_metrics_port}; move one of them"
        )
