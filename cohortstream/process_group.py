"""Run several copies of a cohortstream command as supervised child processes.

The deployed worker runs each lane (and each replica of it) as a child process
(:mod:`streams.supervisor`), and the DICOM listener can run several processes on one
port (:mod:`producers.dicom.processes`). Both need the same supervision, which lives
here:

- the children's output is relayed to the parent's, and :attr:`ProcessGroup.ready_line`
  is printed once every child printed its ready marker (health checks and benchmarks wait
  for that line);
- SIGTERM/SIGINT are forwarded; the children get ``shutdown_timeout_s`` to stop cleanly,
  then whatever is left is killed;
- a child that dies is restarted with a growing delay, so one crash never stops the
  others;
- the kernel kills every child when the parent dies (``PR_SET_PDEATHSIG``): a SIGKILL of
  the parent leaves nothing running, as with a single process.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

__all__ = ["ChildProcess", "ProcessGroup"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.2
_MAX_RESTART_DELAY_S = 30.0


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class ChildProcess:
    """One supervised child: its name in logs, its command line and its environment."""

    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    ready: bool = False
    restarts: int = 0
    restart_at: float | None = None
    relays: list[threading.Thread] = field(default_factory=list)


class ProcessGroup:
    """Start ``children``, keep them running until SIGTERM/SIGINT, then stop them."""

    def __init__(
        self,
        children: Sequence[ChildProcess],
        *,
        ready_marker: str,
        ready_line: str,
        shutdown_timeout_s: float,
        kind: str,
    ) -> None:
        self._children = list(children)
        self._ready_marker = ready_marker.encode()
        self.ready_line = ready_line
        self._timeout_s = shutdown_timeout_s
        self._kind = kind
        self._stopping = threading.Event()
        self._announced = False
        self._out_lock = threading.Lock()

    def _relay(self, child: ChildProcess, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            with self._out_lock:
                sys.stdout.buffer.write(raw)
                sys.stdout.buffer.flush()
            if self._ready_marker in raw:
                child.ready = True

    def _start(self, child: ChildProcess) -> None:
        child.process = subprocess.Popen(
            child.argv,
            env=child.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        child.ready = False
        child.restart_at = None
        assert child.process.stdout is not None
        relay = threading.Thread(target=self._relay, args=(child, child.process.stdout), daemon=True)
        relay.start()
        child.relays = [relay]
        log.info(f"{self._kind} started", extra={"child": child.name, "pid": child.process.pid})

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping.set()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; 0 when every child stopped in time, 1 otherwise."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for child in self._children:
            self._start(child)
        while not self._stopping.wait(_POLL_S):
            now = time.monotonic()
            for child in self._children:
                assert child.process is not None
                code = child.process.poll()
                if code is not None and child.restart_at is None:
                    child.restarts += 1
                    delay = min(2.0**child.restarts, _MAX_RESTART_DELAY_S)
                    child.restart_at = now + delay
                    child.ready = False
                    log.error(
                        f"{self._kind} exited; restarting it",
                        extra={"child": child.name, "exit_code": code, "restart_in_s": delay},
                    )
                elif child.restart_at is not None and now >= child.restart_at:
                    self._start(child)
            if not self._announced and all(child.ready for child in self._children):
                self._announced = True
                log.info(self.ready_line, extra={"children": [child.name for child in self._children]})
                with self._out_lock:
                    print(self.ready_line, flush=True)
        return self._stop()

    def _stop(self) -> int:
        running = [c for c in self._children if c.process is not None and c.process.poll() is None]
        log.info(f"stopping {self._kind}s", extra={"children": [c.name for c in running]})
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._timeout_s
        clean = True
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                clean = False
                log.error(
                    f"{self._kind} did not stop in time; killing it",
                    extra={"child": child.name, "timeout_s": self._timeout_s},
                )
                child.process.kill()
                child.process.wait()
        for child in self._children:
            for relay in child.relays:
                relay.join(timeout=1.0)
        return 0 if clean else 1
