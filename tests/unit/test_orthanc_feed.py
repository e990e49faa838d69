"""The Orthanc change feed's pure rules: pages, positions, gaps, events, SEG corrections."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

import pytest

from cohortstream.codec import EventCodec
from cohortstream.events import ORTHANC_FEED_PRODUCER, AnnotationReviewed, DicomInstanceReceived, ReviewDecision
from consumers.annotation_views import review_updates
from producers.orthanc.changes import find_gap, first_position, new_instances, parse_orthanc_time, parse_page
from producers.orthanc.corrections import (
    UNKNOWN_REVIEWER,
    content_creator,
    content_time,
    correction_event,
    is_machine_made,
    referenced_series,
)
from producers.orthanc.instances import SEGMENTATION_STORAGE, event_from_orthanc
from producers.orthanc.status import FeedStatus


def _change(seq: int, kind: str = "NewInstance", rid: str = "i") -> dict[str, Any]:
    return {"Seq": seq, "ChangeType": kind, "ID": rid, "ResourceType": "Instance", "Date": "20261130T101010"}


def test_a_page_is_sorted_and_keeps_one_new_instance_change_per_instance() -> None:
    body = {
        "Changes": [_change(12, rid="b"), _change(11, rid="a"), _change(13, "NewSeries", "s"), _change(14, rid="a")],
        "Done": False,
        "Last": 14,
    }
    page = parse_page(body, 10)
    assert [c.seq for c in page.changes] == [11, 12, 13, 14]
    assert page.last == 14 and not page.done
    assert [(c.seq, c.resource_id) for c in new_instances(page)] == [(11, "a"), (12, "b")]


def test_an_empty_page_stays_where_it_was() -> None:
    page = parse_page({"Changes": [], "Done": True, "Last": 0}, 40)
    assert page.changes == () and page.last == 40 and page.done


def test_first_start_backfills_or_starts_from_now() -> None:
    assert first_position("backfill", 900) == 0
    assert first_position("now", 900) == 900


def test_no_gap_while_the_log_holds_the_next_change_even_with_holes_in_the_numbers() -> None:
    assert find_gap(100, oldest_kept_seq=50, newest_seq=300) is None
    assert find_gap(100, oldest_kept_seq=101, newest_seq=300) is None
    assert find_gap(100, oldest_kept_seq=None, newest_seq=100) is None  # empty log, caught up


def test_a_checkpoint_out_of_the_retained_window_is_a_gap() -> None:
    gap = find_gap(100, oldest_kept_seq=250, newest_seq=900)
    assert gap is not None
    assert (gap.after_seq, gap.resumed_at_seq) == (100, 249)
    assert "101..249" in gap.reason


def test_a_log_that_restarted_below_the_checkpoint_is_read_again_from_the_start() -> None:
    gap = find_gap(500, oldest_kept_seq=1, newest_seq=20)
    assert gap is not None and gap.resumed_at_seq == 0 and "restarted" in gap.reason


def test_orthanc_times_are_utc() -> None:
    assert parse_orthanc_time("20261130T121314") == datetime(2026, 11, 30, 12, 13, 14, tzinfo=UTC)
    assert parse_orthanc_time("garbage") is None and parse_orthanc_time(None) is None


def _instance(**metadata: str) -> dict[str, Any]:
    return {
        "ID": "0a-instance",
        "Type": "Instance",
        "FileSize": 135_000,
        "ParentSeries": "0a-series",
        "MainDicomTags": {"SOPInstanceUID": "1.2.3.4.5", "InstanceNumber": "7"},
        "Metadata": {
            "SopClassUid": "1.2.840.10008.5.1.4.1.1.4",
            "TransferSyntax": "1.2.840.10008.1.2.1",
            "RemoteAET": "MODALITY",
            "CalledAET": "ORTHANC",
            "Origin": "DicomProtocol",
            "ReceptionDate": "20261130T101112",
            **metadata,
        },
    }


SERIES_TAGS = {
    "PatientID": "P-1",
    "PatientSex": "F",
    "PatientAge": "047Y",
    "StudyInstanceUID": "1.2.3",
    "SeriesInstanceUID": "1.2.3.4",
    "StudyDate": "20260102",
    "StudyDescription": "head",
    "SeriesDescription": "T1",
    "SeriesNumber": "3",
    "InstanceNumber": "1",  # the sample instance's: never this instance's
    "SOPInstanceUID": "1.2.3.4.1",
    "Modality": "MR",
    "BodyPartExamined": "HEAD",
    "ReferencedImageSequence": [{"ReferencedSOPInstanceUID": "x"}],
}


def test_an_orthanc_instance_becomes_the_same_event_contract_without_a_staged_file() -> None:
    event = event_from_orthanc(_instance(), SERIES_TAGS, change_seq=42)
    assert event.producer == ORTHANC_FEED_PRODUCER
    assert (event.sop_instance_uid, event.instance_number, event.series_instance_uid) == ("1.2.3.4.5", 7, "1.2.3.4")
    assert (event.patient_id, event.patient_sex, event.patient_age) == ("P-1", "F", "047Y")
    assert (event.study_date, event.series_number, event.modality) == (date(2026, 1, 2), 3, "MR")
    assert (event.calling_aet, event.called_aet, event.transfer_syntax_uid) == (
        "MODALITY",
        "ORTHANC",
        "1.2.840.10008.1.2.1",
    )
    assert event.received_at == datetime(2026, 11, 30, 10, 11, 12, tzinfo=UTC)
    assert (event.sha256, event.staged_uri, event.staged) == (None, None, False)
    assert (event.orthanc_instance_id, event.orthanc_origin, event.orthanc_change_seq) == (
        "0a-instance",
        "DicomProtocol",
        42,
    )
    assert event.size_bytes == 135_000
    codec = EventCodec()
    assert codec.decode_event(codec.encode_event(event)) == event


def test_a_rest_upload_has_no_ae_titles() -> None:
    item = _instance(Origin="RestApi")
    del item["Metadata"]["RemoteAET"], item["Metadata"]["CalledAET"]
    event = event_from_orthanc(item, SERIES_TAGS)
    assert (event.calling_aet, event.called_aet, event.orthanc_origin) == ("", "", "RestApi")


def test_an_event_needs_a_staged_file_or_an_orthanc_instance() -> None:
    event = event_from_orthanc(_instance(), SERIES_TAGS)
    fields = event.model_dump()
    with pytest.raises(ValueError, match="orthanc_instance_id"):
        DicomInstanceReceived(**{**fields, "orthanc_instance_id": None})
    with pytest.raises(ValueError, match="come together"):
        DicomInstanceReceived(**{**fields, "sha256": "a" * 64})


SEG_TAGS: dict[str, Any] = {
    "ReferencedSeriesSequence": [{"SeriesInstanceUID": "1.2.3.4"}, {"SeriesInstanceUID": "1.2.3.4"}],
    "SegmentSequence": [{"SegmentAlgorithmType": "MANUAL"}, {"SegmentAlgorithmType": "AUTOMATIC"}],
    "ContentCreatorName": "Doe^Jane",
    "ContentDate": "20261130",
    "ContentTime": "101500.25",
    "TimezoneOffsetFromUTC": "+0100",
}


def test_seg_attributes_for_the_review_history() -> None:
    assert referenced_series(SEG_TAGS) == ["1.2.3.4"]
    assert not is_machine_made(SEG_TAGS)
    assert is_machine_made({"SegmentSequence": [{"SegmentAlgorithmType": "AUTOMATIC"}]})
    assert content_creator(SEG_TAGS) == "Jane Doe"
    assert content_creator({}) == UNKNOWN_REVIEWER
    assert content_time(SEG_TAGS) == datetime(2026, 11, 30, 9, 15, 0, 250_000, tzinfo=UTC)
    assert content_time({"ContentDate": "bad"}) is None


def _seg_event() -> DicomInstanceReceived:
    item = _instance(SopClassUid=SEGMENTATION_STORAGE, Origin="RestApi")
    item["MainDicomTags"] = {"SOPInstanceUID": "9.9.9"}
    return event_from_orthanc(item, {**SERIES_TAGS, "Modality": "SEG", "SeriesInstanceUID": "9.9"})


ANNOTATION = {
    "_id": "7d7c1f44-0d3c-4f0a-9d7b-0c1f3a1c2b3d",
    "annotation_id": "7d7c1f44-0d3c-4f0a-9d7b-0c1f3a1c2b3d",
    "series_instance_uid": "1.2.3.4",
    "study_instance_uid": "1.2.3",
    "seg_sop_instance_uid": "8.8.8",
}


def test_a_person_s_seg_is_a_correction_made_outside_the_api_with_a_stable_id() -> None:
    review = correction_event(_seg_event(), SEG_TAGS, ANNOTATION)
    assert review is not None
    assert review.decision is ReviewDecision.CORRECTED and review.producer == ORTHANC_FEED_PRODUCER
    assert (review.reviewer, review.corrected_seg_sop_instance_uid) == ("Jane Doe", "9.9.9")
    assert review.reviewed_at == datetime(2026, 11, 30, 9, 15, 0, 250_000, tzinfo=UTC)
    assert "outside the API" in (review.reason or "")
    again = correction_event(_seg_event(), SEG_TAGS, ANNOTATION)
    assert again is not None and again.event_id == review.event_id


def test_the_suggestion_s_own_seg_and_machine_made_segs_are_not_corrections() -> None:
    assert correction_event(_seg_event(), SEG_TAGS, {**ANNOTATION, "seg_sop_instance_uid": "9.9.9"}) is None
    machine = {**SEG_TAGS, "SegmentSequence": [{"SegmentAlgorithmType": "AUTOMATIC"}]}
    assert correction_event(_seg_event(), machine, ANNOTATION) is None


def _review(producer: str) -> AnnotationReviewed:
    return AnnotationReviewed(
        producer=producer,
        annotation_id=uuid.UUID(ANNOTATION["annotation_id"]),
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        reviewer="x",
        decision=ReviewDecision.CORRECTED,
        corrected_seg_sop_instance_uid="9.9.9",
        reviewed_at=datetime(2026, 11, 30, tzinfo=UTC),
    )


def test_the_view_adds_an_outside_correction_only_where_the_seg_is_not_recorded() -> None:
    status, history = review_updates(_review(ORTHANC_FEED_PRODUCER))
    for update in (status, history):
        assert update._filter["history.seg_sop_instance_uid"] == {"$ne": "9.9.9"}
        assert not update._upsert
    assert history._doc["$push"]["history"]["outside_api"] is True


def test_the_api_s_review_of_a_seg_replaces_the_feed_s_record_of_it() -> None:
    pull, *rest = review_updates(_review("api"))
    assert pull._doc == {"$pull": {"history": {"seg_sop_instance_uid": "9.9.9", "outside_api": True}}}
    assert "outside_api" not in rest[0]._doc["$addToSet"]["history"]


def test_status_reports_lag_and_gap() -> None:
    status = FeedStatus()
    assert status.as_json()["status"] == "starting"
    status.moved(90, 100, "20261130T101010")
    body = status.as_json()
    assert (body["status"], body["lag_changes"], body["checkpoint_seq"]) == ("ok", 10, 90)
    status.set_gap({"after_seq": 1, "resumed_at_seq": 5, "reason": "r"})
    assert status.as_json()["status"] == "degraded"
    assert status.as_json()["gap"]["remedy"] == "cohortstream orthanc reconcile"
    status.moved(100, 100, None)
    assert status.lag_changes == 0 and status.lag_seconds == 0


async def test_the_status_app_answers_health_and_metrics() -> None:
    import httpx

    from producers.orthanc.status import create_status_app

    status = FeedStatus()
    transport = httpx.ASGITransport(app=create_status_app(status))
    async with httpx.AsyncClient(transport=transport, base_url="http://feed") as client:
        assert (await client.get("/healthz")).status_code == 503  # nothing read yet
        status.moved(5, 7, "20261130T101010")
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json()["lag_changes"] == 2
        metrics = (await client.get("/metrics")).text
        assert "cohortstream_orthanc_feed_lag_changes 2.0" in metrics
        assert "cohortstream_orthanc_feed_checkpoint_seq 5.0" in metrics


def test_a_sibling_s_event_reads_only_its_instance_level_values_again() -> None:
    from producers.orthanc.instances import event_from_attributes, orthanc_attributes, sibling_attributes

    series = orthanc_attributes(_instance(), SERIES_TAGS)
    other = _instance(SopClassUid="1.2.840.10008.5.1.4.1.1.4.1")
    other["MainDicomTags"] = {"SOPInstanceUID": "1.2.3.4.6", "InstanceNumber": " 8"}
    other["ID"] = "0b-instance"
    fast = event_from_attributes(other, sibling_attributes(other, series))
    assert fast == event_from_orthanc(other, SERIES_TAGS).model_copy(
        update={"event_id": fast.event_id, "emitted_at": fast.emitted_at}
    )
    assert (fast.sop_instance_uid, fast.instance_number, fast.sop_class_uid) == (
        "1.2.3.4.6",
        8,
        "1.2.840.10008.5.1.4.1.1.4.1",
    )


def test_the_views_mark_an_instance_from_the_feed_as_in_orthanc_in_their_batch() -> None:
    from consumers.dicom_views import view_updates

    event = event_from_orthanc(_instance(), SERIES_TAGS)
    (update,) = view_updates([event], lambda ids: "")["instances"]
    assert update._doc["$set"] == {"in_orthanc": True}
    assert update._doc["$addToSet"]["received_sha256"] == {"$each": ["orthanc"]}
