"""The Storage SCP: binds the port, registers the handlers, owns the Kafka producer.

Every storage SOP class is accepted with every transfer syntax pynetdicom knows: the
bytes are stored as they came, never decoded or transcoded. pynetdicom writes each
received data set straight to a temporary Part-10 file
(``_config.STORE_RECV_CHUNKED_DATASET``; ``event.dataset_path`` is preamble + ``DICM`` +
the file meta built from the negotiated presentation context + the raw data set bytes),
which the C-STORE handler checks, stages and publishes (:mod:`producers.dicom.handlers`).

Events go out through :class:`~cohortstream.threaded_publisher.ThreadedEventPublisher`
(librdkafka), which the association threads call directly: no event loop in between
(why: that module's docstring).
"""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from cohortstream.errors import CohortStreamError
from cohortstream.events import DicomInstanceReceived
from cohortstream.settings import Settings
from cohortstream.staging import StagingStore
from cohortstream.threaded_publisher import ThreadedEventPublisher
from cohortstream.tls import server_context
from producers.dicom.handlers import (
    Acknowledgement,
    StoreContext,
    on_accepted,
    on_c_echo,
    on_c_store,
    on_conn_open,
    on_rejected,
)
from producers.dicom.prompt_dul import PromptGate, PromptRequestHandler

__all__ = ["READY_MARKER", "DicomListener", "InstancePublisher", "SharedPortAssociationServer", "serve"]

log = logging.getLogger(__name__)

READY_MARKER = "dicom listener ready: accepting associations"
"""Printed on stdout once the port is bound (at any log level): the process group of
:mod:`producers.dicom.processes` waits for it from every listener process."""


class InstancePublisher(Protocol):
    """What the listener publishes with (:class:`~cohortstream.threaded_publisher.ThreadedEventPublisher`;
    tests pass a stand-in)."""

    def start(self) -> bool:
        """Connect; ``False`` if Kafka is unreachable now (publishing then fails fast until it is back)."""

    def start_publish(self, event: DicomInstanceReceived, key: str) -> Acknowledgement:
        """Hand the event over and return at once; ``wait()`` on the result for the ack."""

    def stop(self, timeout_s: float = 30.0) -> None:
        """Deliver what is queued, then disconnect."""


def _threaded_publisher(settings: Settings) -> InstancePublisher:
    return ThreadedEventPublisher(settings, settings.dicom_scp_publish_timeout_s)


class SharedPortAssociationServer(ThreadedAssociationServer):
    """The threaded association server, bound with ``SO_REUSEPORT``: several listener
    processes bind the same port and the kernel spreads incoming connections (each
    association) across them (``dicom_scp_processes``; Linux)."""

    def server_bind(self) -> None:
        assert self.socket is not None  # created by socketserver before binding
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class DicomListener:
    """The Storage SCP with its staging store and Kafka producer.

    ``start()`` binds the port and returns; ``stop()`` stops accepting associations,
    lets in-flight C-STOREs finish (answering 0xA700 to any that arrive meanwhile),
    then closes associations and the Kafka producer. Also a context manager.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        publisher_factory: Callable[[Settings], InstancePublisher] = _threaded_publisher,
    ) -> None:
        self._settings = settings
        self._publisher = publisher_factory(settings)
        self.store = StagingStore(settings.staging_dir)
        self.context = StoreContext(
            store=self.store,
            quarantine_dir=Path(settings.quarantine_dir).absolute(),
            start_publish=self._publisher.start_publish,
            allowed_aets=tuple(settings.dicom_scp_allowed_aets),
            max_associations=settings.dicom_scp_max_associations,
            shared_store=settings.dicom_scp_processes > 1,
            max_object_bytes=settings.dicom_scp_max_object_bytes,
        )
        self._ae = self._build_ae()
        self._request_handler = PromptRequestHandler.with_gate(PromptGate(settings.dicom_scp_prompt_associations))
        self._server: ThreadedAssociationServer | None = None
        self._tls_server: ThreadedAssociationServer | None = None
        self.kafka_connected_at_start = False

    def _build_ae(self) -> AE:
        settings = self._settings
        ae = AE(ae_title=settings.dicom_scp_aet)
        # Every storage SOP class with every transfer syntax pynetdicom knows: we store the
        # bytes as they came, so any encoding the sender proposes is fine.
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.maximum_associations = settings.dicom_scp_max_associations
        ae.require_calling_aet = list(settings.dicom_scp_allowed_aets)
        return ae

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port of the plain DICOM server (of the TLS one when plain DICOM is off)."""
        server = self._server or self._tls_server
        if server is None:
            raise RuntimeError("listener is not started")
        host, port = server.server_address[:2]
        return str(host), int(port)

    @property
    def tls_address(self) -> tuple[str, int] | None:
        """The bound host and port of the DICOM TLS server; None without TLS."""
        if self._tls_server is None:
            return None
        host, port = self._tls_server.server_address[:2]
        return str(host), int(port)

    def _tls_context(self) -> ssl.SSLContext | None:
        settings = self._settings
        if not settings.dicom_scp_tls_port:
            return None
        assert settings.dicom_scp_tls_certfile is not None and settings.dicom_scp_tls_keyfile is not None
        return server_context(
            settings.dicom_scp_tls_certfile, settings.dicom_scp_tls_keyfile, settings.dicom_scp_tls_cafile
        )

    def start(self) -> None:
        settings = self._settings
        # Received data sets go to a temporary file instead of memory; process-wide switch.
        _config.STORE_RECV_CHUNKED_DATASET = True
        for directory in (settings.staging_dir, settings.quarantine_dir):
            try:
                Path(directory).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CohortStreamError(f"cannot create {directory}: {exc}") from exc
        self.store.prepare()
        if not settings.dicom_scp_allowed_aets:
            log.warning(
                "COHORTSTREAM_DICOM_SCP_ALLOWED_AETS is empty: every calling AE title is accepted. "
                "This is for development only; set the allow-list in production."
            )
        tls_context = self._tls_context()  # before Kafka: a bad certificate path fails fast
        self.kafka_connected_at_start = self._publisher.start()
        if not self.kafka_connected_at_start:
            log.error(
                "Kafka is unreachable; the listener runs anyway and answers C-STORE with 0xA700 "
                "(sender may retry) until Kafka is back",
                extra={"kafka_bootstrap": settings.kafka_bootstrap},
            )
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_STORE, on_c_store, [self.context]),
            (evt.EVT_C_ECHO, on_c_echo, [self.context]),
            (evt.EVT_REJECTED, on_rejected, [self.context]),
            (evt.EVT_ACCEPTED, on_accepted, [self.context]),
            (evt.EVT_CONN_OPEN, on_conn_open),
        ]
        port = settings.dicom_scp_port
        try:
            if settings.dicom_scp_plaintext:
                self._server = self._start_server(handlers, port)
            if tls_context is not None:
                port = settings.dicom_scp_tls_port
                self._tls_server = self._start_server(handlers, port, tls_context)
        except OSError as exc:
            for server in (self._server, self._tls_server):
                if server is not None:
                    server.shutdown()
            self._server = self._tls_server = None
            self._publisher.stop()
            raise CohortStreamError(f"cannot listen on {settings.dicom_scp_host}:{port}: {exc}") from exc
        host, port = self.address
        log.info(
            "DICOM listener ready",
            extra={
                "aet": settings.dicom_scp_aet,
                "host": host,
                "port": port if self._server is not None else None,
                "tls_port": self.tls_address[1] if self.tls_address else None,
                "tls_client_certificates": settings.dicom_scp_tls_cafile is not None,
                "allowed_aets": list(settings.dicom_scp_allowed_aets),
                "max_associations": settings.dicom_scp_max_associations,
                "staging_dir": str(self.store.root),
                "kafka_connected": self.kafka_connected_at_start,
                "shared_port": settings.dicom_scp_processes > 1,
            },
        )
        print(READY_MARKER, flush=True)

    def _start_server(
        self, handlers: list[EventHandlerType], port: int, tls: ssl.SSLContext | None = None
    ) -> ThreadedAssociationServer:
        """One association server on ``port``: plain DICOM, or DICOM TLS with ``tls``
        (pynetdicom wraps each accepted socket; the same handlers and AE title checks run)."""
        address = (self._settings.dicom_scp_host, port)
        # What AE.start_server(block=False) does, with our request handler (each
        # association's upper layer wakes on events, not a 1 ms poll: prompt_dul.py) and,
        # for several listener processes, the SO_REUSEPORT server class.
        server_class = (
            ThreadedAssociationServer if self._settings.dicom_scp_processes == 1 else SharedPortAssociationServer
        )
        server = self._ae.make_server(
            address,
            evt_handlers=handlers,
            server_class=server_class,
            ssl_context=tls,
            request_handler=self._request_handler,
        )
        name = f"AcceptorServer@{datetime.now():%Y%m%d%H%M%S}"
        threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
        self._ae._servers.append(server)  # as start_server does: server.shutdown() removes it
        return server

    def stop(self, drain_timeout_s: float | None = None) -> None:
        if drain_timeout_s is None:
            drain_timeout_s = self._settings.dicom_scp_publish_timeout_s + 5.0
        for server in (self._server, self._tls_server):
            if server is not None:
                server.shutdown()  # no new associations
        self.context.accepting.clear()
        if not self.context.wait_idle(drain_timeout_s):
            log.warning(
                "C-STOREs still running after the drain timeout; closing anyway",
                extra={"drain_timeout_s": drain_timeout_s},
            )
        for assoc in list(self._ae.active_associations):
            assoc.abort()
        self._server = self._tls_server = None
        self._publisher.stop()
        log.info("DICOM listener stopped")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve(settings: Settings, stop: threading.Event | None = None) -> int:
    """Run one listener process until SIGTERM/SIGINT (or ``stop`` is set); return the exit
    status. With ``dicom_scp_processes`` > 1 it binds the port shared (``SO_REUSEPORT``);
    :func:`producers.dicom.processes.serve_processes` starts that many."""
    if settings.log_level != "DEBUG":
        # pynetdicom logs every PDU exchange at INFO; ours are the useful lines.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda num, frame: stop.set())
    listener = DicomListener(settings)
    # pynetdicom writes each received data set to a temporary file in tempfile's directory
    # (process-wide, and this process is only the listener): put it on the staging store's
    # filesystem, so the handler renames the file into place instead of copying it.
    tempfile.tempdir = str(listener.store.incoming_dir())
    listener.start()
    try:
        stop.wait()
        log.info("stopping the DICOM listener (finishing in-flight C-STOREs)")
    finally:
        listener.stop()
    return 0
