#!/usr/bin/env python3
"""Wait until a MongoDB-wire server answers ``{ping: 1}`` with ``ok: 1``.

Standard library only (no pymongo), so the stack health check works before
the project's virtualenv exists.  Sends an OP_MSG (opcode 2013) with a single
kind-0 section holding the BSON document ``{ping: 1, $db: "admin"}`` and
decodes just enough of the BSON reply to read the ``ok`` field.

Usage: wait_mongo.py [--host 127.0.0.1] [--port 27017] [--timeout 60] [--tls-ca CA.pem]
(``--tls-ca``: the server speaks TLS, its certificate is checked against that CA.)
Exit status 0 when the server is healthy, 1 on timeout.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import struct
import sys
import time

OP_MSG = 2013


def _cstring(s: str) -> bytes:
    return s.encode() + b"\x00"


def _bson_ping() -> bytes:
    # element: int32 "ping" = 1; element: string "$db" = "admin"
    body = b"\x10" + _cstring("ping") + struct.pack("<i", 1)
    db = b"admin"
    body += b"\x02" + _cstring("$db") + struct.pack("<i", len(db) + 1) + db + b"\x00"
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by server")
        buf += chunk
    return buf


def _read_ok(doc: bytes) -> float | None:
    """Return the numeric value of the top-level ``ok`` field of a BSON doc."""
    pos, end = 4, len(doc) - 1
    while pos < end:
        etype = doc[pos]
        pos += 1
        nul = doc.index(b"\x00", pos)
        name = doc[pos:nul].decode()
        pos = nul + 1
        if etype == 0x01:  # double
            val, size = struct.unpack_from("<d", doc, pos)[0], 8
        elif etype == 0x10:  # int32
            val, size = struct.unpack_from("<i", doc, pos)[0], 4
        elif etype in (0x12, 0x11, 0x09):  # int64, timestamp, datetime
            val, size = struct.unpack_from("<q", doc, pos)[0], 8
        elif etype == 0x08:  # bool
            val, size = doc[pos], 1
        elif etype in (0x02, 0x0D, 0x0E):  # string, js code, symbol
            val, size = None, 4 + struct.unpack_from("<i", doc, pos)[0]
        elif etype in (0x03, 0x04):  # embedded document, array
            val, size = None, struct.unpack_from("<i", doc, pos)[0]
        elif etype == 0x05:  # binary
            val, size = None, 5 + struct.unpack_from("<i", doc, pos)[0]
        elif etype == 0x07:  # ObjectId
            val, size = None, 12
        elif etype == 0x13:  # decimal128
            val, size = None, 16
        elif etype in (0x0A, 0x06, 0x7F, 0xFF):  # null, undefined, max/min key
            val, size = None, 0
        else:
            return None  # unknown type: cannot continue safely
        if name == "ok":
            return float(val) if val is not None else None
        pos += size
    return None


def ping(host: str, port: int, timeout: float = 5.0, tls_ca: str | None = None) -> bool:
    doc = _bson_ping()
    payload = struct.pack("<I", 0) + b"\x00" + doc  # flagBits, section kind 0
    header = struct.pack("<iiii", 16 + len(payload), 1, 0, OP_MSG)
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock = ssl.create_default_context(cafile=tls_ca).wrap_socket(raw, server_hostname=host) if tls_ca else raw
        sock.sendall(header + payload)
        length, _req, _resp_to, opcode = struct.unpack("<iiii", _recv_exact(sock, 16))
        body = _recv_exact(sock, length - 16)
    if opcode != OP_MSG or body[4] != 0:
        return False
    reply = body[5:]
    reply = reply[: struct.unpack_from("<i", reply, 0)[0]]
    return _read_ok(reply) == 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=27017)
    ap.add_argument("--timeout", type=float, default=60.0, help="total seconds to keep retrying")
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--tls-ca", default=None, help="CA file: connect with TLS and verify the server")
    args = ap.parse_args()

    deadline = time.monotonic() + args.timeout
    last_err = "no attempt made"
    while True:
        try:
            if ping(args.host, args.port, tls_ca=args.tls_ca):
                print(f"mongo wire ping ok on {args.host}:{args.port}")
                return 0
            last_err = "server replied without ok: 1"
        except (OSError, ValueError, struct.error, IndexError) as exc:
            last_err = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            print(f"mongo wire ping failed on {args.host}:{args.port}: {last_err}", file=sys.stderr)
            return 1
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
