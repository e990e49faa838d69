"""The listener's event-driven DICOM upper layer and association reactor
(producers/dicom/prompt_dul.py).

Real pynetdicom associations on loopback, in-process: a bare SCP served with
:class:`PromptRequestHandler`, and the listener itself (with a stand-in publisher, as in
test_dicom_listener_durability.py). What is checked is behaviour, not speed: each
accepted association gets a :class:`PromptDUL` and becomes a :class:`PromptAssociation`;
the DUL's wait ends when the peer's data arrives or a PDU is queued, and the reactor's
when a DIMSE message is queued (not after a fixed sleep); while the gate says the process
is crowded both sleep as pynetdicom does; the gate's count and the wake pipe are
released when the association ends; and an idle association's two threads wake about
50 times a second each, not pynetdicom's 1,000.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pydicom
import pynetdicom.association as pynetdicom_association
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from cohortstream.settings import Settings
from producers.dicom import DicomListener, prompt_dul
from producers.dicom.prompt_dul import (
    IDLE_WAIT_S,
    PromptAssociation,
    PromptDUL,
    PromptGate,
    PromptRequestHandler,
    adoptable,
    reactor_adoptable,
)
from tests.listener_settings import listener_settings
from tests.net import free_port
from tests.polling import until


def _ct() -> pydicom.Dataset:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    return pydicom.dcmread(path)


class Server:
    """A pynetdicom Storage SCP served with the prompt request handler."""

    def __init__(self, gate: PromptGate) -> None:
        self.gate = gate
        self.duls: list[DULServiceProvider] = []
        self.associations: list[Association] = []
        ae = AE(ae_title="PROMPT")
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax)
        ae.add_supported_context(Verification)
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
        ]
        self.server = ae.make_server(
            ("127.0.0.1", free_port()),
            evt_handlers=handlers,
            server_class=ThreadedAssociationServer,
            request_handler=PromptRequestHandler.with_gate(gate),
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        ae._servers.append(self.server)  # as start_server does: shutdown() removes it
        self.port = self.server.server_address[1]

    def _on_store(self, event: Any) -> int:
        self.duls.append(event.assoc.dul)
        self.associations.append(event.assoc)
        return 0x0000

    def associate(self) -> Association:
        ds = _ct()
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", self.port, ae_title="PROMPT")
        assert assoc.is_established
        return assoc


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server(PromptGate(4))
    yield running
    running.server.shutdown()


def test_this_pynetdicom_has_what_the_prompt_dul_replaces() -> None:
    """Fails on a pynetdicom upgrade that renames the DUL internals PromptDUL relies on
    (the listener would then fall back to pynetdicom's polling, logged once)."""
    assoc = Association(AE(), "acceptor")
    assert adoptable(assoc.dul)
    assert assoc.dul._run_loop_delay == 0.001


def test_this_pynetdicom_has_what_the_prompt_reactor_replaces() -> None:
    """Fails on a pynetdicom upgrade whose association reactor no longer sleeps 1 ms through
    ``pynetdicom.association``'s ``time`` or no longer queues DIMSE messages on a Queue
    (the listener would then keep pynetdicom's reactor, logged once)."""
    assert reactor_adoptable(Association(AE(), "acceptor"))


def test_accepted_associations_get_a_prompt_dul_and_release_it(server: Server) -> None:
    assoc = server.associate()
    try:
        assert server.gate._active == 1
        for _ in range(3):
            assert int(assoc.send_c_store(_ct()).Status) == 0x0000
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()
    assert len(server.duls) == 3 and all(type(dul) is PromptDUL for dul in server.duls)
    assert all(type(a) is PromptAssociation for a in server.associations)
    assert isinstance(pynetdicom_association.__dict__["time"], prompt_dul._ReactorClock)
    dul = cast(PromptDUL, server.duls[0])
    assert dul._run_loop_delay == 0.0  # the loop's own sleep is replaced by the wait
    assert (dul._wait_s, dul._poll_s) == (IDLE_WAIT_S, 0.001)
    until(lambda: server.gate._active == 0, what="the gate to count the association out")
    until(lambda: not dul.is_alive(), what="the DUL thread to end")
    assert dul._wake_r == dul._wake_w == -1  # ... and the wake pipe is closed


def test_the_wait_ends_when_the_peer_sends(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a 10 s wait, requests are still answered at once: the socket wakes the DUL."""
    real_adopt = PromptDUL.adopt

    def adopt_with_a_long_wait(dul: DULServiceProvider, gate: PromptGate) -> bool:
        adopted = real_adopt(dul, gate)
        dul._wait_s = 10.0  # type: ignore[attr-defined]
        return adopted

    monkeypatch.setattr(PromptDUL, "adopt", staticmethod(adopt_with_a_long_wait))
    assoc = server.associate()
    try:
        started = time.monotonic()
        for _ in range(5):
            assert int(assoc.send_c_echo().Status) == 0x0000
        assert time.monotonic() - started < 5.0  # not one 10 s wait per request or response
    finally:
        assoc.release()


def test_a_queued_pdu_wakes_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """send_pdu ends the wait: the response goes out without waiting for the delay."""
    dul = Association(AE(), "acceptor").dul
    assert PromptDUL.adopt(dul, PromptGate(1))
    prompt: PromptDUL = dul  # type: ignore[assignment]
    prompt._wait_s = 10.0
    woke, selecting = threading.Event(), threading.Event()
    real_select = select.select

    def entering_select(*args: Any) -> Any:
        selecting.set()
        return real_select(*args)

    # prompt_dul's own name only: pynetdicom's threads keep the real module.
    monkeypatch.setattr(prompt_dul, "select", SimpleNamespace(select=entering_select))

    def wait_once() -> None:
        prompt._wait()
        woke.set()

    waiter = threading.Thread(target=wait_once, daemon=True)
    waiter.start()
    assert selecting.wait(5.0)  # the waiter is in its 10 s select
    assert not woke.is_set()
    from pynetdicom.pdu_primitives import P_DATA

    prompt.send_pdu(P_DATA())
    assert woke.wait(5.0)
    for fd in (prompt._wake_r, prompt._wake_w):
        os.close(fd)


def test_a_crowded_gate_sleeps_like_pynetdicom(monkeypatch: pytest.MonkeyPatch) -> None:
    dul = Association(AE(), "acceptor").dul
    gate = PromptGate(1)
    assert PromptDUL.adopt(dul, gate)
    prompt: PromptDUL = dul  # type: ignore[assignment]
    slept: list[float] = []

    def no_select(*args: Any) -> Any:
        pytest.fail("waited on the socket while crowded")

    # prompt_dul's own names only: pynetdicom's threads keep the real modules.
    monkeypatch.setattr(prompt_dul, "time", SimpleNamespace(sleep=slept.append))
    monkeypatch.setattr(prompt_dul, "select", SimpleNamespace(select=no_select))
    answers = [gate.prompt]  # one association (this one), limit one
    gate.enter()  # a second: more than the limit
    answers.append(gate.prompt)
    assert answers == [True, False]
    prompt._wait()
    assert slept == [0.001]
    gate.leave()
    assert gate.prompt
    never = PromptGate(0)
    never.enter()
    assert not never.prompt  # 0: never, once any association is active
    for fd in (prompt._wake_r, prompt._wake_w):
        os.close(fd)


def test_an_idle_association_wakes_about_every_20_ms_in_both_threads(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []  # the DUL's
    pauses: list[float] = []  # the reactor's
    real_wait, real_pause = PromptDUL._wait, PromptAssociation.reactor_sleep

    def counting_wait(self: PromptDUL) -> None:
        waits.append(self._wait_s)
        real_wait(self)

    def counting_pause(self: PromptAssociation, seconds: float) -> None:
        pauses.append(self._reactor_wait_s)
        real_pause(self, seconds)

    monkeypatch.setattr(PromptDUL, "_wait", counting_wait)
    monkeypatch.setattr(PromptAssociation, "reactor_sleep", counting_pause)
    assoc = server.associate()
    try:
        assert int(assoc.send_c_echo().Status) == 0x0000
        before, started = (len(waits), len(pauses)), time.monotonic()
        time.sleep(0.5)  # the input this test needs: half a second of an idle association
        elapsed, counts = time.monotonic() - started, (len(waits) - before[0], len(pauses) - before[1])
    finally:
        assoc.release()
    assert waits and all(bound == IDLE_WAIT_S for bound in waits)
    assert pauses and all(bound == IDLE_WAIT_S for bound in pauses)
    # Each wait blocks for its bound when nothing happens: not a spin, and not pynetdicom's
    # 1 ms polls (about 500 wake-ups per thread in this half second).
    for count in counts:
        assert 0 < count <= elapsed / IDLE_WAIT_S * 1.5 + 2


def _reactor(gate: PromptGate, wait_s: float) -> PromptAssociation:
    assoc = Association(AE(), "acceptor")
    assert PromptAssociation.adopt(assoc, gate)
    prompt = cast(PromptAssociation, assoc)
    prompt._reactor_wait_s = wait_s
    return prompt


def test_a_queued_message_wakes_the_reactor() -> None:
    """The reactor's pause ends when the DUL queues a complete DIMSE message."""
    prompt = _reactor(PromptGate(1), wait_s=10.0)
    queue = prompt.dimse.msg_queue
    woke = threading.Event()

    def pause_once() -> None:
        prompt.reactor_sleep(0.001)
        woke.set()

    threading.Thread(target=pause_once, daemon=True).start()
    waiters = queue.not_empty._waiters  # type: ignore[attr-defined]  # threading.Condition's own
    until(lambda: len(waiters) > 0, what="the reactor to wait on the message queue")
    assert not woke.is_set()
    queue.put((1, C_STORE()))
    assert woke.wait(5.0)  # not the 10 s bound


def test_requests_and_the_release_are_answered_without_waiting_for_the_bound(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 10 s bounds on both waits, a C-ECHO and the release still finish at once: the
    DUL queues the release request where the reactor's wait sees it."""
    monkeypatch.setattr(prompt_dul, "IDLE_WAIT_S", 10.0)
    assoc = server.associate()
    started = time.monotonic()
    try:
        for _ in range(3):
            assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()
    assert assoc.is_released
    assert time.monotonic() - started < 5.0  # not one 10 s wait for the reactor's next look


def test_a_crowded_gate_makes_the_reactor_sleep_like_pynetdicom(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = PromptGate(0)
    gate.enter()
    prompt = _reactor(gate, wait_s=10.0)
    slept: list[float] = []
    monkeypatch.setattr(prompt_dul, "time", SimpleNamespace(sleep=slept.append))
    prompt.reactor_sleep(0.001)
    assert slept == [0.001]


def test_only_the_prompt_reactor_loop_sleeps_differently(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom.association's other sleeps, and other threads, get the real time.sleep."""
    _reactor(PromptGate(1), wait_s=10.0)  # installs the clock
    clock = pynetdicom_association.__dict__["time"]
    assert isinstance(clock, prompt_dul._ReactorClock)
    assert clock.monotonic is time.monotonic  # everything else is the time module's
    started = time.monotonic()
    clock.sleep(0.01)  # not the reactor: a plain sleep, not a 10 s wait
    assert time.monotonic() - started < 5.0


def _listener_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = Settings(dicom_scp_host="127.0.0.1", dicom_scp_aet="COHORTSTREAM")
    return listener_settings(base, tmp_path, **overrides)


def _duls_during_an_echo(listener: DicomListener, during: Callable[[], None] = lambda: None) -> list[Any]:
    """Open an association to ``listener``, C-ECHO, call ``during``, and return the DULs
    of the listener's associations at that moment."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", listener.address[1], ae_title="COHORTSTREAM")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_echo().Status) == 0x0000
        during()
        return [a.dul for a in listener._ae.active_associations]
    finally:
        assoc.release()


@pytest.fixture
def chunked_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The listener switches pynetdicom to receive-to-file, process-wide: undo it afterwards."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", _config.STORE_RECV_CHUNKED_DATASET)


@pytest.mark.usefixtures("chunked_config")
def test_the_listener_serves_associations_with_prompt_duls(tmp_path: Path) -> None:
    settings = _listener_settings(tmp_path, dicom_scp_prompt_associations=3)
    with DicomListener(settings, publisher_factory=lambda _: _NoKafka()) as listener:
        gate = listener._request_handler.gate
        assert gate.limit == 3

        def counted_in() -> None:
            assert gate._active == 1

        duls = _duls_during_an_echo(listener, counted_in)
        until(lambda: gate._active == 0, what="the gate to count the association out")
    assert [type(dul) for dul in duls] == [PromptDUL]
    assert [type(dul.assoc) for dul in duls] == [PromptAssociation]


@pytest.mark.usefixtures("chunked_config")
def test_by_default_the_listener_waits_promptly_for_up_to_four_associations(tmp_path: Path) -> None:
    settings = _listener_settings(tmp_path)
    assert settings.dicom_scp_prompt_associations == 4
    with DicomListener(settings, publisher_factory=lambda _: _NoKafka()) as listener:
        assert listener._request_handler.gate.limit == 4
        duls = _duls_during_an_echo(listener)
    assert [type(dul) for dul in duls] == [PromptDUL]


@pytest.mark.usefixtures("chunked_config")
def test_with_zero_the_listener_keeps_pynetdicoms_loops(tmp_path: Path) -> None:
    settings = _listener_settings(tmp_path, dicom_scp_prompt_associations=0)
    with DicomListener(settings, publisher_factory=lambda _: _NoKafka()) as listener:
        duls = _duls_during_an_echo(listener)
    assert [type(dul) for dul in duls] == [DULServiceProvider]
    assert [type(dul.assoc) for dul in duls] == [Association]
    assert duls[0]._run_loop_delay == 0.001


class _NoKafka:
    """A publisher for a listener that only answers C-ECHO here."""

    def start(self) -> bool:
        return True

    def stop(self, timeout_s: float = 30.0) -> None:
        return None

    def start_publish(self, event: Any, key: str) -> Any:
        raise AssertionError("no C-STORE is sent in this test")
