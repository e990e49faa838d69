"""Turn a reviewer's decision on a suggestion into an ``AnnotationReviewed`` event.

The API never writes the ``annotations`` view: the views agent folds the event into it
(status, reviewer, history), so a review has exactly one path into every read model and a
replay of the topic rebuilds the same state. Re-reviewing is allowed (a reviewer may
change their mind, a second reader may overrule the first): each review is a new event
and the view appends it to ``history``. A client that wants to be sure it decides on
what it saw sends ``expected_status``; a different current status answers 409.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cohortstream.errors import CohortStreamError
from cohortstream.events import AnnotationReviewed, ReviewDecision

__all__ = [
    "PRODUCER",
    "AnnotationStatus",
    "ReviewConflict",
    "check_expected_status",
    "review_event",
    "status_after",
]

PRODUCER = "review-api"


class AnnotationStatus(StrEnum):
    """``status`` of an ``annotations`` document, as the views agent writes it."""

    SUGGESTED = "suggested"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    CORRECTED = "corrected"


_STATUS_AFTER = {
    ReviewDecision.ACCEPTED: AnnotationStatus.ACCEPTED,
    ReviewDecision.REJECTED: AnnotationStatus.REJECTED,
    ReviewDecision.CORRECTED: AnnotationStatus.CORRECTED,
}


class ReviewConflict(CohortStreamError):
    """The annotation's current status is not the one the client decided on."""


def status_after(decision: ReviewDecision) -> AnnotationStatus:
    """The status the view will show once it folded a review with ``decision``."""
    return _STATUS_AFTER[decision]


def check_expected_status(doc: Mapping[str, Any], expected: AnnotationStatus | None) -> None:
    """Raise :class:`ReviewConflict` when ``expected`` is given and differs from the view."""
    if expected is None:
        return
    current = doc.get("status")
    if current != expected.value:
        raise ReviewConflict(
            f"annotation {doc.get('annotation_id', doc.get('_id'))} is {current!r}, not {expected.value!r}; "
            "reload it and decide again"
        )


def _now_ms() -> datetime:
    # Avro timestamp-millis keeps milliseconds; truncating here makes what the client is
    # told equal to what consumers read back.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def review_event(
    doc: Mapping[str, Any],
    decision: ReviewDecision,
    reviewer: str,
    *,
    reason: str | None = None,
    corrected_seg_sop_instance_uid: str | None = None,
) -> AnnotationReviewed:
    """The event for a review of the suggestion ``doc`` (an ``annotations`` document)."""
    if decision is ReviewDecision.CORRECTED and not corrected_seg_sop_instance_uid:
        raise ValueError("a CORRECTED review needs corrected_seg_sop_instance_uid")
    if decision is not ReviewDecision.CORRECTED and corrected_seg_sop_instance_uid:
        raise ValueError("corrected_seg_sop_instance_uid belongs to CORRECTED reviews only")
    now = _now_ms()
    return AnnotationReviewed(
        producer=PRODUCER,
        emitted_at=now,
        annotation_id=uuid.UUID(str(doc["annotation_id"])),
        study_instance_uid=str(doc["study_instance_uid"]),
        series_instance_uid=str(doc["series_instance_uid"]),
        reviewer=reviewer,
        decision=decision,
        reason=reason,
        corrected_seg_sop_instance_uid=corrected_seg_sop_instance_uid,
        reviewed_at=now,
    )
