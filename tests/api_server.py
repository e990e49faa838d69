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

__all__ = ["running_api", "serving"]


@contextmanager
def serving(config: uvicorn.Config, name: str, *, start_timeout_s: float = 60) -> Iterator[None]:
    """Run ``config``'s server in a thread with its own loop until the block ends; enter the
    block only once its socket is bound (lifespan done), bounded by ``start_timeout_s``."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:  # bounded wait for the bound socket
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start (see the log)")
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout_s)


@contextmanager
def running_api(settings: Settings, name: str = "test-api") -> Iterator[str]:
    """Serve the API as ``cohortstream api`` does (HTTPS when ``settings`` has a certificate) in a
    thread with its own loop; yield its base URL."""
    port = free_port()
    options = uvicorn_options(settings.model_copy(update={"api_host": "127.0.0.1", "api_port": port}))
    with serving(uvicorn.Config(**options, lifespan="on"), name):
        yield f"{'https' if settings.api_tls else 'http'}://127.0.0.1:{port}"
