"""The DICOM edge: a pynetdicom Storage SCP that turns each C-STORE into an event.

One module per job, in the shape of pynetdicom's own ``apps/qrscp``:

- :mod:`producers.dicom.handlers` — the DIMSE handlers (C-STORE, C-ECHO, association
  events), their :class:`StoreContext` and the DIMSE statuses they answer;
- :mod:`producers.dicom.listener` — :class:`DicomListener` (the server, which publishes
  with the core's thread-safe librdkafka producer,
  :class:`~cohortstream.threaded_publisher.ThreadedEventPublisher`) and :func:`serve`
  (one listener process);
- :mod:`producers.dicom.processes` — :func:`serve_processes`: ``dicom_scp_processes``
  listener processes sharing the port (``SO_REUSEPORT``), supervised.

The attributes of a received object and the event built from them come from the core
(:mod:`cohortstream.dicom_attributes`, with the structural check
:mod:`cohortstream.dicom_integrity`), because the staging sweeper in ``consumers/`` needs
the same reader.

Success only after durability (design decisions 2 and 3): a C-STORE is answered 0x0000
only once the received file is staged (fsynced, renamed) and its
``DicomInstanceReceived`` is acknowledged by Kafka; unreadable data is quarantined and
answered 0xC210; Kafka down or slow, a staging error or a full disk give 0xA700 (the
sender may retry: staging the same bytes again is a no-op and sinks are idempotent).
"""

from __future__ import annotations

from producers.dicom.handlers import (
    PRODUCER,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    StoreContext,
    on_c_echo,
    on_c_store,
    on_rejected,
)
from producers.dicom.listener import DicomListener, InstancePublisher, serve
from producers.dicom.processes import main, serve_processes

__all__ = [
    "PRODUCER",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_PROCESSING_FAILURE",
    "STATUS_SUCCESS",
    "DicomListener",
    "InstancePublisher",
    "StoreContext",
    "main",
    "on_c_echo",
    "on_c_store",
    "on_rejected",
    "serve",
    "serve_processes",
]
