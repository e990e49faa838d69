"""CPU time per process group over a benchmark phase, from ``/proc`` (Linux).

Why: on a machine whose cores every process of the pipeline shares (the listener, the
worker lanes, Kafka, the MongoDB-wire server, Orthanc, storescu and the benchmark's own
pollers), throughput and latency are set by who spends the CPU. A phase's figures alone
cannot tell whether the archive lane or the measurement itself is the busy one; the
milliseconds of CPU per instance of each group can.

A group is a root process and every live descendant (the worker's lane processes, the
listener's extra processes), each descendant named by its ``--lane`` argument when it has
one. Processes that exit during the phase are not seen, except the benchmark's own
reaped children (storescu), which :func:`snapshot` reads from ``RUSAGE_CHILDREN``.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuSnapshot", "per_instance_ms", "snapshot"]

_TICKS = os.sysconf("SC_CLK_TCK")
SELF = "bench (pollers)"
REAPED = "storescu (reaped children)"


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds (user + system) per label at one moment."""

    seconds: Mapping[str, float]


def _stat(pid: int) -> tuple[int, float] | None:
    """``(parent pid, CPU seconds)`` of a live process; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS


def _label(pid: int, group: str) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return group
    if b"--lane" in argv and argv.index(b"--lane") + 1 < len(argv):
        return f"{group}: {argv[argv.index(b'--lane') + 1].decode(errors='replace')}"
    return group


def snapshot(roots: Mapping[str, int]) -> CpuSnapshot:
    """CPU seconds so far of each group in ``roots`` (label → root pid) and its live
    descendants, plus this process and its reaped children."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            parents[int(entry)], cpu[int(entry)] = stat
    seconds: dict[str, float] = {}
    for group, root in roots.items():
        for pid in cpu:
            ancestor = pid
            while ancestor not in (root, 0, 1) and ancestor in parents:
                ancestor = parents[ancestor]
            if ancestor == root:
                label = group if pid == root else _label(pid, group)
                seconds[label] = seconds.get(label, 0.0) + cpu[pid]
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds[SELF] = own.ru_utime + own.ru_stime
    seconds[REAPED] = reaped.ru_utime + reaped.ru_stime
    return CpuSnapshot(seconds)


def per_instance_ms(before: CpuSnapshot, after: CpuSnapshot, instances: int) -> dict[str, float]:
    """Milliseconds of CPU per instance of each label between two snapshots, largest
    first. A label absent before (a process started in between) counts from zero."""
    spent = {
        label: (total - before.seconds.get(label, 0.0)) * 1000 / max(instances, 1)
        for label, total in after.seconds.items()
    }
    return dict(sorted(spent.items(), key=lambda item: -item[1]))
