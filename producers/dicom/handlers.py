"""The DIMSE handlers: pynetdicom calls them in each association's thread.

Registered the pynetdicom way, with their dependencies as handler arguments
(``(evt.EVT_C_STORE, on_c_store, [context])``): everything they need is in the
:class:`StoreContext`, nothing is read from globals.

For every C-STORE (design decisions 2 and 3), :func:`on_c_store`:

0. refuses an object larger than ``dicom_scp_max_object_bytes`` with **0xA700** (out of
   resources) and an Error Comment naming the size and the limit, and deletes it: pynetdicom
   has already written it to a temporary file (the association's PDUs are not inspected
   on the way), so the limit bounds what is staged, published and archived, not what a
   sender may transfer;
1. reads the attributes of the file pynetdicom received to disk
   (:func:`cohortstream.dicom_attributes.read_instance_attributes`: structural check,
   then ``dcmread(stop_before_pixels=True)``); unreadable data is quarantined and
   answered with **0xC210** (cannot understand);
2. puts the file into the content-addressed store under its final name, complete but
   not yet synced (:meth:`~cohortstream.staging.StagingStore.begin_stage`): pynetdicom's
   temporary file is renamed there, not copied, when it is on the store's filesystem
   (:func:`producers.dicom.listener.serve` makes sure it is);
3. hands the :class:`~cohortstream.events.DicomInstanceReceived`, keyed by
   SeriesInstanceUID, to Kafka (``context.start_publish``), and *while the broker
   acknowledges* fsyncs the file and its directory entry
   (:meth:`~cohortstream.staging.PendingStage.make_durable`): the Kafka round trip and the
   disk's two syncs overlap instead of adding up (the listener's profile: about a
   third of the handler's time). Any reader of the event finds the complete file;
4. answers **0x0000** only after both: the bytes are on disk and the broker acknowledged
   (design decision 3). Kafka down or slow, staging error, disk full → **0xA700** (out of
   resources, the sender may retry); a bug → **0xC211**.

The overlap has one cost, stated here because it is the only way an event can outlive its
bytes: if the fsync fails (an I/O error) or the machine crashes after the broker
acknowledged and before the disk synced, the event is in Kafka but its staged file may be
short or missing. The sender was never told success, so nothing acknowledged is lost;
the archive agent finds the file missing or its hash wrong and dead-letters that event
with the reason, and the sender's retry stages the bytes again under a new event.

Logs carry UIDs, AE titles, addresses, sizes and hashes, never a patient identifier.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset

from cohortstream.dicom_attributes import UnreadableInstanceError, instance_event, read_instance_attributes
from cohortstream.events import DicomInstanceReceived
from cohortstream.publisher import PublishError
from cohortstream.staging import StagingError, StagingStore
from cohortstream.threaded_publisher import KafkaUnavailableError

__all__ = [
    "PRODUCER",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_PROCESSING_FAILURE",
    "STATUS_SUCCESS",
    "Acknowledgement",
    "StartPublishFn",
    "StoreContext",
    "on_accepted",
    "on_c_echo",
    "on_c_store",
    "on_conn_open",
    "on_rejected",
]

log = logging.getLogger(__name__)

PRODUCER = "dicom-scp"
"""The ``producer`` of the events the listener publishes."""

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
"""Transient: Kafka down or too slow, staging error, disk full, listener shutting down."""
STATUS_CANNOT_UNDERSTAND = 0xC210
"""Permanent: the data set cannot be read (garbage, truncated, broken meta, no UIDs)."""
STATUS_PROCESSING_FAILURE = 0xC211
"""An unexpected error in our own code (a bug); logged with its traceback."""


class Acknowledgement(Protocol):
    """A publish under way (:class:`cohortstream.threaded_publisher.PendingDelivery`)."""

    def wait(self) -> None:
        """Return once the broker acknowledged; raise ``PublishError`` otherwise."""


StartPublishFn = Callable[[DicomInstanceReceived, str], Acknowledgement]
"""Hand an event to Kafka and return at once; ``wait()`` on the result for the ack."""


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


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@dataclass
class StoreContext:
    """Everything the handlers need, passed in as their handler argument."""

    store: StagingStore
    quarantine_dir: Path
    start_publish: StartPublishFn
    allowed_aets: Sequence[str] = ()
    max_associations: int = 0
    max_object_bytes: int = 0
    """Largest object accepted (bytes); 0: no limit."""
    shared_store: bool = False
    """Other listener processes stage into the same store (``dicom_scp_processes`` > 1):
    the same bytes may have been published by one of them a moment ago, which this
    process cannot see, so a file it staged is never removed after a Kafka failure (the
    staging sweeper removes orphans; a retry stages the same name again)."""
    accepting: threading.Event = field(default_factory=_set_event)
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


def _peer(event: Any) -> dict[str, Any]:
    requestor = event.assoc.requestor
    return {
        "calling_aet": str(requestor.ae_title).strip(),
        "called_aet": str(event.assoc.acceptor.ae_title).strip(),
        "peer_address": requestor.address,
        "peer_port": requestor.port,
    }


def _too_large(event: Any, context: StoreContext, peer: dict[str, Any], request_uid: str) -> Dataset | None:
    """The refusal of an object above the size limit (the file is deleted), None if it fits."""
    if context.max_object_bytes <= 0:
        return None
    path = Path(event.dataset_path)
    size = path.stat().st_size
    if size <= context.max_object_bytes:
        return None
    with suppress(OSError):
        path.unlink()
    comment = f"object too large: {size} bytes, limit {context.max_object_bytes}"
    log.warning(
        "C-STORE refused: object too large (0xA700)",
        extra={**peer, "sop_instance_uid": request_uid, "size_bytes": size, "limit_bytes": context.max_object_bytes},
    )
    status = Dataset()
    status.Status = STATUS_OUT_OF_RESOURCES
    status.ErrorComment = comment  # LO: at most 64 characters, which this is
    return status


def on_c_store(event: Any, context: StoreContext) -> int | Dataset:
    """Handle one C-STORE: quarantine, or stage + publish, and answer the status."""
    received_at = datetime.now(UTC)
    started = time.perf_counter()
    peer = _peer(event)
    request_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
    with context.in_flight():
        if not context.accepting.is_set():
            log.warning(
                "C-STORE refused: listener is shutting down (0xA700, sender may retry)",
                extra={**peer, "sop_instance_uid": request_uid},
            )
            return STATUS_OUT_OF_RESOURCES
        try:
            refusal = _too_large(event, context, peer, request_uid)
            if refusal is not None:
                return refusal
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
            log.error(
                "C-STORE unreadable and could not be quarantined (0xA700, sender may retry)",
                extra={**peer, "sop_instance_uid": request_uid, "reason": str(exc), "error": str(qexc)},
            )
            return STATUS_OUT_OF_RESOURCES
        log.warning(
            "C-STORE unreadable data quarantined (0xC210)",
            extra={**peer, "sop_instance_uid": request_uid, "reason": str(exc), "quarantined": str(kept)},
        )
        return STATUS_CANNOT_UNDERSTAND

    uids = {key: attrs[key] for key in ("sop_instance_uid", "series_instance_uid", "study_instance_uid")}
    if request_uid and request_uid != attrs["sop_instance_uid"]:
        log.warning(
            "C-STORE request and data set disagree on the SOP Instance UID; using the data set's",
            extra={**peer, **uids, "request_sop_instance_uid": request_uid},
        )

    # Serialise the same instance arriving on two associations at once, so one
    # failing copy never removes the staged file the other one just published.
    with context._instance_locks.hold(attrs["sop_instance_uid"]):
        try:
            pending = context.store.begin_stage(path, take=True)
        except StagingError as exc:
            log.error("C-STORE staging failed (0xA700, sender may retry)", extra={**peer, **uids, "error": str(exc)})
            return STATUS_OUT_OF_RESOURCES
        staged, created = pending.staged, pending.created
        try:
            instance = instance_event(
                attrs,
                staged,
                producer=PRODUCER,
                calling_aet=peer["calling_aet"],
                called_aet=peer["called_aet"],
                received_at=received_at,
            )
            acknowledgement = context.start_publish(instance, instance.series_instance_uid)
            try:
                pending.make_durable()
            except StagingError as exc:
                log.error(
                    "C-STORE staged file could not be synced (0xA700, sender may retry); its event may "
                    "still be acknowledged, and the archive dead-letters it if the bytes are lost",
                    extra={**peer, **uids, "sha256": staged.sha256, "error": str(exc)},
                )
                return STATUS_OUT_OF_RESOURCES
            acknowledgement.wait()
        except KafkaUnavailableError as exc:
            # Certainly not sent: remove what this call staged, so nothing is half-recorded
            # (unless another process may have published the same bytes meanwhile).
            removed = created and not context.shared_store
            if removed:
                context.store.remove(staged.sha256)
            log.error(
                "C-STORE not published, Kafka unavailable (0xA700, sender may retry)",
                extra={**peer, **uids, "sha256": staged.sha256, "staged_removed": removed, "error": str(exc)},
            )
            return STATUS_OUT_OF_RESOURCES
        except PublishError as exc:
            # Timeout or broker error after sending: the event may still be appended, so the
            # staged bytes it points to are kept (an orphan at worst, which the sweeper reports).
            log.error(
                "C-STORE not acknowledged by Kafka (0xA700, sender may retry; staged file kept)",
                extra={**peer, **uids, "sha256": staged.sha256, "error": str(exc)},
            )
            return STATUS_OUT_OF_RESOURCES
        finally:
            pending.close()
    log.info(
        "C-STORE stored",
        extra={
            **peer,
            **uids,
            "sha256": staged.sha256,
            "size_bytes": staged.size,
            "new_file": created,
            "transfer_syntax_uid": instance.transfer_syntax_uid,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
        },
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


def on_accepted(event: Any, context: StoreContext) -> None:
    """Log an accepted association at DEBUG."""
    log.debug("association accepted", extra=_peer(event))


def on_conn_open(event: Any) -> None:
    """Disable Nagle's algorithm on each accepted connection, so our small C-STORE
    responses leave at once.

    (The sender's side is the sender's business: dcmtk's ``storescu`` leaves Nagle on
    unless ``TCP_NODELAY=1`` is in its environment, which costs it about 40 ms per
    instance against any receiver's delayed ACK: see the README.)
    """
    with suppress(AttributeError, OSError):  # not a TCP socket, or already closed
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
