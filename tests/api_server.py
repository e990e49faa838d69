"""The real API under uvicorn on a free port, for tests that drive it with a browser."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from api.app import uvicorn_options
from cohortstream.settings import Settings
from tests.net import free_port

__all__ = ["running_api"]


@contextmanager
def running_api(settings: Settings, name: str = "test-api") -> Iterator[str]:
    """Serve the API as ``cohortstream api`` does (HTTPS when ``settings`` has a certificate) in a
    thread with its own loop; yield its base URL."""
    port = free_port()
    options = uvicorn_options(settings.model_copy(update={"api_host": "127.0.0.1", "api_port": port}))
    server = uvicorn.Server(uvicorn.Config(**options, lifespan="on"))
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:  # bounded wait for the bound socket (lifespan done)
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API did not start (see the log)")
        time.sleep(0.05)
    try:
        yield f"{'https' if settings.api_tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
