"""A bare pynetdicom Storage SCP: the ceiling of a Python C-STORE listener on this machine.

It receives the way our listener does (``producers/dicom/listener.py``): every storage SOP
class with every transfer syntax, ``_config.STORE_RECV_CHUNKED_DATASET`` (pynetdicom writes
each data set to a temporary Part-10 file), Nagle off on accepted connections. Then, per
C-STORE, it does only what durability needs at the least: copy that file to
``OUT/<SOPInstanceUID>.dcm``, fsync it, answer success. No parsing, no integrity check,
no hashing, no rename, no Kafka.

With ``--kafka-bootstrap HOST:PORT --kafka-topic TOPIC`` it also, after the fsync, sends
one 600-byte record (about the size of our ``DicomInstanceReceived`` event) with an
``acks=all`` idempotent librdkafka producer configured as our listener's
(``cohortstream.threaded_publisher``: ``linger.ms`` 0, a poll thread running the delivery
callbacks) and waits for the broker's acknowledgement before answering: the ceiling of
any listener that must have both the bytes on disk and Kafka's ack before success
(design decision 3), still without parsing or staging. (Until 2026-11-30 this used
aiokafka on an event-loop thread, as the listener then did.)

With ``--prompt-dul`` each association's upper layer and reactor are the listener's
event-driven ones (``producers/dicom/prompt_dul.py``, gated the same way, for up to the
listener's default ``dicom_scp_prompt_associations`` associations) instead of pynetdicom's
1 ms polling loops: the ceiling of a pynetdicom SCP that wakes on events, so the benchmark
can say how much of the listener's ratio to the plain bare SCP comes from that change
alone. (The only listener code the bare SCP uses, besides reading that setting's default.)

Run: ``.venv/bin/python -m bench.bare_scp --port 45113 --out DIR [--aet BARE]
[--kafka-bootstrap HOST:PORT --kafka-topic TOPIC] [--prompt-dul]``; stops on SIGTERM/SIGINT.
``bench/dicom_ingest.py`` runs it as a child process and waits for C-ECHO.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import threading
from contextlib import suppress
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

_CHUNK = 1 << 20
_RECORD = b"\x00" * 600


class KafkaAck:
    """A librdkafka producer with a delivery-callback poll thread, as our listener's."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics([NewTopic(topic, num_partitions=12, replication_factor=1)]).values():
            try:
                future.result(timeout=60)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 0}
        )
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="bare-kafka", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self.producer.poll(0.2)

    def send(self, key: str) -> None:
        done = threading.Event()
        errors: list[KafkaError] = []

        def delivered(error: KafkaError | None, message: Any) -> None:
            if error is not None:
                errors.append(error)
            done.set()

        self.producer.produce(self.topic, value=_RECORD, key=key.encode(), on_delivery=delivered)
        if not done.wait(60):
            raise TimeoutError("no acknowledgement from Kafka within 60 s")
        if errors:
            raise KafkaException(errors[0])

    def stop(self) -> None:
        self.producer.flush(30)
        self._stopping.set()
        self._poller.join(timeout=5)


def on_c_store(event: Any, out: Path, kafka: KafkaAck | None = None) -> int:
    uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "") or f"unknown-{threading.get_ident()}"
    try:
        with open(event.dataset_path, "rb") as src, open(out / f"{uid}.dcm", "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
    except OSError:
        logging.getLogger("bench.bare_scp").exception("C-STORE could not be written (0xA700)")
        return 0xA700
    if kafka is not None:
        try:
            kafka.send(uid)
        except Exception:
            logging.getLogger("bench.bare_scp").exception("Kafka did not acknowledge (0xA700)")
            return 0xA700
    return 0x0000


def on_conn_open(event: Any) -> None:
    with suppress(AttributeError, OSError):
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", default="BARE")
    parser.add_argument("--out", type=Path, required=True, help="directory the received files go to")
    parser.add_argument("--max-associations", type=int, default=16)
    parser.add_argument("--kafka-bootstrap", help="also wait for Kafka's acks=all per instance (with --kafka-topic)")
    parser.add_argument("--kafka-topic", help="the topic those records go to (created with 12 partitions)")
    parser.add_argument(
        "--prompt-dul", action="store_true", help="the listener's event-driven upper layer and reactor (prompt_dul.py)"
    )
    args = parser.parse_args(argv)
    if bool(args.kafka_bootstrap) != bool(args.kafka_topic):
        parser.error("--kafka-bootstrap and --kafka-topic go together")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)

    _config.STORE_RECV_CHUNKED_DATASET = True
    ae = AE(ae_title=args.aet)
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.maximum_associations = args.max_associations
    kafka = KafkaAck(args.kafka_bootstrap, args.kafka_topic) if args.kafka_bootstrap else None
    handlers: list[EventHandlerType] = [
        (evt.EVT_C_STORE, on_c_store, [args.out.absolute(), kafka]),
        (evt.EVT_CONN_OPEN, on_conn_open),
    ]
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda num, frame: stop.set())
    if args.prompt_dul:
        from cohortstream.settings import Settings
        from producers.dicom.prompt_dul import PromptGate, PromptRequestHandler

        limit = Settings.model_fields["dicom_scp_prompt_associations"].default  # the listener's

        server = ae.make_server(
            (args.host, args.port),
            evt_handlers=handlers,
            server_class=ThreadedAssociationServer,
            request_handler=PromptRequestHandler.with_gate(PromptGate(limit)),
        )
        threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True).start()
        ae._servers.append(server)  # as start_server does: server.shutdown() removes it
    else:
        started = ae.start_server((args.host, args.port), block=False, evt_handlers=handlers)
        assert started is not None  # block=False returns the server
        server = started
    also = f", then Kafka acks=all on {args.kafka_topic}" if kafka else ""
    also += ", event-driven DUL and reactor" if args.prompt_dul else ""
    print(f"bare SCP {args.aet} listening on {args.host}:{args.port}, writing to {args.out}{also}", flush=True)
    try:
        stop.wait()
    finally:
        server.shutdown()
        if kafka is not None:
            kafka.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
