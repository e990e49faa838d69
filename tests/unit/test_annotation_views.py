"""The annotations view's updates: history kept, latest review shown, order-independent."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from cohortstream.events import (
    AnnotationReviewed,
    AnnotationSuggested,
    ReviewDecision,
    SuggestedSegment,
)
from consumers.annotation.worker import annotation_id_for
from consumers.annotation_views import review_updates, suggestion_update

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
ANNOTATION = annotation_id_for("1.2.3.4", 1, "phantom-sphere-unet", "1.0.0")


def _suggested() -> AnnotationSuggested:
    return AnnotationSuggested(
        producer="annotation-worker",
        emitted_at=T0,
        annotation_id=ANNOTATION,
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        model_name="phantom-sphere-unet",
        model_version="1.0.0",
        seg_sop_instance_uid="2.25.1",
        segments=[SuggestedSegment(segment_number=1, label="Sphere", voxel_count=10, volume_ml=0.01)],
        uncertainty=0.1,
        device="cpu",
        inference_s=0.5,
    )


def _review(decision: ReviewDecision, minutes: int, reason: str | None = None) -> AnnotationReviewed:
    return AnnotationReviewed(
        producer="review-api",
        annotation_id=ANNOTATION,
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        reviewer="r1",
        decision=decision,
        reason=reason,
        reviewed_at=T0 + timedelta(minutes=minutes),
    )


def test_annotation_ids_are_stable_per_series_revision_and_model() -> None:
    assert annotation_id_for("1.2.3.4", 1, "m", "1") == annotation_id_for("1.2.3.4", 1, "m", "1")
    assert len({annotation_id_for("1.2.3.4", r, "m", v) for r in (1, 2) for v in ("1", "2")}) == 4
    assert isinstance(ANNOTATION, uuid.UUID)


def test_a_suggestion_sets_status_only_on_a_new_document() -> None:
    doc = suggestion_update(_suggested())._doc
    assert doc["$setOnInsert"] == {"status": "suggested"}
    assert "status" not in doc["$set"]
    assert doc["$addToSet"]["history"]["status"] == "suggested"


def test_a_review_is_appended_and_shown_only_if_not_older_than_the_shown_one() -> None:
    history, status = review_updates(_review(ReviewDecision.REJECTED, 5, reason="too small"))
    entry = history._doc["$addToSet"]["history"]
    assert (entry["status"], entry["reason"], entry["by"]) == ("rejected", "too small", "r1")
    assert "status" not in history._doc.get("$setOnInsert", {})
    assert {"reviewed_at": {"$lte": T0 + timedelta(minutes=5)}} in status._filter["$or"]
    assert status._doc["$set"]["status"] == "rejected"
    assert not status._upsert


def test_replaying_an_event_produces_the_same_history_entry() -> None:
    review = _review(ReviewDecision.ACCEPTED, 1)
    assert review_updates(review)[0]._doc == review_updates(review)[0]._doc


def test_errors_raised_in_the_inference_process_survive_pickling() -> None:
    import pickle

    from consumers.annotation.errors import GeometryError

    error = pickle.loads(pickle.dumps(GeometryError("ImagePositionPatient", "duplicate position")))
    assert (error.attribute, error.reason, str(error)) == (
        "ImagePositionPatient",
        "duplicate position",
        "ImagePositionPatient: duplicate position",
    )
