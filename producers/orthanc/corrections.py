"""A DICOM SEG that reaches Orthanc outside the API, for a series with an AI suggestion,
is a reviewer's correction: record it in the suggestion's review history.

A viewer (OHIF, 3D Slicer, …) saves its segmentation straight into Orthanc; the API never
sees it. The change feed does: for each SEG instance it publishes an
``AnnotationReviewed`` with decision ``CORRECTED``, ``producer`` = the feed, the
reviewer from the SEG's Content Creator's Name (0070,0084) and the time from its Content
Date/Time (0008,0023/0033, with the Timezone Offset From UTC when present). The review
goes to the latest suggestion for each series the SEG references (Referenced Series
Sequence).

Not every SEG is a correction:

- the suggestion's own SEG (the annotation worker stores it in Orthanc too) is known by
  its SOP Instance UID;
- a SEG whose segments are all ``AUTOMATIC`` (Segment Algorithm Type) was made by a
  program, like the worker's next suggestion, which can reach Orthanc before its event
  reaches the view: no person corrected anything;
- a SEG uploaded through the API's ``/correct`` is in Orthanc too: the API publishes its
  own review of it, and the view keeps that one (``consumers/annotation_views.py``): the
  feed's record of the same SEG is added only where none exists and is replaced by the
  API's.

The event id is derived from the annotation and the SEG, so a replayed page publishes
the same review again and the view adds nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from cohortstream.events import ORTHANC_FEED_PRODUCER, AnnotationReviewed, DicomInstanceReceived, ReviewDecision
from cohortstream.mongo import AsyncDatabase

__all__ = [
    "UNKNOWN_REVIEWER",
    "content_creator",
    "content_time",
    "correction_event",
    "corrections_for",
    "is_machine_made",
    "latest_suggestions",
    "referenced_series",
]

log = logging.getLogger(__name__)

UNKNOWN_REVIEWER = "unknown (saved outside the API)"
#: Namespace of the feed's review ids (uuid5 of annotation id and SEG UID): fixed, so a
#: replay makes the same id.
_REVIEW_NAMESPACE = uuid.UUID("0f6f2c1e-5d1a-4f7e-9b3c-2a8d4e6f1b70")


def _items(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def referenced_series(tags: Mapping[str, Any]) -> list[str]:
    """Series UIDs of the SEG's Referenced Series Sequence (0008,1115), in order."""
    uids = [str(item.get("SeriesInstanceUID")) for item in _items(tags.get("ReferencedSeriesSequence"))]
    return list(dict.fromkeys(uid for uid in uids if uid and uid != "None"))


def is_machine_made(tags: Mapping[str, Any]) -> bool:
    """Whether every segment of the SEG says a program made it (Segment Algorithm Type
    ``AUTOMATIC``); a SEG without segments counts as machine-made (nothing to review)."""
    kinds = [str(item.get("SegmentAlgorithmType", "")).upper() for item in _items(tags.get("SegmentSequence"))]
    return all(kind == "AUTOMATIC" for kind in kinds)


def content_creator(tags: Mapping[str, Any]) -> str:
    """Content Creator's Name as a person reads it (``Doe^Jane`` → ``Jane Doe``)."""
    raw = tags.get("ContentCreatorName")
    text = str(raw).strip() if isinstance(raw, str) else ""
    if not text:
        return UNKNOWN_REVIEWER
    family, _, given = text.partition("^")
    given = given.split("^")[0]
    return f"{given} {family}".strip() if given else family


def _tz(offset: Any) -> timezone:
    text = str(offset or "").strip()
    if len(text) == 5 and text[0] in "+-" and text[1:].isdigit():
        sign = 1 if text[0] == "+" else -1
        return timezone(sign * timedelta(hours=int(text[1:3]), minutes=int(text[3:5])))
    return UTC


def content_time(tags: Mapping[str, Any]) -> datetime | None:
    """Content Date + Content Time of the SEG in UTC (with Timezone Offset From UTC when
    given, else read as UTC), to the millisecond; None when the date is absent or malformed."""
    date = str(tags.get("ContentDate") or "").strip()
    time = str(tags.get("ContentTime") or "").strip() or "000000"
    if len(date) != 8 or not date.isdigit():
        return None
    whole, _, fraction = time.partition(".")
    whole = (whole + "000000")[:6]
    try:
        moment = datetime.strptime(date + whole, "%Y%m%d%H%M%S").replace(tzinfo=_tz(tags.get("TimezoneOffsetFromUTC")))
    except ValueError:
        return None
    millis = int((fraction + "000")[:3]) if fraction.isdigit() else 0
    return moment.astimezone(UTC).replace(microsecond=millis * 1000)


def correction_event(
    seg: DicomInstanceReceived, tags: Mapping[str, Any], annotation: Mapping[str, Any]
) -> AnnotationReviewed | None:
    """The review that records ``seg`` as a correction of ``annotation`` (an ``annotations``
    document), or None when the SEG is not a person's correction of it."""
    if seg.sop_instance_uid == annotation.get("seg_sop_instance_uid") or is_machine_made(tags):
        return None
    annotation_id = str(annotation.get("annotation_id") or annotation["_id"])
    reviewed_at = content_time(tags) or seg.received_at
    origin = seg.orthanc_origin or "unknown route"
    return AnnotationReviewed(
        event_id=uuid.uuid5(_REVIEW_NAMESPACE, f"{annotation_id}|{seg.sop_instance_uid}"),
        producer=ORTHANC_FEED_PRODUCER,
        annotation_id=uuid.UUID(annotation_id),
        study_instance_uid=str(annotation.get("study_instance_uid") or seg.study_instance_uid),
        series_instance_uid=str(annotation["series_instance_uid"]),
        reviewer=content_creator(tags),
        decision=ReviewDecision.CORRECTED,
        reason=f"DICOM SEG saved in Orthanc outside the API ({origin}, Orthanc instance {seg.orthanc_instance_id})",
        corrected_seg_sop_instance_uid=seg.sop_instance_uid,
        reviewed_at=reviewed_at,
    )


async def latest_suggestions(db: AsyncDatabase, series_uids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The latest suggestion (by ``suggested_at``) per series, from the ``annotations`` view."""
    if not series_uids:
        return {}
    docs = (
        await db["annotations"]
        .find(
            {"series_instance_uid": {"$in": list(series_uids)}, "suggested_at": {"$exists": True}},
            {
                "annotation_id": 1,
                "series_instance_uid": 1,
                "study_instance_uid": 1,
                "seg_sop_instance_uid": 1,
                "suggested_at": 1,
            },
        )
        .to_list()
    )
    latest: dict[str, dict[str, Any]] = {}
    for doc in docs:
        current = latest.get(doc["series_instance_uid"])
        if current is None or doc["suggested_at"] > current["suggested_at"]:
            latest[doc["series_instance_uid"]] = doc
    return latest


async def corrections_for(
    db: AsyncDatabase, segs: Sequence[tuple[DicomInstanceReceived, Mapping[str, Any]]]
) -> list[AnnotationReviewed]:
    """The reviews to publish for the SEGs of one batch."""
    wanted = {uid for _, tags in segs for uid in referenced_series(tags)}
    suggestions = await latest_suggestions(db, sorted(wanted))
    reviews = []
    for seg, tags in segs:
        for series_uid in referenced_series(tags):
            annotation = suggestions.get(series_uid)
            if annotation is None:
                continue
            review = correction_event(seg, tags, annotation)
            if review is not None:
                reviews.append(review)
                log.info(
                    "SEG saved outside the API recorded as a correction",
                    extra={
                        "annotation_id": str(review.annotation_id),
                        "series_instance_uid": series_uid,
                        "seg_sop_instance_uid": seg.sop_instance_uid,
                    },
                )
    return reviews
