"""Request bodies an HTTP service accepts: at most so many bytes, within so many seconds.

One plain ASGI middleware, shared by the API and the REDCap trigger endpoint, so that
neither a huge body nor a slow one (slow-loris: a client that opens a request and then
trickles its body) can tie up the service:

* a ``Content-Length`` above the route's limit answers **413** before one byte of the
  body is read; a body without a length (chunked) answers **413** as soon as it passes
  the limit;
* the whole body must arrive within ``timeout_s`` of the first read, or the answer is
  **408**;
* both answers carry ``Connection: close`` and are logged with the client's address and
  the route, never with the body. After a 413 the rest of the body is read and thrown
  away for at most ``timeout_s`` (a "lingering close", as nginx and Apache do) before the
  connection closes: a client still writing its body would otherwise get a connection
  reset instead of the 413 (closing a socket with unread data sends RST, and the peer
  drops the answer it had not read yet). Nothing of the body is kept, and a client that
  keeps sending past ``timeout_s`` is cut off. After a 408 the same happens for at most
  one second.

Each connection is a coroutine, so a client being refused (or one still sending) holds
no worker that another client needs; the test suite polls a good request during each
abuse to prove it. Requests without a body (GET, HEAD, …) pass untouched; once the body
is complete, the application's later ``receive`` calls (a streamed answer listening for
the client's disconnect) pass untouched too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimits"]

log = logging.getLogger(__name__)

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_SLOW_LINGER_S = 1.0
"""How long a client cut off for slowness may still send before the connection closes
(long enough to read its 408, short enough not to hold the connection much longer)."""


@dataclass
class _Exchange:
    started: bool = False
    refused: bool = False
    complete: bool = False
    received: int = 0


class BodyLimits:
    """ASGI middleware: ``limit_for(scope)`` bytes per request body, within ``timeout_s``."""

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[Scope], int], timeout_s: float, service: str) -> None:
        self.app = app
        self.limit_for = limit_for
        self.timeout_s = timeout_s
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            message = f"request body of {declared} bytes is larger than {limit} bytes"
            await self._refuse(scope, receive, send, 413, message)
            return
        exchange = _Exchange()
        deadline = time.monotonic() + self.timeout_s

        async def receiving() -> Message:
            if exchange.refused:
                return {"type": "http.disconnect"}
            if exchange.complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                await refuse(408, f"request body not received within {self.timeout_s:g} s", linger=True)
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                exchange.received += len(message.get("body", b""))
                if exchange.received > limit:
                    more = bool(message.get("more_body", False))
                    await refuse(413, f"request body is larger than {limit} bytes", linger=more)
                    return {"type": "http.disconnect"}
                exchange.complete = not message.get("more_body", False)
            return message

        async def refuse(status: int, message: str, *, linger: bool) -> None:
            exchange.refused = True
            if not exchange.started:
                exchange.started = True
                await self._refuse(scope, receive, send, status, message, linger=linger)

        async def sending(message: Message) -> None:
            if exchange.refused:
                return  # the application's own answer after a refusal is dropped
            if message["type"] == "http.response.start":
                exchange.started = True
            await send(message)

        await self.app(scope, receiving, sending)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, message: str, *, linger: bool = True
    ) -> None:
        client = scope.get("client")
        log.warning(
            "request body refused",
            extra={
                "service": self.service,
                "status": status,
                "reason": message,
                "path": scope.get("path"),
                "source": client[0] if client else None,
            },
        )
        body = json.dumps({"error": message, "field": None}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": linger})
        if linger:
            await self._discard_body(receive, self.timeout_s if status == 413 else min(self.timeout_s, _SLOW_LINGER_S))
            await send({"type": "http.response.body", "body": b""})

    async def _discard_body(self, receive: Receive, linger_s: float) -> None:
        """Read and drop what the client still sends, for at most ``linger_s``."""
        deadline = time.monotonic() + linger_s
        try:
            while True:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
        except TimeoutError:
            return


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
