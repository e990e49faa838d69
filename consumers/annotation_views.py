"""MongoDB view of annotation suggestions and their reviews (collection ``annotations``).

One document per suggestion (``_id`` = annotation id). The suggestion and every review
are kept in ``history`` (added with ``$addToSet`` on entries keyed by their event id, so
a replay adds nothing), never overwritten; the top-level ``status``/``reviewer``/``reason``
show the latest review by review time. Reviews and suggestions travel on different
topics, so either may arrive first: the suggestion sets ``status`` only when the
document is new, and a review replaces the status only when it is not older than the
one shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pymongo import UpdateOne

from cohortstream.events import AnnotationReviewed, AnnotationSuggested, ReviewDecision
from consumers.mongo_sink import IndexSpec, MongoSink
from consumers.statistics import counters_for_annotations, refresh_counters

__all__ = ["ReviewViews", "SuggestionViews", "review_updates", "suggestion_update"]

_STATUS = {
    ReviewDecision.ACCEPTED: "accepted",
    ReviewDecision.REJECTED: "rejected",
    ReviewDecision.CORRECTED: "corrected",
}


def suggestion_update(event: AnnotationSuggested) -> UpdateOne:
    """The upsert of one suggestion."""
    return UpdateOne(
        {"_id": str(event.annotation_id)},
        {
            "$set": {
                "annotation_id": str(event.annotation_id),
                "request_id": str(event.request_id) if event.request_id else None,
                "study_instance_uid": event.study_instance_uid,
                "series_instance_uid": event.series_instance_uid,
                "model_name": event.model_name,
                "model_version": event.model_version,
                "seg_sop_instance_uid": event.seg_sop_instance_uid,
                "segments": [segment.model_dump() for segment in event.segments],
                "uncertainty": event.uncertainty,
                "device": event.device,
                "inference_s": event.inference_s,
                "flags": list(event.flags),
                "flag_reasons": list(event.flag_reasons),
                "suggested_at": event.emitted_at,
            },
            "$setOnInsert": {"status": "suggested"},
            "$addToSet": {
                "history": {
                    "event_id": str(event.event_id),
                    "status": "suggested",
                    "at": event.emitted_at,
                    "by": event.model_name,
                    "reason": None,
                    "seg_sop_instance_uid": event.seg_sop_instance_uid,
                }
            },
        },
        upsert=True,
    )


def review_updates(event: AnnotationReviewed) -> list[UpdateOne]:
    """Append the review to the history, then show it if it is the latest."""
    status = _STATUS[event.decision]
    key = str(event.annotation_id)
    return [
        UpdateOne(
            {"_id": key},
            {
                "$setOnInsert": {
                    "annotation_id": key,
                    "study_instance_uid": event.study_instance_uid,
                    "series_instance_uid": event.series_instance_uid,
                },
                "$addToSet": {
                    "history": {
                        "event_id": str(event.event_id),
                        "status": status,
                        "at": event.reviewed_at,
                        "by": event.reviewer,
                        "reason": event.reason,
                        "seg_sop_instance_uid": event.corrected_seg_sop_instance_uid,
                    }
                },
            },
            upsert=True,
        ),
        UpdateOne(
            {
                "_id": key,
                "$or": [
                    {"reviewed_at": {"$exists": False}},
                    {"reviewed_at": None},
                    {"reviewed_at": {"$lte": event.reviewed_at}},
                ],
            },
            {
                "$set": {
                    "status": status,
                    "reviewed_at": event.reviewed_at,
                    "reviewer": event.reviewer,
                    "reason": event.reason,
                    "corrected_seg_sop_instance_uid": event.corrected_seg_sop_instance_uid,
                }
            },
        ),
    ]


class SuggestionViews(MongoSink):
    """Sink of ``annotation.suggested``."""

    INDEXES: ClassVar[IndexSpec] = {
        "annotations": [
            "series_instance_uid",
            ["status", "uncertainty"],
            "model_name",
            "study_instance_uid",
            ["model_name", "status"],  # for the statistics counters
        ]
    }

    async def apply(self, events: Sequence[AnnotationSuggested]) -> None:
        await self.bulk_write("annotations", [suggestion_update(e) for e in events], "update annotations view")
        await refresh_counters(self, counters_for_annotations({e.model_name for e in events}))


class ReviewViews(MongoSink):
    """Sink of ``annotation.reviewed``."""

    INDEXES = SuggestionViews.INDEXES

    async def apply(self, events: Sequence[AnnotationReviewed]) -> None:
        # In order, one review at a time: the status update of each depends on the last.
        operations: list[Any] = [op for event in events for op in review_updates(event)]
        await self.bulk_write("annotations", operations, "record annotation reviews")
        await refresh_counters(self, counters_for_annotations(await self._models_of(events)))

    async def _models_of(self, events: Sequence[AnnotationReviewed]) -> set[str]:
        """The models of the reviewed suggestions (a review event does not name it)."""
        ids = sorted({str(e.annotation_id) for e in events})
        docs = await self.retry(
            lambda: self.db["annotations"].find({"_id": {"$in": ids}}, {"model_name": 1}).to_list(None),
            "read reviewed models",
        )
        return {str(d["model_name"]) for d in docs if d.get("model_name")}
