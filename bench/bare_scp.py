"""A bare pynetdicom Storage SCP: the ceiling of a Python C-STORE listener on this machine.

It receives the way our listener does (``producers/dicom/listener.py``): every storage SOP
class with every transfer syntax, ``_config.STORE_RECV_CHUNKED_DATASET`` (pynetdicom writes
each data set to a temporary Part-10 file), Nagle off on accepted connections. Then, per
C-STORE, it does only what durability needs at the least: copy that file to
``OUT/<SOPInstanceUID>.dcm``, fsync it, answer success. No parsing, no integrity check,
no hashing, no rename, no Kafka.

With ``--kafka-bootstrap HOST:PORT --kafka-topic TOPIC`` it also, after the fsync, sends
one 600-byte record (about the size of our ``DicomInstanceReceived`` event) with an
``acks=all`` idempotent aiokafka producer and waits for the broker's acknowledgement
before answering: the ceiling of any listener that must have both the bytes on disk and
Kafka's ack before success (design decision 3), still without parsing or staging.

Run: ``.venv/bin/python -m bench.bare_scp --port 45113 --out DIR [--aet BARE]
[--kafka-bootstrap HOST:PORT --kafka-topic TOPIC]``; stops on SIGTERM/SIGINT.
``bench/dicom_ingest.py`` runs it as a child process and waits for C-ECHO.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import threading
from contextlib import suppress
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

_CHUNK = 1 << 20
_RECORD = b"\x00" * 600


class KafkaAck:
    """An aiokafka producer on its own event loop thread, as our listener's bridge has."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="bare-kafka", daemon=True).start()
        self.producer = self._run(self._start(bootstrap))

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    async def _start(self, bootstrap: str) -> AIOKafkaProducer:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(self.topic, num_partitions=12, replication_factor=1)])
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        return producer

    def send(self, key: str) -> None:
        self._run(self.producer.send_and_wait(self.topic, value=_RECORD, key=key.encode()))

    def stop(self) -> None:
        self._run(self.producer.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)


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
    server = ae.start_server((args.host, args.port), block=False, evt_handlers=handlers)
    assert server is not None  # block=False returns the server
    also = f", then Kafka acks=all on {args.kafka_topic}" if kafka else ""
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
