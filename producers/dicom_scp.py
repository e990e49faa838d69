"""The DICOM edge: a pynetdicom Storage SCP that turns each C-STORE into an event.

For every received object (design decisions 2 and 3):

1. pynetdicom writes the data set, exactly as it came over the wire, to a temporary
   Part-10 file (``_config.STORE_RECV_CHUNKED_DATASET``; ``event.dataset_path`` is
   preamble + ``DICM`` + the file meta built from the negotiated presentation context +
   the raw data set bytes). Nothing is decoded or transcoded.
2. The file is checked structurally (:mod:`producers.dicom_integrity`: every element lies
   inside the file, every sequence is closed) and its attributes are read with
   ``pydicom.dcmread(path, stop_before_pixels=True)``. Unreadable data (garbage, truncated,
   broken meta, no SOP Instance UID) is kept in the quarantine directory and answered
   with **0xC210** (cannot understand).
3. The file is copied into the content-addressed :class:`~cohortstream.staging.StagingStore`
   (fsynced, renamed; idempotent).
4. A :class:`~cohortstream.events.DicomInstanceReceived` keyed by SeriesInstanceUID is
   published with the ``acks=all`` idempotent :class:`~cohortstream.publisher.EventPublisher`.
5. Only then the answer is **0x0000**. Kafka down or slow, staging error or disk full →
   **0xA700** (out of resources): the sender may retry, staging the same bytes again is a
   no-op and sinks are idempotent.

The publisher's asyncio loop runs in one background thread owned by
:class:`DicomListener`; the DIMSE threads (one per association) hand it work with
``asyncio.run_coroutine_threadsafe`` and wait at most ``dicom_scp_publish_timeout_s``,
so they never block that loop.

If Kafka cannot be reached when the listener starts, it starts anyway and logs an ERROR:
modalities get 0xA700 (retry later) instead of "connection refused", which they often
treat as a configuration error, and the listener connects by itself once Kafka is back
(at most one connection attempt per second, shared by all associations).

Logs carry UIDs, AE titles, addresses, sizes and hashes, never a patient identifier.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from cohortstream.errors import CohortStreamError
from cohortstream.events import DicomInstanceReceived
from cohortstream.publisher import EventPublisher, PublishError
from cohortstream.settings import Settings
from cohortstream.staging import StagedFile, StagingError, StagingStore
from producers.dicom_integrity import IncompleteDicomError, check_part10_structure

__all__ = [
    "PRODUCER",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_PROCESSING_FAILURE",
    "STATUS_SUCCESS",
    "DicomListener",
    "InstanceAttributes",
    "KafkaUnavailableError",
    "PublishTimeoutError",
    "StoreContext",
    "UnreadableInstanceError",
    "instance_event",
    "main",
    "on_c_echo",
    "on_c_store",
    "on_rejected",
    "read_instance_attributes",
    "serve",
]

log = logging.getLogger(__name__)

PRODUCER = "dicom-scp"

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
"""Transient: Kafka down or too slow, staging error, disk full, listener shutting down."""
STATUS_CANNOT_UNDERSTAND = 0xC210
"""Permanent: the data set cannot be read (garbage, truncated, broken meta, no UIDs)."""
STATUS_PROCESSING_FAILURE = 0xC211
"""An unexpected error in our own code (a bug); logged with its traceback."""

_MIN_RECONNECT_INTERVAL_S = 1.0


class UnreadableInstanceError(CohortStreamError, ValueError):
    """The received object cannot be understood; the message says why."""


class PublishTimeoutError(PublishError):
    """Kafka did not acknowledge in time; the event may still be appended later."""


class KafkaUnavailableError(PublishError):
    """No connection to Kafka: the event was certainly not sent."""


# --------------------------------------------------------------------------------------
# Attributes of a received instance
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InstanceAttributes:
    """What the event needs from a received object, read without its pixel data."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str
    patient_sex: str | None
    patient_age: str | None
    study_date: date | None
    study_description: str | None
    series_description: str | None
    series_number: int | None
    instance_number: int | None
    modality: str
    body_part_examined: str | None


_AGE_RE = re.compile(r"^\d{3}[DWMY]$")
_INT32 = (-(2**31), 2**31 - 1)


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    text = str(value).strip().strip("\x00").strip()
    return text or None


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    text = _text(ds, keyword)
    if text is None:
        return None
    try:
        number = int(float(text.split("\\")[0]))
    except ValueError:
        return None
    return number if _INT32[0] <= number <= _INT32[1] else None


def _date(ds: pydicom.Dataset, keyword: str) -> date | None:
    text = _text(ds, keyword)
    if text is None:
        return None
    for fmt in ("%Y%m%d", "%Y.%m.%d", "%Y-%m-%d"):
        try:
            return datetime.strptime(text[:10], fmt).date()
        except ValueError:
            continue
    return None


def _sex(ds: pydicom.Dataset) -> str | None:
    text = (_text(ds, "PatientSex") or "").upper()
    return text if text in {"M", "F", "O"} else None


def _age(ds: pydicom.Dataset) -> str | None:
    text = (_text(ds, "PatientAge") or "").upper()
    return text if _AGE_RE.match(text) else None


def read_instance_attributes(path: Path) -> InstanceAttributes:
    """Check ``path`` is a complete Part-10 object and read the event's attributes.

    Strict about what identifies the instance (SOP Class/Instance, Study and Series
    Instance UIDs must be present), lenient about the rest (an unparseable date, age or
    number becomes ``None``). Raises :class:`UnreadableInstanceError` with the reason.
    """
    try:
        transfer_syntax = check_part10_structure(path)
    except IncompleteDicomError as exc:
        raise UnreadableInstanceError(str(exc)) from exc
    except OSError as exc:  # pragma: no cover - pynetdicom's temp file vanished
        raise UnreadableInstanceError(f"cannot read the received file: {exc}") from exc
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uids = {
            kw: _text(ds, kw)
            for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
        }
        missing = [kw for kw, value in uids.items() if not value]
        if missing:
            raise UnreadableInstanceError(f"required attribute(s) missing or empty: {', '.join(missing)}")
        return InstanceAttributes(
            sop_class_uid=uids["SOPClassUID"] or "",
            sop_instance_uid=uids["SOPInstanceUID"] or "",
            study_instance_uid=uids["StudyInstanceUID"] or "",
            series_instance_uid=uids["SeriesInstanceUID"] or "",
            transfer_syntax_uid=transfer_syntax,
            patient_id=_text(ds, "PatientID") or "",
            patient_sex=_sex(ds),
            patient_age=_age(ds),
            study_date=_date(ds, "StudyDate"),
            study_description=_text(ds, "StudyDescription"),
            series_description=_text(ds, "SeriesDescription"),
            series_number=_int(ds, "SeriesNumber"),
            instance_number=_int(ds, "InstanceNumber"),
            modality=_text(ds, "Modality") or "",
            body_part_examined=_text(ds, "BodyPartExamined"),
        )
    except UnreadableInstanceError:
        raise
    except (InvalidDicomError, ValueError, TypeError, KeyError, IndexError, EOFError, OSError,
            UnicodeError, NotImplementedError, AttributeError) as exc:
        # pydicom decodes lazily and reports broken values with many exception types.
        raise UnreadableInstanceError(f"cannot decode the data set: {type(exc).__name__}: {exc}") from exc


def _ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def instance_event(
    attrs: InstanceAttributes,
    staged: StagedFile,
    *,
    calling_aet: str,
    called_aet: str,
    received_at: datetime,
) -> DicomInstanceReceived:
    """The event for one received, staged instance."""
    return DicomInstanceReceived(
        producer=PRODUCER,
        calling_aet=calling_aet,
        called_aet=called_aet,
        sop_class_uid=attrs.sop_class_uid,
        sop_instance_uid=attrs.sop_instance_uid,
        study_instance_uid=attrs.study_instance_uid,
        series_instance_uid=attrs.series_instance_uid,
        transfer_syntax_uid=attrs.transfer_syntax_uid,
        patient_id=attrs.patient_id,
        patient_sex=attrs.patient_sex,
        patient_age=attrs.patient_age,
        study_date=attrs.study_date,
        study_description=attrs.study_description,
        series_description=attrs.series_description,
        series_number=attrs.series_number,
        instance_number=attrs.instance_number,
        modality=attrs.modality,
        body_part_examined=attrs.body_part_examined,
        size_bytes=staged.size,
        sha256=staged.sha256,
        staged_uri=staged.uri,
        received_at=_ms(received_at),
    )


# --------------------------------------------------------------------------------------
# Handlers (pynetdicom calls them in the association's thread)
# --------------------------------------------------------------------------------------
PublishFn = Callable[[DicomInstanceReceived, str], None]
"""Publish and wait for the broker's acknowledgement; raise PublishError otherwise."""


class _KeyedLocks:
    """One lock per key while it is in use (same instance received on two associations)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


@dataclass
class StoreContext:
    """Everything the C-STORE handler needs, passed in rather than read from globals."""

    store: StagingStore
    quarantine_dir: Path
    publish: PublishFn
    allowed_aets: Sequence[str] = ()
    max_associations: int = 0
    accepting: threading.Event = field(default_factory=lambda: _set_event())
    _in_flight: int = 0
    _in_flight_cond: threading.Condition = field(default_factory=threading.Condition)
    _instance_locks: _KeyedLocks = field(default_factory=_KeyedLocks)

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        with self._in_flight_cond:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._in_flight_cond:
                self._in_flight -= 1
                self._in_flight_cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no C-STORE is being handled; ``False`` if still busy after the timeout."""
        with self._in_flight_cond:
            return self._in_flight_cond.wait_for(lambda: self._in_flight == 0, timeout=timeout_s)


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


def _peer(event: Any) -> dict[str, Any]:
    requestor = event.assoc.requestor
    return {
        "calling_aet": str(requestor.ae_title).strip(),
        "called_aet": str(event.assoc.acceptor.ae_title).strip(),
        "peer_address": requestor.address,
        "peer_port": requestor.port,
    }


def on_c_store(event: Any, context: StoreContext) -> int:
    """Handle one C-STORE: quarantine, or stage + publish, and answer the status."""
    received_at = datetime.now(UTC)
    started = time.perf_counter()
    peer = _peer(event)
    request_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
    with context.in_flight():
        if not context.accepting.is_set():
            log.warning("C-STORE refused: listener is shutting down (0xA700, sender may retry)",
                        extra={**peer, "sop_instance_uid": request_uid})
            return STATUS_OUT_OF_RESOURCES
        try:
            return _store(event, context, peer, request_uid, received_at, started)
        except Exception:  # a bug: answer a failure, never success, and keep serving
            log.exception("C-STORE failed unexpectedly (0xC211)", extra={**peer, "sop_instance_uid": request_uid})
            return STATUS_PROCESSING_FAILURE


def _store(
    event: Any, context: StoreContext, peer: dict[str, Any], request_uid: str, received_at: datetime, started: float
) -> int:
    path = Path(event.dataset_path)
    try:
        attrs = read_instance_attributes(path)
    except UnreadableInstanceError as exc:
        try:
            kept = context.store.quarantine(path, str(exc), context.quarantine_dir, peer["calling_aet"])
        except StagingError as qexc:
            log.error("C-STORE unreadable and could not be quarantined (0xA700, sender may retry)",
                      extra={**peer, "sop_instance_uid": request_uid, "reason": str(exc), "error": str(qexc)})
            return STATUS_OUT_OF_RESOURCES
        log.warning("C-STORE unreadable data quarantined (0xC210)",
                    extra={**peer, "sop_instance_uid": request_uid, "reason": str(exc), "quarantined": str(kept)})
        return STATUS_CANNOT_UNDERSTAND

    uids = {"sop_instance_uid": attrs.sop_instance_uid, "series_instance_uid": attrs.series_instance_uid,
            "study_instance_uid": attrs.study_instance_uid}
    if request_uid and request_uid != attrs.sop_instance_uid:
        log.warning("C-STORE request and data set disagree on the SOP Instance UID; using the data set's",
                    extra={**peer, **uids, "request_sop_instance_uid": request_uid})

    # Serialise the same instance arriving on two associations at once, so one
    # failing copy never removes the staged file the other one just published.
    with context._instance_locks.hold(attrs.sop_instance_uid):
        try:
            staged, created = context.store.stage_file_new(path)
        except StagingError as exc:
            log.error("C-STORE staging failed (0xA700, sender may retry)", extra={**peer, **uids, "error": str(exc)})
            return STATUS_OUT_OF_RESOURCES
        instance = instance_event(
            attrs, staged, calling_aet=peer["calling_aet"], called_aet=peer["called_aet"], received_at=received_at
        )
        try:
            context.publish(instance, attrs.series_instance_uid)
        except KafkaUnavailableError as exc:
            # Certainly not sent: remove what this call staged, so nothing is half-recorded.
            if created:
                context.store.remove(staged.sha256)
            log.error("C-STORE not published, Kafka unavailable (0xA700, sender may retry)",
                      extra={**peer, **uids, "sha256": staged.sha256, "staged_removed": created, "error": str(exc)})
            return STATUS_OUT_OF_RESOURCES
        except PublishError as exc:
            # Timeout or broker error after sending: the event may still be appended, so the
            # staged bytes it points to are kept (an orphan at worst, which the sweeper reports).
            log.error("C-STORE not acknowledged by Kafka (0xA700, sender may retry; staged file kept)",
                      extra={**peer, **uids, "sha256": staged.sha256, "error": str(exc)})
            return STATUS_OUT_OF_RESOURCES
    log.info(
        "C-STORE stored",
        extra={**peer, **uids, "sha256": staged.sha256, "size_bytes": staged.size, "new_file": created,
               "transfer_syntax_uid": attrs.transfer_syntax_uid,
               "elapsed_ms": round((time.perf_counter() - started) * 1000, 1)},
    )
    return STATUS_SUCCESS


def on_c_echo(event: Any, context: StoreContext) -> int:
    """C-ECHO (verification): always success; logged at DEBUG."""
    log.debug("C-ECHO", extra=_peer(event))
    return STATUS_SUCCESS


def on_rejected(event: Any, context: StoreContext) -> None:
    """Log a refused association with the caller's AE title and address."""
    peer = _peer(event)
    if context.allowed_aets and peer["calling_aet"] not in context.allowed_aets:
        reason = "calling AE title not in the allow-list"
    elif context.max_associations and len(event.assoc.ae.active_associations) > context.max_associations:
        reason = f"too many associations (maximum {context.max_associations})"
    else:
        reason = "rejected during negotiation"
    log.warning("association rejected", extra={**peer, "reason": reason})


def on_conn_open(event: Any) -> None:
    """Disable Nagle's algorithm on each accepted connection, so our small C-STORE
    responses leave at once.

    (The sender's side is the sender's business: dcmtk's ``storescu`` leaves Nagle on
    unless ``TCP_NODELAY=1`` is in its environment, which costs it about 40 ms per
    instance against any receiver's delayed ACK: see the README.)
    """
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):  # not a TCP socket, or already closed
        pass


def on_accepted(event: Any, context: StoreContext) -> None:
    log.debug("association accepted", extra=_peer(event))


# --------------------------------------------------------------------------------------
# The Kafka side: one asyncio loop in one thread
# --------------------------------------------------------------------------------------
class _KafkaBridge:
    """Owns the publisher and its event loop thread; DIMSE threads call :meth:`publish`."""

    def __init__(self, settings: Settings, publisher_factory: Callable[[Settings], EventPublisher]) -> None:
        self._settings = settings
        self._factory = publisher_factory
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="dicom-scp-kafka", daemon=True)
        self._publisher: EventPublisher | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._last_failure: float | None = None
        self._last_error = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> bool:
        """Start the loop thread and try to connect; ``False`` if Kafka is unreachable now."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._ensure_connected(), self._loop)
        try:
            future.result(timeout=self._settings.dicom_scp_publish_timeout_s)
        except (PublishError, concurrent.futures.TimeoutError) as exc:
            log.error(
                "Kafka is unreachable; the listener runs anyway and answers C-STORE with 0xA700 "
                "(sender may retry) until Kafka is back",
                extra={"kafka_bootstrap": self._settings.kafka_bootstrap, "error": str(exc) or "timeout"},
            )
            return False
        return True

    async def _connect(self) -> None:
        publisher = self._factory(self._settings)
        try:
            await publisher.start()
        except PublishError as exc:
            self._last_failure = time.monotonic()
            self._last_error = str(exc)
            raise KafkaUnavailableError(str(exc)) from exc
        was_down = self._last_failure is not None
        self._publisher = publisher
        self._last_failure = None
        log.log(logging.WARNING if was_down else logging.INFO, "connected to Kafka",
                extra={"kafka_bootstrap": self._settings.kafka_bootstrap})

    async def _ensure_connected(self) -> EventPublisher:
        if self._publisher is not None:
            return self._publisher
        if self._connecting is None or self._connecting.done():
            if (
                self._last_failure is not None
                and time.monotonic() - self._last_failure < _MIN_RECONNECT_INTERVAL_S
            ):
                raise KafkaUnavailableError(f"Kafka unreachable (last attempt under a second ago): {self._last_error}")
            self._connecting = self._loop.create_task(self._connect())
        # Shield: a caller that gives up (timeout) must not cancel the shared attempt.
        await asyncio.shield(self._connecting)
        assert self._publisher is not None
        return self._publisher

    async def _publish(self, event: DicomInstanceReceived, key: str) -> None:
        publisher = await self._ensure_connected()
        await publisher.publish(event, key)

    def publish(self, event: DicomInstanceReceived, key: str) -> None:
        """Called from DIMSE threads: wait (bounded) for the broker's acknowledgement."""
        timeout = self._settings.dicom_scp_publish_timeout_s
        future = asyncio.run_coroutine_threadsafe(self._publish(event, key), self._loop)
        try:
            future.result(timeout=timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise PublishTimeoutError(f"no acknowledgement from Kafka within {timeout}s") from exc

    def stop(self, timeout_s: float = 30.0) -> None:
        async def _stop() -> None:
            if self._connecting is not None and not self._connecting.done():
                self._connecting.cancel()
            if self._publisher is not None:
                await self._publisher.stop()
                self._publisher = None

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(timeout=timeout_s)
            except Exception as exc:  # shutting down: report, then stop the loop anyway
                log.warning("Kafka producer did not stop cleanly", extra={"error": repr(exc)})
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=timeout_s)
        if not self._thread.is_alive():
            self._loop.close()


# --------------------------------------------------------------------------------------
# The listener
# --------------------------------------------------------------------------------------
class DicomListener:
    """The Storage SCP with its staging store and Kafka bridge.

    ``start()`` binds the port and returns; ``stop()`` stops accepting associations,
    lets in-flight C-STOREs finish (answering 0xA700 to any that arrive meanwhile),
    then closes associations and the Kafka producer. Also a context manager.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        publisher_factory: Callable[[Settings], EventPublisher] = EventPublisher,
    ) -> None:
        self._settings = settings
        self._bridge = _KafkaBridge(settings, publisher_factory)
        self.store = StagingStore(settings.staging_dir)
        self.context = StoreContext(
            store=self.store,
            quarantine_dir=Path(settings.quarantine_dir).absolute(),
            publish=self._bridge.publish,
            allowed_aets=tuple(settings.dicom_scp_allowed_aets),
            max_associations=settings.dicom_scp_max_associations,
        )
        self._ae = self._build_ae()
        self._server: ThreadedAssociationServer | None = None
        self.kafka_connected_at_start = False

    def _build_ae(self) -> AE:
        settings = self._settings
        ae = AE(ae_title=settings.dicom_scp_aet)
        # Every storage SOP class with every transfer syntax pynetdicom knows: we store the
        # bytes as they came, so any encoding the sender proposes is fine.
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.maximum_associations = settings.dicom_scp_max_associations
        ae.require_calling_aet = list(settings.dicom_scp_allowed_aets)
        return ae

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port."""
        if self._server is None:
            raise RuntimeError("listener is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        settings = self._settings
        # Received data sets go to a temporary file instead of memory; process-wide switch.
        _config.STORE_RECV_CHUNKED_DATASET = True
        for directory in (settings.staging_dir, settings.quarantine_dir):
            try:
                Path(directory).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CohortStreamError(f"cannot create {directory}: {exc}") from exc
        if not settings.dicom_scp_allowed_aets:
            log.warning(
                "COHORTSTREAM_DICOM_SCP_ALLOWED_AETS is empty: every calling AE title is accepted. "
                "This is for development only; set the allow-list in production."
            )
        self.kafka_connected_at_start = self._bridge.start()
        handlers = [
            (evt.EVT_C_STORE, on_c_store, [self.context]),
            (evt.EVT_C_ECHO, on_c_echo, [self.context]),
            (evt.EVT_REJECTED, on_rejected, [self.context]),
            (evt.EVT_ACCEPTED, on_accepted, [self.context]),
            (evt.EVT_CONN_OPEN, on_conn_open),
        ]
        try:
            self._server = self._ae.start_server(
                (settings.dicom_scp_host, settings.dicom_scp_port), block=False, evt_handlers=handlers
            )
        except OSError as exc:
            self._bridge.stop()
            raise CohortStreamError(
                f"cannot listen on {settings.dicom_scp_host}:{settings.dicom_scp_port}: {exc}"
            ) from exc
        host, port = self.address
        log.info(
            "DICOM listener ready",
            extra={"aet": settings.dicom_scp_aet, "host": host, "port": port,
                   "allowed_aets": list(settings.dicom_scp_allowed_aets),
                   "max_associations": settings.dicom_scp_max_associations,
                   "staging_dir": str(self.store.root), "kafka_connected": self.kafka_connected_at_start},
        )

    def stop(self, drain_timeout_s: float | None = None) -> None:
        if drain_timeout_s is None:
            drain_timeout_s = self._settings.dicom_scp_publish_timeout_s + 5.0
        if self._server is not None:
            self._server.shutdown()  # no new associations
        self.context.accepting.clear()
        if not self.context.wait_idle(drain_timeout_s):
            log.warning("C-STOREs still running after the drain timeout; closing anyway",
                        extra={"drain_timeout_s": drain_timeout_s})
        for assoc in list(self._ae.active_associations):
            assoc.abort()
        self._server = None
        self._bridge.stop()
        log.info("DICOM listener stopped")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve(settings: Settings, stop: threading.Event | None = None) -> int:
    """Run the listener until SIGTERM/SIGINT (or ``stop`` is set); return the exit status."""
    if settings.log_level != "DEBUG":
        # pynetdicom logs every PDU exchange at INFO; ours are the useful lines.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda num, frame: stop.set())
    listener = DicomListener(settings)
    listener.start()
    try:
        stop.wait()
        log.info("stopping the DICOM listener (finishing in-flight C-STOREs)")
    finally:
        listener.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m producers.dicom_scp [--env-file FILE]``: same as ``cohortstream dicom-scp``."""
    from cohortstream.cli import main as cli_main

    parser = argparse.ArgumentParser(prog="python -m producers.dicom_scp", description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", default=None)
    args = parser.parse_args(argv)
    return cli_main([*(["--env-file", args.env_file] if args.env_file else []), "dicom-scp"])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
