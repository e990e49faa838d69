"""A bare pynetdicom Storage SCP: the ceiling of a Python C-STORE listener on this machine.

It receives the way our listener does (``producers/dicom/listener.py``): every storage SOP
class with every transfer syntax, ``_config.STORE_RECV_CHUNKED_DATASET`` (pynetdicom writes
each data set to a temporary Part-10 file), Nagle off on accepted connections. Then, per
C-STORE, it does only what durability needs at the least: copy that file to
``OUT/<SOPInstanceUID>.dcm``, fsync it, answer success. No parsing, no integrity check,
no hashing, no rename, no Kafka.

Run: ``.venv/bin/python -m bench.bare_scp --port 45113 --out DIR [--aet BARE]``; stops on
SIGTERM/SIGINT. ``bench/dicom_ingest.py`` runs it as a child process and waits for C-ECHO.
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

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

_CHUNK = 1 << 20


def on_c_store(event: Any, out: Path) -> int:
    uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "") or f"unknown-{threading.get_ident()}"
    try:
        with open(event.dataset_path, "rb") as src, open(out / f"{uid}.dcm", "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
    except OSError:
        logging.getLogger("bench.bare_scp").exception("C-STORE could not be written (0xA700)")
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)

    _config.STORE_RECV_CHUNKED_DATASET = True
    ae = AE(ae_title=args.aet)
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.maximum_associations = args.max_associations
    handlers: list[EventHandlerType] = [
        (evt.EVT_C_STORE, on_c_store, [args.out.absolute()]),
        (evt.EVT_CONN_OPEN, on_conn_open),
    ]
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda num, frame: stop.set())
    server = ae.start_server((args.host, args.port), block=False, evt_handlers=handlers)
    assert server is not None  # block=False returns the server
    print(f"bare SCP {args.aet} listening on {args.host}:{args.port}, writing to {args.out}", flush=True)
    try:
        stop.wait()
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
