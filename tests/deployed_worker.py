"""Start the deployed worker (``cohortstream worker``: every lane, supervised) as the
stack does, with a test's settings, in subprocesses that share one log file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cohortstream.settings import Settings, settings_environment
from streams.supervisor import READY_LINE

__all__ = ["DeployedWorkers"]


class DeployedWorkers:
    """Each :meth:`start` runs one more worker process; :meth:`kill_all` ends what is left."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.log_path = log_path
        self._env = {**os.environ, **settings_environment(settings), "COHORTSTREAM_LOG_FORMAT": "console"}
        self._env.pop("COHORTSTREAM_ENV_FILE", None)  # the settings travel in the environment
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "cohortstream.cli", "worker"],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ready_count(self) -> int:
        """How many workers announced every lane ready (streams/supervisor.py READY_LINE)."""
        return self.log_text().count(READY_LINE)

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
