"""Lanes: which agents run together in one faust app (one process, one consumer group).

Why lanes: faust feeds every agent of an app from one shared fetcher. When one agent's
buffer is full (its sink waits for MongoDB or Orthanc), the fetcher waits to hand it the
next message, and every other agent of the app waits with it; a stalled EHR batch once
stopped the DICOM archive this way. An agent in a lane of its own has its own consumer,
so its wait holds back nobody else. The deployed worker (``cohortstream worker``) runs
one process per lane (:mod:`streams.supervisor`); tests may still run every agent in one
app (``build_worker_app(settings)``), which is the same code.

Each lane's consumer group is ``<app_id>-<lane>``.
"""

from __future__ import annotations

from types import MappingProxyType

from cohortstream.settings import Settings

__all__ = ["ARCHIVE_LANE", "LANES", "LANE_TOPICS", "lane_app_id", "lane_groups", "lane_topics"]

ARCHIVE_LANE = "dicom-archive"
"""The lane between an acknowledged instance and its ``in_orthanc`` mark: its fetches wait
less (``archive_fetch_max_wait_s``)."""

LANES: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        ARCHIVE_LANE: ("dicom-archive",),
        "dicom-views": ("dicom-views",),
        "series-completion": ("series-completion",),
        "redcap-views": ("redcap-views",),
        "ehr-views": ("ehr-views",),
        "annotation-views": ("annotation-suggestion-views", "annotation-review-views"),
        "dead-letters": ("dead-letter-archive",),
        "audit": ("audit-trail",),
        "features": (
            "features-ehr",
            "features-redcap",
            "features-dicom",
            "features-suggestions",
            "features-reviews",
        ),
    }
)
"""Lane name → the agent names (the ``AGENT_NAME`` of :mod:`streams.agents` modules) it runs."""

LANE_TOPICS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        "dicom-archive": ("dicom.instance-received",),
        "dicom-views": ("dicom.instance-received",),
        "series-completion": ("dicom.instance-received",),
        "redcap-views": ("redcap.record-changed",),
        "ehr-views": ("ehr.record",),
        "annotation-views": ("annotation.suggested", "annotation.reviewed"),
        "dead-letters": ("dead-letter",),
        "audit": ("audit.access",),
        "features": (
            "ehr.record",
            "redcap.record-changed",
            "dicom.instance-received",
            "annotation.suggested",
            "annotation.reviewed",
        ),
    }
)
"""Lane name → the catalogue topics (logical names) its agents consume: a lane that never
committed still shows its lag on them, so a lane stuck on its very first batch is seen."""


def lane_app_id(settings: Settings, lane: str) -> str:
    """The faust app id, and so the consumer group, of ``lane``."""
    if lane not in LANES:
        raise KeyError(f"unknown worker lane {lane!r} (known: {', '.join(LANES)})")
    return f"{settings.app_id}-{lane}"


def lane_topics(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Consumer group → the topics it consumes, for every lane."""
    return {lane_app_id(settings, lane): LANE_TOPICS[lane] for lane in LANES}


def lane_groups(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Consumer group → the agents it runs, for every lane."""
    return {lane_app_id(settings, lane): agents for lane, agents in LANES.items()}
