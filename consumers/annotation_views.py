"""MongoDB view of annotation suggestions and their reviews (collection ``annotations``).

One document per suggestion (``_id`` = annotation id). The suggestion and every review
are kept in ``history`` (added with ``$addToSet`` on entries keyed by their event id, so
a replay adds nothing), never overwritten (one exception: a correction the Orthanc change
feed recorded, ``outside_api``, gives way to the API's record of the same SEG); the top-level ``status``/``reviewer``/``reason``
show the latest review by review time. Reviews and suggestions travel on different
topics, so either may arrive first: the suggestion sets ``status`` only when the
document is new, and a review replaces the status only when it is not older than the
one shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pymongo import UpdateOne

from cohortstream.events import ORTHANC_FEED_PRODUCER, AnnotationReviewed, AnnotationSuggested, ReviewDecision
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


def _if_latest(event: AnnotationReviewed) -> dict[str, Any]:
    """Match only while no later review is shown: reviews may arrive out of order."""
    return {
        "$or": [
            {"reviewed_at": {"$exists": False}},
            {"reviewed_at": None},
            {"reviewed_at": {"$lte": event.reviewed_at}},
        ]
    }


def _shown_review(event: AnnotationReviewed, status: str) -> dict[str, Any]:
    """The fields that show a review as the suggestion's current state."""
    return {
        "$set": {
            "status": status,
            "reviewed_at": event.reviewed_at,
            "reviewer": event.reviewer,
            "reason": event.reason,
            "corrected_seg_sop_instance_uid": event.corrected_seg_sop_instance_uid,
        }
    }


def _history_entry(event: AnnotationReviewed, status: str) -> dict[str, Any]:
    return {
        "event_id": str(event.event_id),
        "status": status,
        "at": event.reviewed_at,
        "by": event.reviewer,
        "reason": event.reason,
        "seg_sop_instance_uid": event.corrected_seg_sop_instance_uid,
    }


def _outside_api_updates(event: AnnotationReviewed, status: str, key: str) -> list[UpdateOne]:
    """A correction the Orthanc change feed found (a SEG saved outside the API).

    The same SEG may also come through the API's ``/correct`` (which stores it in Orthanc,
    where the feed sees it): the API's review, with its reviewer and reason, is the record
    then. So this one is written only where no history entry names the SEG yet (status
    first, while that condition still holds), never creates the document (the feed only
    reports SEGs for suggestions in the view), and the API's review removes it
    (:func:`review_updates`).
    """
    seg = event.corrected_seg_sop_instance_uid
    not_recorded = {"_id": key, "history.seg_sop_instance_uid": {"$ne": seg}}
    return [
        UpdateOne({**not_recorded, **_if_latest(event)}, _shown_review(event, status)),
        UpdateOne(not_recorded, {"$push": {"history": {**_history_entry(event, status), "outside_api": True}}}),
    ]


def review_updates(event: AnnotationReviewed) -> list[UpdateOne]:
    """Append the review to the history, then show it if it is the latest.

    A review from the Orthanc change feed (``producer`` = ``orthanc-feed``: a SEG saved in
    Orthanc outside the API) is a correction made outside the API, marked
    ``outside_api`` in the history; the API's own review of the same SEG replaces it.
    """
    status = _STATUS[event.decision]
    key = str(event.annotation_id)
    if event.producer == ORTHANC_FEED_PRODUCER and event.corrected_seg_sop_instance_uid:
        return _outside_api_updates(event, status, key)
    replaces_outside: list[UpdateOne] = []
    if event.corrected_seg_sop_instance_uid:
        replaces_outside.append(
            UpdateOne(
                {"_id": key},
                {
                    "$pull": {
                        "history": {"seg_sop_instance_uid": event.corrected_seg_sop_instance_uid, "outside_api": True}
                    }
                },
            )
        )
    return [
        *replaces_outside,
        UpdateOne(
            {"_id": key},
            {
                "$setOnInsert": {
                    "annotation_id": key,
                    "study_instance_uid": event.study_instance_uid,
                    "series_instance_uid": event.series_instance_uid,
                },
                "$addToSet": {"history": _history_entry(event, status)},
            },
            upsert=True,
        ),
        UpdateOne({"_id": key, **_if_latest(event)}, _shown_review(event, status)),
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
