"""Several DICOM listener processes on one port (``dicom_scp_processes``).

One listener process is bound by Python's GIL: its association threads, pynetdicom's
reactors and the Kafka producer's loop share one core. With ``dicom_scp_processes`` N > 1,
``cohortstream dicom-scp`` starts N listener processes that bind the same port with
``SO_REUSEPORT``; the kernel hands each new association to one of them, so concurrent
associations use several cores. Each process has its own Kafka producer and shares the
content-addressed staging store (staging is idempotent across processes: the same bytes
land under the same name, renamed atomically).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from cohortstream.errors import CohortStreamError, ConfigurationError
from cohortstream.process_group import ChildProcess, ProcessGroup
from cohortstream.settings import Settings, env_var_name, settings_environment
from producers.dicom.listener import READY_MARKER, serve

__all__ = ["READY_LINE", "listener_children", "main", "serve_processes"]

READY_LINE = "dicom listener ready: every listener process is accepting associations"
_SHUTDOWN_MARGIN_S = 10.0


def listener_children(settings: Settings) -> list[ChildProcess]:
    """The ``dicom_scp_processes`` child processes, each ``cohortstream dicom-scp --one-process``."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigurationError(
            f"{env_var_name('dicom_scp_processes')} > 1 needs SO_REUSEPORT, which this platform lacks"
        )
    env = os.environ | settings_environment(settings)
    argv = [sys.executable, "-m", "cohortstream.cli", "dicom-scp", "--one-process"]
    return [ChildProcess(f"dicom-scp#{i + 1}", argv, dict(env)) for i in range(settings.dicom_scp_processes)]


def serve_processes(settings: Settings) -> int:
    """Run the listener: in this process when ``dicom_scp_processes`` is 1, else as that
    many supervised processes sharing the port, until SIGTERM/SIGINT."""
    if settings.dicom_scp_processes == 1:
        return serve(settings)
    group = ProcessGroup(
        listener_children(settings),
        ready_marker=READY_MARKER,
        ready_line=READY_LINE,
        # Each process drains its in-flight C-STOREs (bounded by the publish timeout) first.
        shutdown_timeout_s=settings.dicom_scp_publish_timeout_s + _SHUTDOWN_MARGIN_S,
        kind="dicom listener process",
    )
    return group.run()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m producers.dicom [--env-file FILE]``: the listener without the CLI.

    Same as ``cohortstream dicom-scp``, which is the documented way to run it; this entry
    point builds its own Settings so that nothing here imports the CLI. Runs
    ``dicom_scp_processes`` listener processes, as the CLI does.
    """
    parser = argparse.ArgumentParser(prog="python -m producers.dicom", description="Run the DICOM C-STORE listener.")
    parser.add_argument("--env-file", default=None, help="read settings from this env file too")
    args = parser.parse_args(argv)
    try:
        settings = Settings.load(args.env_file)
    except (ValidationError, CohortStreamError) as exc:
        print(f"producers.dicom: invalid settings: {exc}", file=sys.stderr)
        return 2
    from cohortstream.logs import configure_logging

    configure_logging(settings)
    try:
        return serve_processes(settings)
    except CohortStreamError as exc:
        print(f"producers.dicom: {exc}", file=sys.stderr)
        return 1
