"""``deploy/stack.sh`` run by a test for a stack of its own: its own state dir, only the
services it names, its own ports, whatever the test process inherited about other stacks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["REPO", "stack_env", "stack_script"]

REPO = Path(__file__).resolve().parents[1]


def stack_env(state_dir: Path, services: str, **variables: str) -> dict[str, str]:
    """The environment for ``deploy/stack.sh``: ``variables`` become ``COHORTSTREAM_STACK_<NAME>``
    (e.g. ``kafka_port="19092"``); no other stack's ``COHORTSTREAM_STACK_*`` leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COHORTSTREAM_STACK_")}
    env.update(COHORTSTREAM_STACK_DIR=str(state_dir), COHORTSTREAM_STACK_SERVICES=services)
    env.update({f"COHORTSTREAM_STACK_{name.upper()}": value for name, value in variables.items()})
    return env


def stack_script(action: str, env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``deploy/stack.sh ACTION`` with ``env``, its output captured."""
    return subprocess.run(
        [str(REPO / "deploy" / "stack.sh"), action], env=env, capture_output=True, text=True, timeout=timeout_s
    )
