"""pynetdicom's DICOM upper layer (DUL), woken by events instead of a 1 ms poll.

pynetdicom's DUL thread checks the socket and its send queue in a loop and, when neither
has anything, sleeps ``_run_loop_delay`` (1 ms; its source says "TODO: try and make this
event based rather than running loops"). Every C-STORE therefore waits up to a
millisecond for the DUL to notice the request's next PDU, and again for it to notice the
response the handler queued. At one association, where each C-STORE waits for the one
before it, that sleep was about a fifth of a bare pynetdicom SCP's time per instance
here (132 KB MR slices: setting the delay to 0.1 ms made the bare SCP 1.28x faster),
and shortening the sleep instead would burn CPU on every idle association.

:class:`PromptDUL` keeps pynetdicom's loop and state machine and replaces only the
sleep: the loop waits in ``select`` on the association's socket and on a pipe that
:meth:`PromptDUL.send_pdu` writes to, for at most the same delay. It wakes as soon as
the peer sends or the association queues a PDU, and an idle association still wakes
about a thousand times a second, as before. :class:`PromptRequestHandler` gives every
accepted association one; the listener's servers use it (``request_handler``, the
association server's extension point).

Waking at once costs a ``select`` and a thread wake-up per PDU instead of one batch per
millisecond, which pays only while cores are idle between C-STOREs. Measured on 2 cores
(2026-12-01, bench/README.md): the bare SCP with it 1.02-1.19x the plain one at one
association and 0.82-0.99x at four; our listener alone at one association 1.23x in an
A/B run but within noise in the benchmark; and with the workers on the same cores one
association tended to be slower (acknowledged 0.16-0.21x of the bare SCP in six runs with
it, 0.20-0.24x in three without), since each PDU then waits for a core on its own. So it
is off by default: a :class:`PromptGate` shared by the process's associations lets them
wait promptly only while at most ``limit`` are active (``dicom_scp_prompt_associations``,
default 0: pynetdicom's DUL untouched), for a listener on cores of its own.

This leans on pynetdicom internals (``_is_transport_event``, ``_run_loop_delay``,
``send_pdu``, ``kill_dul``, ``socket`` and the two queues), checked by :func:`adoptable`: a pynetdicom without them keeps
its own DUL (logged once), and ``tests/unit/test_prompt_dul.py`` fails on such an
upgrade.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from typing import Any

from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import RequestHandler

__all__ = ["PromptDUL", "PromptGate", "PromptRequestHandler", "adoptable", "default_prompt_associations"]

log = logging.getLogger(__name__)

_REQUIRED = (
    "_is_transport_event",
    "_run_loop_delay",
    "send_pdu",
    "kill_dul",
    "socket",
    "to_provider_queue",
    "event_queue",
)
_warned = threading.Event()


def adoptable(dul: object) -> bool:
    """Whether this DUL has the internals :class:`PromptDUL` replaces."""
    return isinstance(dul, DULServiceProvider) and all(hasattr(dul, name) for name in _REQUIRED)


def default_prompt_associations() -> int:
    """Half the CPU cores this process may use, at least one: a starting point for a
    listener on cores of its own (``bench/bare_scp.py --prompt-dul`` uses it)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


class PromptGate:
    """Counts a process's active :class:`PromptDUL` s: they wait promptly only while at
    most ``limit`` are active (``0``: never)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active = 0
        self._lock = threading.Lock()

    @property
    def prompt(self) -> bool:
        """Whether associations should wake at once now (read without the lock: a stale
        answer only costs one wait of the other kind)."""
        return self._active <= self.limit

    def enter(self) -> None:
        with self._lock:
            self._active += 1

    def leave(self) -> None:
        with self._lock:
            self._active -= 1


class PromptDUL(DULServiceProvider):
    """A DUL whose idle wait ends when the peer sends or a PDU is queued to send.

    Made from pynetdicom's own with :meth:`adopt` (before its thread starts), so
    pynetdicom builds it exactly as usual.
    """

    _wait_s: float
    _wake_r: int
    _wake_w: int
    _gate: PromptGate

    @classmethod
    def adopt(cls, dul: DULServiceProvider, gate: PromptGate) -> bool:
        """Turn ``dul`` (not yet started) into a :class:`PromptDUL`; ``False``, and
        ``dul`` unchanged, when this pynetdicom lacks what it replaces."""
        if not adoptable(dul):
            if not _warned.is_set():
                _warned.set()
                log.warning("this pynetdicom's DUL has changed; associations use its 1 ms polling loop")
            return False
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        dul.__class__ = cls
        prompt: PromptDUL = dul  # type: ignore[assignment]  # the class was just changed
        prompt._wait_s = float(dul._run_loop_delay) or 0.001
        prompt._wake_r, prompt._wake_w = wake_r, wake_w
        prompt._gate = gate
        gate.enter()
        # The loop's own sleep is now the wait in _is_transport_event (a yield remains).
        dul._run_loop_delay = 0.0
        return True

    def run(self) -> None:
        # The thread's run (looked up when it starts, unlike the reactor method pynetdicom
        # bound as its target when the DUL was built): release the gate and the pipe
        # however the reactor ends.
        try:
            super().run()
        finally:
            self._gate.leave()
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def _wake(self) -> None:
        # A full pipe wakes the loop already; a closed one means the loop has ended.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def _is_transport_event(self) -> bool:
        if super()._is_transport_event():
            return True
        if not (self.to_provider_queue.empty() and self.event_queue.empty()):
            return False  # work is waiting: the loop goes on at once, as pynetdicom's does
        self._wait()
        return bool(super()._is_transport_event())

    def _wait(self) -> None:
        """Block until the socket is readable, a PDU was queued, or the delay passed
        (only the delay while the gate says the cores are busy)."""
        if not self._gate.prompt:
            time.sleep(self._wait_s)
            return
        waitables: list[Any] = [self._wake_r]
        sock = getattr(self.socket, "socket", None)
        if sock is not None:
            waitables.append(sock)
        try:
            ready, _, _ = select.select(waitables, [], [], self._wait_s)
        except (OSError, ValueError):  # the socket closed meanwhile: the loop sees that next
            time.sleep(self._wait_s)
            return
        if self._wake_r in ready:
            with contextlib.suppress(OSError):  # BlockingIOError: drained
                while os.read(self._wake_r, 4096):
                    pass


class PromptRequestHandler(RequestHandler):
    """pynetdicom's request handler, giving each accepted association a :class:`PromptDUL`.

    Bind the process's gate with :meth:`with_gate` (the server creates one handler per
    connection, calling the class)."""

    gate: PromptGate = PromptGate(1)

    @classmethod
    def with_gate(cls, gate: PromptGate) -> type[PromptRequestHandler]:
        """A subclass whose associations share ``gate``."""
        return type(cls.__name__, (cls,), {"gate": gate})

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        if self.gate.limit > 0:  # 0: pynetdicom's own DUL, untouched
            PromptDUL.adopt(assoc.dul, self.gate)
        return assoc
