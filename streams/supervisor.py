"""The deployed worker: one child process per lane (:mod:`cohortstream.lanes`), supervised.

Each child is ``cohortstream worker --lane NAME`` with the parent's settings in its
environment, its own data directory and, when the worker's metrics port is set, its own
metrics port (``worker_metrics_port + i``, i counting lanes, then replicas). With
``worker_replicas`` N, every lane runs N times, all in the lane's consumer group: Kafka
splits the lane's partitions between them, and takes a dead one's over. The parent:

supervises them with :class:`cohortstream.process_group.ProcessGroup`:

- prints :data:`READY_LINE` once every lane printed :data:`streams.app.READY_MARKER` (at
  any log level; the local stack's health check and the benchmarks wait for that line);
- forwards SIGTERM/SIGINT and waits up to ``worker_shutdown_timeout_s`` for the lanes to
  stop cleanly (faust commits only what was applied; a message held by a sink paused by
  an outage is released uncommitted, see ``streams.app.CohortStreamApp``), then kills what
  is left, which commits nothing more;
- restarts a lane that died, with a growing delay, so one crashed lane never stops the
  others; a SIGKILL of the worker leaves no lane running (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from cohortstream.errors import ConfigurationError
from cohortstream.lanes import LANES
from cohortstream.process_group import ChildProcess, ProcessGroup
from cohortstream.settings import Settings, env_var_name, settings_environment
from streams.app import READY_MARKER

__all__ = ["READY_LINE", "check_metrics_ports", "run_worker"]

READY_LINE = "worker ready: every lane is running"


def _lane_children(settings: Settings, lanes: list[str], replicas: int) -> list[ChildProcess]:
    base = os.environ | settings_environment(settings)
    children: list[ChildProcess] = []
    for replica in range(replicas):
        for i, lane in enumerate(lanes):
            index = replica * len(lanes) + i
            name = lane if replicas == 1 else f"{lane}#{replica + 1}"
            env = dict(base)
            env[env_var_name("worker_metrics_port")] = str(
                settings.worker_metrics_port + index if settings.worker_metrics_port else 0
            )
            env[env_var_name("data_dir")] = str(settings.data_dir / name.replace("#", "-"))
            argv = [sys.executable, "-m", "cohortstream.cli", "worker", "--lane", lane]
            children.append(ChildProcess(name, argv, env))
    return children


def run_worker(settings: Settings, lanes: Sequence[str] | None = None) -> int:
    """Run ``lanes`` (all when None), ``worker_replicas`` processes each, as supervised
    child processes until SIGTERM/SIGINT. The replicas of a lane share its consumer group,
    so Kafka splits the lane's partitions between them."""
    chosen = list(LANES) if not lanes else list(lanes)
    unknown = [lane for lane in chosen if lane not in LANES]
    if unknown:
        raise ConfigurationError(f"unknown worker lane(s) {', '.join(unknown)} (known: {', '.join(LANES)})")
    check_metrics_ports(settings, len(chosen) * settings.worker_replicas)
    group = ProcessGroup(
        _lane_children(settings, chosen, settings.worker_replicas),
        ready_marker=READY_MARKER,
        ready_line=READY_LINE,
        shutdown_timeout_s=settings.worker_shutdown_timeout_s,
        kind="worker lane",
    )
    return group.run()


def check_metrics_ports(settings: Settings, lanes: int) -> None:
    """Refuse a layout where a lane's metrics port is the annotator's (a lane would fail
    to bind it and restart for ever): lanes take ``worker_metrics_port`` .. ``+ lanes - 1``."""
    base = settings.worker_metrics_port
    if base and settings.annotator_metrics_port and base <= settings.annotator_metrics_port < base + lanes:
        raise ConfigurationError(
            f"{env_var_name('worker_metrics_port')}={base}: the worker's {lanes} lanes serve metrics on ports "
            f"{base}-{base + lanes - 1}, which includes {env_var_name('annotator_metrics_port')}="
            f"{settings.annotator_metrics_port}; move one of them"
        )
