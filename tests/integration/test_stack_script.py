"""deploy/stack.sh itself: a start that fails is loud, and `down` stops exactly what `up` started.

Uses the MongoDB-wire server alone (it starts in about a second) in a private state dir and port.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from tests.net import free_port

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "deploy" / "stack.sh"


def _stack(state: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "COHORTSTREAM_STACK_DIR": str(state),
        "COHORTSTREAM_STACK_SERVICES": "mongo",
        "COHORTSTREAM_STACK_MONGO_PORT": str(port),
    }
    return subprocess.run([str(STACK), *args], env=env, capture_output=True, text=True, timeout=120)


def test_up_then_down_stops_exactly_what_was_started(tmp_path: Path) -> None:
    port = free_port()
    up = _stack(tmp_path, port, "up")
    assert up.returncode == 0, up.stderr
    pid = int((tmp_path / "mongo" / "service.pid").read_text())
    assert Path(f"/proc/{pid}").exists()
    assert f"127.0.0.1:{port}" in (tmp_path / "stack.env").read_text()
    assert _stack(tmp_path, port, "status").returncode == 0

    down = _stack(tmp_path, port, "down")
    assert down.returncode == 0, down.stderr
    assert not (tmp_path / "mongo" / "service.pid").exists()
    status = Path(f"/proc/{pid}/status")
    assert not status.exists() or "zombie" in status.read_text()
    assert _stack(tmp_path, port, "status").returncode == 3


def test_a_service_that_cannot_start_fails_loudly_with_its_log(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        up = _stack(tmp_path, port, "up")
    assert up.returncode != 0
    assert "mongo failed to start" in up.stderr
    assert "last 50 lines" in up.stderr
    assert f"port 127.0.0.1:{port} is already in use" in up.stderr
    assert not (tmp_path / "mongo" / "service.pid").exists()
