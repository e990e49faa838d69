"""The API over HTTPS: uvicorn's TLS options from settings, and HSTS on every answer.

With ``api_tls_certfile``/``api_tls_keyfile`` set the API serves HTTPS only (no plain
port next to it), and every response carries ``Strict-Transport-Security`` so a browser
that once reached it never falls back to plain HTTP (a downgrade by a network attacker).
Without TLS no HSTS is sent: the header is ignored over HTTP and would only mislead.
Python's TLS server context already refuses anything older than TLS 1.2.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cohortstream.settings import Settings

__all__ = ["StrictTransportSecurity", "uvicorn_tls_options"]


def uvicorn_tls_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``/``uvicorn.run``: the certificate and key, or nothing."""
    if not settings.api_tls:
        return {}
    return {"ssl_certfile": str(settings.api_tls_certfile), "ssl_keyfile": str(settings.api_tls_keyfile)}


class StrictTransportSecurity:
    """Plain ASGI middleware adding ``Strict-Transport-Security`` to every HTTP response."""

    def __init__(self, app: ASGIApp, max_age_s: int) -> None:
        self.app = app
        self.header = (b"strict-transport-security", f"max-age={max_age_s}; includeSubDomains".encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_hsts)
