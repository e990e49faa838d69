"""pynetdicom's two polling loops per association, woken by events instead of a 1 ms sleep.

pynetdicom serves each association with two threads that poll. Its DICOM upper layer
(DUL) thread checks the socket and its send queue in a loop and, when neither has
anything, sleeps ``_run_loop_delay`` (1 ms; its source says "TODO: try and make this
event based rather than running loops"). The association's own reactor thread
(``Association._run_reactor``) sleeps 1 ms before each look at the DIMSE message queue
the DUL fills. Every C-STORE therefore waits up to a millisecond for the DUL to notice
the request's next PDU, up to another for the reactor to notice the complete request,
and again for the DUL to notice the response the handler queued. At one association,
where each C-STORE waits for the one before it, those sleeps are a large share of a bare
pynetdicom SCP's time per instance here (132 KB MR slices: setting the DUL's delay to
0.1 ms made the bare SCP 1.28x faster), and shortening the sleeps instead would burn CPU
on every idle association.

:class:`PromptDUL` keeps pynetdicom's loop and state machine and replaces only the
sleep: the loop waits in ``select`` on the association's socket and on a pipe that
:meth:`PromptDUL.send_pdu` writes to. It wakes as soon as the peer sends or the
association queues a PDU. :class:`PromptAssociation` does the same for the reactor: its
1 ms sleep becomes a wait on the DIMSE message queue's own condition, which the DUL
signals when it queues a complete message. pynetdicom's reactor calls
``time.sleep(0.001)`` through the ``time`` name of ``pynetdicom.association``; that name
is bound (once, process-wide) to :class:`_ReactorClock`, which is the ``time`` module
for every caller except the reactor loop of a :class:`PromptAssociation`. Both waits
end after :data:`IDLE_WAIT_S` (20 ms) when nothing happens, so an idle association's two
threads wake about 50 times a second each instead of 1,000. :class:`PromptRequestHandler`
gives every accepted association both; the listener's servers use it
(``request_handler``, the association server's extension point).

Waking at once costs a thread wake-up per PDU instead of one batch per millisecond.
Measured on 2 cores (2026-12-01, bench/README.md, three benchmark runs each): with both
loops event-driven the listener alone acknowledged 0.84-0.98x the plain bare SCP at one
association and 0.71-0.83x at four (0.70-0.76x and 0.58-0.72x before), and with the
worker on the same cores 0.36-0.46x / 0.41-0.50x (0.32-0.50x / 0.28-0.39x before). A :class:`PromptGate` shared
by the process's associations lets them wait promptly only while at most ``limit`` are
active (``dicom_scp_prompt_associations``, default 4; 0: pynetdicom's loops untouched),
and beyond that they poll as pynetdicom does: more associations than that were not
measured.

This leans on pynetdicom internals (``_is_transport_event``, ``_run_loop_delay``,
``send_pdu``, ``kill_dul``, ``socket`` and the two queues of the DUL; the ``time`` name,
``_run_reactor`` and ``dimse.msg_queue`` of the association), checked by
:func:`adoptable` and :func:`reactor_adoptable`: a pynetdicom without them keeps its own
loops (logged once), and ``tests/unit/test_prompt_dul.py`` fails on such an upgrade.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import sys
import threading
import time
from types import ModuleType
from typing import Any

import pynetdicom.association as pynetdicom_association
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import RequestHandler

__all__ = [
    "PromptAssociation",
    "PromptDUL",
    "PromptGate",
    "PromptRequestHandler",
    "adoptable",
    "reactor_adoptable",
]

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
_REACTOR_DELAY_S = 0.001
"""The sleep in pynetdicom's ``Association._run_reactor`` loop."""
IDLE_WAIT_S = 0.02
"""How long a prompt loop waits when nothing happens before it looks again anyway (what
needs no event: the ARTIM and idle timers, a socket closed from another thread, the DUL
thread having died). 20 ms bounds how late those are seen; a request, a response to send,
a release or an abort wakes the loops at once.
With pynetdicom's 1 ms bound kept, as before 2026-12-01, each idle association still woke
its two threads about 2,000 times a second, and the listener alone gained nothing from
the event-driven DUL in the benchmark; with this bound it went from 0.72-0.87x to
1.19-1.20x of the bare SCP at one association in an A/B run that day."""
_warned = threading.Event()
_reactor_warned = threading.Event()
_clock_lock = threading.Lock()


def adoptable(dul: object) -> bool:
    """Whether this DUL has the internals :class:`PromptDUL` replaces."""
    return isinstance(dul, DULServiceProvider) and all(hasattr(dul, name) for name in _REQUIRED)


def reactor_adoptable(assoc: object) -> bool:
    """Whether this association's reactor sleeps the way :class:`PromptAssociation` replaces:
    ``time.sleep(0.001)`` through ``pynetdicom.association``'s ``time`` name, with the
    DIMSE messages and the DUL's primitives for the user (release and abort requests) on
    a ``queue.Queue`` each."""
    clock = pynetdicom_association.__dict__.get("time")
    reactor = getattr(Association, "_run_reactor", None)
    messages = getattr(getattr(assoc, "dimse", None), "msg_queue", None)
    user_queue = getattr(getattr(assoc, "dul", None), "to_user_queue", None)
    return (
        isinstance(assoc, Association)
        and (clock is time or isinstance(clock, _ReactorClock))
        and reactor is not None
        and _REACTOR_DELAY_S in reactor.__code__.co_consts
        and "sleep" in reactor.__code__.co_names
        and isinstance(messages, queue.Queue)
        and type(user_queue) is queue.Queue
    )


class PromptGate:
    """Counts a process's active :class:`PromptDUL` s: they and their
    :class:`PromptAssociation` s wait promptly only while at most ``limit`` are active
    (``0``: never)."""

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
    """The wait's bound while the gate says prompt (:data:`IDLE_WAIT_S`)."""
    _poll_s: float
    """pynetdicom's own delay (1 ms): the sleep while the gate says crowded."""
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
        prompt._poll_s = float(dul._run_loop_delay) or 0.001
        prompt._wait_s = IDLE_WAIT_S
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
        """Block until the socket is readable, a PDU was queued, or :data:`IDLE_WAIT_S`
        passed (pynetdicom's own 1 ms sleep while the gate says the process is crowded)."""
        if not self._gate.prompt:
            time.sleep(self._poll_s)
            return
        waitables: list[Any] = [self._wake_r]
        sock = getattr(self.socket, "socket", None)
        if sock is not None:
            waitables.append(sock)
        try:
            ready, _, _ = select.select(waitables, [], [], self._wait_s)
        except (OSError, ValueError):  # the socket closed meanwhile: the loop sees that next
            time.sleep(self._poll_s)
            return
        if self._wake_r in ready:
            with contextlib.suppress(OSError):  # BlockingIOError: drained
                while os.read(self._wake_r, 4096):
                    pass


class _UserQueue(queue.Queue):  # type: ignore[type-arg]
    """The DUL's queue of primitives for the user (A-RELEASE, A-ABORT, ...) that also wakes
    the reactor waiting on ``wake``: a release or abort is answered at once, not at the
    reactor's next look (an association per instance, as some modalities send, would
    otherwise wait up to :data:`IDLE_WAIT_S` for every release)."""

    def __init__(self, wake: threading.Condition) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        with self._wake:
            self._wake.notify_all()


class PromptAssociation(Association):
    """An acceptor association whose reactor's 1 ms sleep ends when a DIMSE message, or a
    primitive for the user such as a release request, is queued (made from pynetdicom's
    own with :meth:`adopt`, before its thread starts)."""

    _gate: PromptGate
    _reactor_wait_s: float

    @classmethod
    def adopt(cls, assoc: Association, gate: PromptGate) -> bool:
        """Turn ``assoc`` (not yet started) into a :class:`PromptAssociation` sharing
        ``gate`` (which its :class:`PromptDUL` counts it in); ``False``, and ``assoc``
        unchanged, when this pynetdicom's reactor is not the one replaced."""
        if not reactor_adoptable(assoc):
            if not _reactor_warned.is_set():
                _reactor_warned.set()
                log.warning("this pynetdicom's association reactor has changed; it keeps its 1 ms polling loop")
            return False
        _install_reactor_clock()
        user_queue = _UserQueue(assoc.dimse.msg_queue.not_empty)
        while not assoc.dul.to_user_queue.empty():  # nothing yet, before the thread starts
            user_queue.put(assoc.dul.to_user_queue.get_nowait())
        assoc.dul.to_user_queue = user_queue
        assoc.__class__ = cls
        prompt: PromptAssociation = assoc  # type: ignore[assignment]  # the class was just changed
        prompt._gate = gate
        prompt._reactor_wait_s = IDLE_WAIT_S
        return True

    def reactor_sleep(self, seconds: float) -> None:
        """The reactor's pause: until a DIMSE message or a primitive for the user is queued,
        at most ``_reactor_wait_s`` (``seconds`` itself while the gate says the cores are
        busy)."""
        if not self._gate.prompt:
            time.sleep(seconds)
            return
        messages = self.dimse.msg_queue
        with messages.not_empty:  # the queue's own mutex: put() notifies this condition
            if not messages.queue and self.dul.to_user_queue.empty():
                messages.not_empty.wait(self._reactor_wait_s)


class _ReactorClock:
    """``pynetdicom.association``'s ``time``: the ``time`` module, except that the reactor
    loop of a :class:`PromptAssociation` sleeps through :meth:`PromptAssociation.reactor_sleep`."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real
        self._reactor = Association._run_reactor.__code__

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def sleep(self, seconds: float) -> None:
        thread = threading.current_thread()
        if isinstance(thread, PromptAssociation) and sys._getframe(1).f_code is self._reactor:
            thread.reactor_sleep(seconds)
        else:
            self._real.sleep(seconds)


def _install_reactor_clock() -> None:
    """Bind ``pynetdicom.association.time`` to a :class:`_ReactorClock` (once per process)."""
    with _clock_lock:
        if not isinstance(pynetdicom_association.__dict__.get("time"), _ReactorClock):
            pynetdicom_association.time = _ReactorClock(sys.modules["time"])  # type: ignore[attr-defined,assignment]


class PromptRequestHandler(RequestHandler):
    """pynetdicom's request handler, giving each accepted association a :class:`PromptDUL`
    and making it a :class:`PromptAssociation`.

    Bind the process's gate with :meth:`with_gate` (the server creates one handler per
    connection, calling the class)."""

    gate: PromptGate = PromptGate(1)

    @classmethod
    def with_gate(cls, gate: PromptGate) -> type[PromptRequestHandler]:
        """A subclass whose associations share ``gate``."""
        return type(cls.__name__, (cls,), {"gate": gate})

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # 0: pynetdicom's own loops, untouched; PromptDUL.adopt counts the association in the gate.
        if self.gate.limit > 0 and PromptDUL.adopt(assoc.dul, self.gate):
            PromptAssociation.adopt(assoc, self.gate)
        return assoc
