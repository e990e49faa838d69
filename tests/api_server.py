"""The real API under uvicorn on a free port, for tests that drive it with a browser."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from api.app import create_api
from cohortstream.settings import Settings
from tests.net import free_port

__all__ = ["running_api"]


@contextmanager
def running_api(settings: Settings, name: str = "test-api") -> Iterator[str]:
    """Serve ``create_api(settings)`` in a thread with its own loop; yield its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_api(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
