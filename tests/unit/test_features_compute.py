"""Feature computation from folded events: HAIM statistics, typing, annotation choice,
and independence from arrival order and repetition."""

from __future__ import annotations

import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from cohortstream.events import (
    AnnotationReviewed,
    AnnotationSuggested,
    DicomInstanceReceived,
    EhrRecord,
    EhrRecordType,
    Event,
    RedcapCompletionStatus,
    RedcapRecordChanged,
    RedcapTrigger,
    ReviewDecision,
    SuggestedSegment,
)
from cohortstream.features.columns import data_dictionary
from cohortstream.features.matrix import csv_chunks, parquet_chunks, to_arrow
from cohortstream.features.spec import FeatureSpec
from cohortstream.subjects import subject_id_for
from consumers.features.rebuild import build_documents, fold_into

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SPEC = FeatureSpec.model_validate(
    {
        "name": "t",
        "version": 1,
        "labs": {"codes": ["A", "B"]},
        "diagnoses": {"prefixes": ["I10", "E11"]},
        "questionnaires": [{"instrument": "baseline", "event_name": "baseline_arm_1"}],
        "imaging": {
            "modalities": ["MR", "CT"],
            "measurements": [{"name": "brain_volume", "model": "deepbet-brain", "segment": "Brain"}],
        },
    }
)


def ehr(row: str, kind: EhrRecordType, **fields: Any) -> EhrRecord:
    return EhrRecord(
        producer="t", source="mimic-iv", source_file="f", source_row_id=row, subject_id="7", record_type=kind, **fields
    )


def lab(row: str, code: str, days: float, value: float) -> EhrRecord:
    return ehr(row, EhrRecordType.LAB, code=code, effective_at=T0 + timedelta(days=days), value_number=value, unit="mg")


def instance(series: str, modality: str, n: int) -> DicomInstanceReceived:
    return DicomInstanceReceived(
        producer="t",
        calling_aet="A",
        called_aet="B",
        sop_class_uid="1.2",
        sop_instance_uid=f"{series}.{n}",
        study_instance_uid="1.9",
        series_instance_uid=series,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        patient_id="P7",
        patient_sex="F",
        patient_age="061Y",
        modality=modality,
        size_bytes=1,
        received_at=T0,
        orthanc_instance_id=f"o{series}{n}",
    )


def suggestion(series: str, volume: float, at: datetime) -> AnnotationSuggested:
    return AnnotationSuggested(
        producer="t",
        emitted_at=at,
        study_instance_uid="1.9",
        series_instance_uid=series,
        model_name="deepbet-brain",
        model_version="1",
        seg_sop_instance_uid=f"{series}.seg",
        segments=[SuggestedSegment(segment_number=1, label="Brain", voxel_count=10, volume_ml=volume)],
        device="cpu",
        inference_s=1.0,
    )


def cohort_events() -> tuple[list[Event], uuid.UUID]:
    later = suggestion("1.9.2", 1250.5, T0 + timedelta(days=2))
    events: list[Event] = [
        ehr("7", EhrRecordType.PATIENT, attributes={"gender": "F", "anchor_age": "64"}),
        lab("1", "A", 0, 1.0),
        lab("2", "A", 1, 3.0),
        lab("3", "A", 3, 2.0),
        lab("4", "B", 0.5, 10.0),
        ehr("5", EhrRecordType.LAB, code="C", effective_at=T0, value_number=9.0),
        ehr("h/1", EhrRecordType.DIAGNOSIS, code="I109"),
        RedcapRecordChanged(
            producer="t",
            redcap_url="https://r.example.org/",
            project_id="1",
            record_id="R7",
            event_name="baseline_arm_1",
            instrument="baseline",
            completion_status=RedcapCompletionStatus.COMPLETE,
            trigger=RedcapTrigger.FULL_SYNC,
            values={"weight": 70.5, "smoker": True, "arm": "2", "notes": "free text", "dob": "1960-01-01", "n": 3},
            labels={"arm": "Placebo", "smoker": "Yes"},
        ),
        *[instance("1.9.1", "MR", n) for n in range(3)],
        instance("1.9.2", "MR", 1),
        instance("1.9.3", "CT", 1),
        suggestion("1.9.1", 1100.0, T0 + timedelta(days=1)),
        later,
        AnnotationReviewed(
            producer="t",
            annotation_id=later.annotation_id,
            study_instance_uid="1.9",
            series_instance_uid="1.9.2",
            reviewer="r",
            decision=ReviewDecision.REJECTED,
            reviewed_at=T0 + timedelta(days=3),
        ),
    ]
    return events, later.annotation_id


def _registry() -> dict[str, str]:
    keys = ["ehr:mimic-iv|7", "dicom:P7", "redcap:https://r.example.org/|1|R7"]
    return dict.fromkeys(keys, subject_id_for(keys))


def build(events: list[Event], spec: FeatureSpec = SPEC) -> list[dict[str, Any]]:
    inputs: dict[str, dict[str, Any]] = {}
    fold_into(inputs, events)
    return build_documents(spec, inputs, _registry())


def test_one_subject_every_block() -> None:
    events, _ = cohort_events()
    [doc] = build(events)
    f = doc["features"]
    assert doc["blocks"] == ["demographics", "labs", "diagnoses", "questionnaires", "imaging"]
    assert doc["spec"] == {"name": "t", "version": 1, "sha256": SPEC.sha256}
    assert set(doc["identifiers"]) == set(_registry())
    assert (f["age"], f["sex"]) == (64, "F")  # EHR before DICOM (61Y)
    # Code A: values 1, 3, 2 at days 0, 1, 3.
    assert (f["lab_a_count"], f["lab_a_first"], f["lab_a_last"], f["lab_a_min"], f["lab_a_max"]) == (
        3,
        1.0,
        2.0,
        1.0,
        3.0,
    )
    assert math.isclose(f["lab_a_mean"], 2.0) and math.isclose(f["lab_a_std"], 1.0)
    # Least squares over (0,1), (1,3), (3,2): slope = Σ(x−x̄)(y−ȳ)/Σ(x−x̄)² = 1/4.667.
    assert math.isclose(f["lab_a_slope_per_day"], 1.0 / (14 / 3))
    assert f["lab_b_count"] == 1 and f["lab_b_std"] is None and f["lab_b_slope_per_day"] is None
    assert "lab_c_count" not in f and doc["lab_units"] == {"A": "mg", "B": "mg"}
    assert (f["dx_i10"], f["dx_e11"]) == (1, 0)
    # Typed by the data dictionary: numbers, yes/no as 0/1, choice codes as text; free text and dates out.
    assert {k: v for k, v in f.items() if k.startswith("q_")} == {
        "q_baseline_baseline_arm_1_weight": 70.5,
        "q_baseline_baseline_arm_1_smoker": 1,
        "q_baseline_baseline_arm_1_arm": "2",
        "q_baseline_baseline_arm_1_n": 3.0,
    }
    assert (f["img_series_count"], f["img_study_count"], f["img_mr_series_count"], f["img_ct_series_count"]) == (
        3,
        1,
        2,
        1,
    )
    # The later suggestion was rejected: the earlier, pending one is used.
    assert (f["img_brain_volume_ml"], f["img_brain_volume_status"]) == (1100.0, "suggested")


def test_an_accepted_suggestion_wins_over_a_later_pending_one() -> None:
    events, _ = cohort_events()
    first = next(e for e in events if isinstance(e, AnnotationSuggested) and e.series_instance_uid == "1.9.1")
    events = [e for e in events if not isinstance(e, AnnotationReviewed)]
    events.append(
        AnnotationReviewed(
            producer="t",
            annotation_id=first.annotation_id,
            study_instance_uid="1.9",
            series_instance_uid="1.9.1",
            reviewer="r",
            decision=ReviewDecision.ACCEPTED,
            reviewed_at=T0 + timedelta(days=4),
        )
    )
    [doc] = build(events)
    assert (doc["features"]["img_brain_volume_ml"], doc["features"]["img_brain_volume_status"]) == (1100.0, "accepted")


def test_order_and_repetition_do_not_change_the_document() -> None:
    events, _ = cohort_events()
    reference = build(events)
    rng = random.Random(3)
    for _ in range(5):
        shuffled = events + rng.sample(events, 6)
        rng.shuffle(shuffled)
        # Only the questionnaire pull order could matter, and there is one pull.
        assert build(shuffled) == reference


def test_a_subject_without_a_block_has_no_columns_of_it() -> None:
    [doc] = build([lab("1", "A", 0, 1.0)])
    assert doc["blocks"] == ["labs"]
    assert not any(k.startswith(("img_", "dx_", "q_")) for k in doc["features"])


def test_matrix_formats_carry_the_dictionary() -> None:
    import io

    import pyarrow.parquet as pq

    events, _ = cohort_events()
    docs = build(events) + build([lab("9", "A", 0, 5.0)], SPEC)
    docs[1] = {**docs[1], "_id": "S2", "subject_id": "S2"}
    columns = data_dictionary(SPEC, docs)
    names = [c["name"] for c in columns]
    assert names[:3] == ["subject_id", "age", "sex"] and "q_baseline_baseline_arm_1_arm" in names
    arm = next(c for c in columns if c["name"] == "q_baseline_baseline_arm_1_arm")
    assert (arm["dtype"], arm["statistic"]) == ("string", "code")
    mean = next(c for c in columns if c["name"] == "lab_a_slope_per_day")
    assert (mean["unit"], mean["statistic"]) == ("mg/day", "slope_per_day")
    table = to_arrow(docs, columns)
    assert table.num_rows == 2 and table.column_names == names
    parquet = b"".join(parquet_chunks([docs[:1], docs[1:]], columns))
    back = pq.read_table(io.BytesIO(parquet))
    assert back.equals(table)
    assert back.schema.field("lab_a_mean").metadata[b"statistic"] == b'"mean"'
    text = b"".join(csv_chunks([docs], columns)).decode()
    header, first, second = text.splitlines()
    assert header.split(",") == names and first.split(",")[1:3] == ["64", "F"]
    assert second.split(",")[1] == ""  # no demographics: empty cell
