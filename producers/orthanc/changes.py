"""Orthanc's change log as data: pages of ``/changes``, and where the feed stands in it.

Pure functions, so the rules that decide what is published (and what is reported lost)
are unit-tested without an Orthanc.

Orthanc numbers its changes with a growing sequence (``Seq``) and keeps a bounded number
of them: old entries are dropped, and an operator may clear the log (``DELETE
/changes``) or replace the database. The feed stores the sequence number of the last
change it published (its checkpoint). Three cases tell whether the log still holds what
comes after it:

- the first change after the checkpoint is the next number: nothing is missing;
- the oldest change Orthanc still keeps is beyond the checkpoint's next number: changes
  fell out of the retained window while the feed was behind (or stopped). That gap is
  reported loudly, and ``cohortstream orthanc reconcile`` publishes what is missing;
- Orthanc's newest change is *below* the checkpoint: its log restarted (a new database).
  Everything it keeps is read again from the start (sinks are idempotent), and the gap
  is reported too, since what happened before the restart is unknown.

A jump in the numbers alone is not a gap: a PostgreSQL index leaves holes in the sequence
when transactions roll back, so only the oldest retained change decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "NEW_INSTANCE",
    "Change",
    "ChangePage",
    "WindowGap",
    "find_gap",
    "first_position",
    "new_instances",
    "parse_orthanc_time",
    "parse_page",
]

NEW_INSTANCE = "NewInstance"


@dataclass(frozen=True)
class Change:
    """One entry of Orthanc's change log."""

    seq: int
    change_type: str
    resource_type: str
    resource_id: str
    date: str


@dataclass(frozen=True)
class ChangePage:
    """One answer of ``GET /changes?since=&limit=``."""

    changes: tuple[Change, ...]
    done: bool
    """Orthanc had no more changes after this page when it answered."""
    last: int
    """Sequence number of the last change of the page (``since`` when the page is empty)."""


@dataclass(frozen=True)
class WindowGap:
    """Changes the feed can no longer read from Orthanc's log."""

    after_seq: int
    """The checkpoint: every change up to here was published."""
    resumed_at_seq: int
    """Where the feed goes on reading (the position before the oldest change kept)."""
    reason: str


def parse_page(body: Mapping[str, Any], since: int) -> ChangePage:
    """The page Orthanc answered to ``since``; changes come sorted by sequence number."""
    changes = tuple(
        sorted(
            (
                Change(
                    seq=int(item["Seq"]),
                    change_type=str(item.get("ChangeType", "")),
                    resource_type=str(item.get("ResourceType", "")),
                    resource_id=str(item.get("ID", "")),
                    date=str(item.get("Date", "")),
                )
                for item in body.get("Changes", [])
            ),
            key=lambda c: c.seq,
        )
    )
    last = changes[-1].seq if changes else max(since, int(body.get("Last", since) or since))
    return ChangePage(changes=changes, done=bool(body.get("Done", True)), last=last)


def new_instances(page: ChangePage) -> list[Change]:
    """The page's ``NewInstance`` changes, one per instance (the first if Orthanc logged
    one twice), in log order. Other change types (new series/study/patient, stable
    series, deletions, attachments) carry nothing an instance event needs: a
    ``NewInstance`` is logged for every instance stored, whatever its route."""
    seen: set[str] = set()
    picked = []
    for change in page.changes:
        if change.change_type == NEW_INSTANCE and change.resource_id not in seen:
            seen.add(change.resource_id)
            picked.append(change)
    return picked


def first_position(start: Literal["backfill", "now"], orthanc_last_seq: int) -> int:
    """Where a feed without a checkpoint begins: before every change Orthanc keeps
    (``backfill``), or after the newest one (``now``)."""
    return 0 if start == "backfill" else orthanc_last_seq


def find_gap(checkpoint: int, oldest_kept_seq: int | None, newest_seq: int) -> WindowGap | None:
    """Whether Orthanc's log still holds every change after ``checkpoint`` (see the module
    docstring). ``oldest_kept_seq`` is None when the log is empty."""
    if newest_seq < checkpoint:
        return WindowGap(
            after_seq=checkpoint,
            resumed_at_seq=0,
            reason=f"Orthanc's newest change is {newest_seq}, below the checkpoint {checkpoint}: its change log "
            "restarted (a new or restored database); every change it keeps is read again",
        )
    if oldest_kept_seq is not None and oldest_kept_seq > checkpoint + 1:
        return WindowGap(
            after_seq=checkpoint,
            resumed_at_seq=oldest_kept_seq - 1,
            reason=f"changes {checkpoint + 1}..{oldest_kept_seq - 1} are no longer in Orthanc's change log (it keeps "
            f"a bounded number, or was cleared): instances stored then may be missing",
        )
    return None


def parse_orthanc_time(text: str | None) -> datetime | None:
    """Orthanc's ``20261130T121314`` timestamps (``ReceptionDate``, a change's ``Date``),
    which Orthanc writes in UTC; None when absent or malformed."""
    if not text:
        return None
    try:
        return datetime.strptime(text[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
