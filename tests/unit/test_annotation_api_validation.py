"""The review API's pure pieces: cursors and page splitting, review events, and the
checks an uploaded corrected DICOM SEG must pass (no service needed)."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from api.pagination import (
    MAX_LIMIT,
    Cursor,
    CursorError,
    SortOrder,
    after_filter,
    page,
    sort_spec,
)
from api.reviews import (
    AnnotationStatus,
    ReviewConflict,
    check_expected_status,
    review_event,
    status_after,
)
from api.seg_upload import (
    SEGMENTATION_STORAGE,
    SegUploadError,
    check_segmentation,
    read_segmentation,
    referenced_instance_uids,
    referenced_series_uids,
)
from cohortstream.codec import EventCodec
from cohortstream.events import ReviewDecision
from tests.annotation_api_data import PhantomWithSeg, dataset_bytes, phantom_with_seg


@pytest.fixture(scope="module")
def phantom() -> PhantomWithSeg:
    return phantom_with_seg()


async def _never(uids: frozenset[str]) -> bool:
    raise AssertionError("the instance lookup must not be needed when the series is referenced")


# --- pagination -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cursor",
    [
        Cursor(SortOrder.ID, "0b0e2f1c-0000-4000-8000-000000000001"),
        Cursor(SortOrder.UNCERTAINTY, "a", 0.125),
        Cursor(SortOrder.UNCERTAINTY, "b", None),
        Cursor(SortOrder.UNCERTAINTY, "c", 1.0),
    ],
)
def test_a_cursor_reads_back_as_written(cursor: Cursor) -> None:
    text = cursor.encode()
    assert text.isascii() and "=" not in text and "/" not in text and "+" not in text
    assert Cursor.decode(text, cursor.order) == cursor


@pytest.mark.parametrize("text", ["", "not-a-cursor", "e30", "eyJvIjoiaWQifQ", "W10"])
def test_a_foreign_cursor_is_refused(text: str) -> None:
    with pytest.raises(CursorError):
        Cursor.decode(text, SortOrder.ID)


def test_a_cursor_of_the_other_order_is_refused_with_both_names() -> None:
    text = Cursor(SortOrder.ID, "x").encode()
    with pytest.raises(CursorError, match="sort='id'.*sort='uncertainty'"):
        Cursor.decode(text, SortOrder.UNCERTAINTY)


def test_orders_end_with_id_so_they_are_total() -> None:
    assert sort_spec(SortOrder.ID) == [("_id", 1)]
    assert sort_spec(SortOrder.UNCERTAINTY) == [("uncertainty", -1), ("_id", 1)]


def test_after_filter_continues_below_the_last_uncertainty_and_into_the_nulls() -> None:
    assert after_filter(Cursor(SortOrder.ID, "k")) == {"_id": {"$gt": "k"}}
    assert after_filter(Cursor(SortOrder.UNCERTAINTY, "k", 0.5)) == {
        "$or": [
            {"uncertainty": {"$lt": 0.5}},
            {"uncertainty": 0.5, "_id": {"$gt": "k"}},
            {"uncertainty": None},
        ]
    }
    assert after_filter(Cursor(SortOrder.UNCERTAINTY, "k", None)) == {"uncertainty": None, "_id": {"$gt": "k"}}


def _sort_key(doc: dict) -> tuple:
    u = doc.get("uncertainty")
    return (u is None, -(u or 0.0), doc["_id"])


def _matches(doc: dict, query: dict) -> bool:
    """A tiny evaluator of the filters after_filter makes (MongoDB semantics for null)."""
    if "$or" in query:
        return any(_matches(doc, q) for q in query["$or"])
    for field, cond in query.items():
        value = doc.get(field)
        if isinstance(cond, dict):
            ((op, operand),) = cond.items()
            if value is None:
                return False
            if (op == "$gt" and not value > operand) or (op == "$lt" and not value < operand):
                return False
        elif value != cond:
            return False
    return True


def test_paging_through_ties_and_nulls_sees_every_document_once() -> None:
    docs = [
        {"_id": f"id{i:02d}", "uncertainty": u}
        for i, u in enumerate([0.9, 0.5, 0.5, 0.5, None, 0.1, None, 0.9, 0.0, 0.5, None])
    ]
    ordered = sorted(docs, key=_sort_key)
    seen: list[str] = []
    cursor: Cursor | None = None
    for _ in range(20):
        remaining = [d for d in ordered if cursor is None or _matches(d, after_filter(cursor))]
        items, next_text = page(remaining[:3], 2, SortOrder.UNCERTAINTY)
        seen += [d["_id"] for d in items]
        if next_text is None:
            break
        cursor = Cursor.decode(next_text, SortOrder.UNCERTAINTY)
    assert seen == [d["_id"] for d in ordered]


def test_the_last_page_has_no_cursor() -> None:
    docs = [{"_id": "a"}, {"_id": "b"}]
    assert page(docs, 2, SortOrder.ID) == (docs, None)
    items, cursor = page([*docs, {"_id": "c"}], 2, SortOrder.ID)
    assert items == docs and Cursor.decode(cursor or "", SortOrder.ID).last_id == "b"
    assert MAX_LIMIT == 500


# --- review events ----------------------------------------------------------------------


def _doc(status: str = "suggested") -> dict:
    annotation_id = str(uuid.uuid4())
    return {
        "_id": annotation_id,
        "annotation_id": annotation_id,
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.4",
        "status": status,
    }


def test_a_review_event_is_valid_for_its_schema_and_names_the_api() -> None:
    doc = _doc()
    event = review_event(doc, ReviewDecision.REJECTED, "dr.who", reason="misses the lesion")
    assert event.producer == "review-api" and event.reviewed_at == event.emitted_at
    assert event.reviewed_at.microsecond % 1000 == 0 and event.reviewed_at <= datetime.now(UTC)
    assert str(event.annotation_id) == doc["annotation_id"] and event.series_instance_uid == "1.2.3.4"
    assert EventCodec().decode_event(EventCodec().encode_event(event)) == event
    assert status_after(ReviewDecision.CORRECTED) is AnnotationStatus.CORRECTED


def test_corrected_uid_goes_with_corrected_reviews_only() -> None:
    with pytest.raises(ValueError, match="needs corrected_seg_sop_instance_uid"):
        review_event(_doc(), ReviewDecision.CORRECTED, "r")
    with pytest.raises(ValueError, match="CORRECTED reviews only"):
        review_event(_doc(), ReviewDecision.ACCEPTED, "r", corrected_seg_sop_instance_uid="1.2")


def test_expected_status_is_checked_only_when_given() -> None:
    check_expected_status(_doc("accepted"), None)
    check_expected_status(_doc("accepted"), AnnotationStatus.ACCEPTED)
    with pytest.raises(ReviewConflict, match="'accepted', not 'suggested'"):
        check_expected_status(_doc("accepted"), AnnotationStatus.SUGGESTED)


# --- the uploaded SEG -------------------------------------------------------------------


async def test_a_seg_of_the_series_is_accepted(phantom: PhantomWithSeg) -> None:
    seg = await check_segmentation(phantom.seg_bytes, phantom.series_instance_uid, _never)
    assert seg.sop_instance_uid == str(phantom.seg.SOPInstanceUID)
    assert seg.series_instance_uid != phantom.series_instance_uid
    assert phantom.series_instance_uid in seg.referenced_series_uids
    assert seg.referenced_instance_uids == {str(ds.SOPInstanceUID) for ds in phantom.series}
    assert seg.segment_count == 1


async def test_a_seg_of_another_series_is_refused_naming_the_series(phantom: PhantomWithSeg) -> None:
    async def not_in_series(uids: frozenset[str]) -> bool:
        return False

    with pytest.raises(SegUploadError, match="does not reference series 9.9.9") as info:
        await check_segmentation(phantom.seg_bytes, "9.9.9", not_in_series)
    assert info.value.field == "file"


def _without_series_reference(phantom: PhantomWithSeg) -> bytes:
    seg = copy.deepcopy(phantom.seg)
    del seg.ReferencedSeriesSequence
    return dataset_bytes(seg)


async def test_per_frame_source_references_are_enough_when_they_point_into_the_series(phantom: PhantomWithSeg) -> None:
    asked: list[frozenset[str]] = []

    async def lookup(uids: frozenset[str]) -> bool:
        asked.append(uids)
        return bool(uids & {str(ds.SOPInstanceUID) for ds in phantom.series})

    data = _without_series_reference(phantom)
    assert referenced_series_uids(read_segmentation(data)) == frozenset()
    seg = await check_segmentation(data, phantom.series_instance_uid, lookup)
    assert asked == [seg.referenced_instance_uids] and seg.referenced_instance_uids

    async def elsewhere(uids: frozenset[str]) -> bool:
        return False

    with pytest.raises(SegUploadError, match="does not reference series"):
        await check_segmentation(data, phantom.series_instance_uid, elsewhere)


def test_shared_functional_group_references_count_too() -> None:
    source = Dataset()
    source.ReferencedSOPInstanceUID = "1.2.3.4.5"
    derivation = Dataset()
    derivation.SourceImageSequence = Sequence([source])
    shared = Dataset()
    shared.DerivationImageSequence = Sequence([derivation])
    ds = Dataset()
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    assert referenced_instance_uids(ds) == {"1.2.3.4.5"}


async def test_a_non_seg_dicom_file_is_refused_naming_its_sop_class(phantom: PhantomWithSeg) -> None:
    with pytest.raises(
        SegUploadError, match=rf"SOPClassUID is {phantom.series[0].SOPClassUID}, expected {SEGMENTATION_STORAGE}"
    ):
        await check_segmentation(dataset_bytes(phantom.series[0]), phantom.series_instance_uid, _never)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "file is empty"),
        (b"not dicom at all" * 20, "not a DICOM Part-10 file"),
    ],
)
async def test_garbage_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(SegUploadError, match=message):
        await check_segmentation(data, "1.2.3", _never)


async def test_a_truncated_seg_is_refused_not_crashing(phantom: PhantomWithSeg) -> None:
    with pytest.raises(SegUploadError):
        await check_segmentation(phantom.seg_bytes[:400], phantom.series_instance_uid, _never)


async def test_a_seg_in_the_images_own_series_is_refused(phantom: PhantomWithSeg) -> None:
    seg = copy.deepcopy(phantom.seg)
    seg.SeriesInstanceUID = phantom.series_instance_uid
    with pytest.raises(SegUploadError, match="series of its own"):
        await check_segmentation(dataset_bytes(seg), phantom.series_instance_uid, _never)


async def test_a_seg_without_its_uids_is_refused_naming_the_attribute(phantom: PhantomWithSeg) -> None:
    seg = copy.deepcopy(phantom.seg)
    del seg.StudyInstanceUID
    with pytest.raises(SegUploadError, match="lacks StudyInstanceUID"):
        await check_segmentation(dataset_bytes(seg), phantom.series_instance_uid, _never)
