"""The statistics counters the view sinks maintain, and the export/detail shaping: pure parts."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime

import pytest

from api.cohorts import EXPORT_COLUMNS, csv_lines, ndjson_lines
from api.subject_models import subject_detail
from cohortstream.events import (
    EhrRecord,
    EhrRecordType,
    RedcapCompletionStatus,
    RedcapRecordChanged,
    RedcapTrigger,
)
from consumers.dicom_views import view_updates
from consumers.ehr_views import subject_updates, timeline_update
from consumers.statistics import (
    age_band,
    age_years,
    counters_for_annotations,
    counters_for_dicom,
    counters_for_ehr,
    counters_for_redcap,
    day_range,
    normalise_sex,
)
from tests.examples import example_events

T = datetime(2024, 5, 1, 23, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "years"),
    [
        ("045Y", 45),
        ("006M", 0),
        ("018M", 1),
        ("052W", 0),
        ("003D", 0),
        ("67", 67),
        ("", None),
        (None, None),
        ("45 Y", None),
    ],
)
def test_ages_are_read_from_dicom_age_strings_and_bare_numbers(text: str | None, years: int | None) -> None:
    assert age_years(text) == years


@pytest.mark.parametrize(("text", "sex"), [("M", "M"), ("female", "F"), ("O", "O"), ("unknown", None), (None, None)])
def test_sex_is_normalised_across_sources(text: str | None, sex: str | None) -> None:
    assert normalise_sex(text) == sex


def _dicom(**update):
    template = next(e for e in example_events() if type(e).__name__ == "DicomInstanceReceived")
    return template.model_copy(update={"received_at": T, **update})


def test_a_dicom_batch_touches_the_counters_of_its_keys_and_day() -> None:
    events = [
        _dicom(modality="MR", body_part_examined="BRAIN", patient_sex="F", patient_age="045Y"),
        _dicom(modality="CT", body_part_examined=None, patient_sex="F", patient_age=None, sop_instance_uid="1.2.3.9"),
    ]
    ids = {c.doc_id for c in counters_for_dicom(events, previous_ages=[17])}
    assert ids == {
        "patients_by_age_band|40-59",
        "patients_by_age_band|0-17",
        "series_by_modality|CT",
        "series_by_modality|MR",
        "patients_by_modality|CT",
        "patients_by_modality|MR",
        "series_by_body_part|BRAIN",
        "patients_by_sex|F",
        "dicom_instances_per_day|2024-05-01",
    }
    day = next(c for c in counters_for_dicom(events) if c.dimension == "dicom_instances_per_day")
    assert day.collection == "instances"
    assert day.query == {"received_at": day_range(date(2024, 5, 1))}


def test_the_patients_view_keeps_normalised_sex_and_the_latest_age() -> None:
    events = [_dicom(patient_age="040Y", patient_sex="F"), _dicom(patient_age="042Y", sop_instance_uid="1.2.3.8")]
    patient = view_updates(events, lambda ids: "x")["patients"][0]._doc
    assert patient["$setOnInsert"]["sex_normalised"] == "F"
    assert patient["$max"]["age_years"] == 42


def _redcap(status: RedcapCompletionStatus, event_name: str | None = "baseline_arm_1") -> RedcapRecordChanged:
    return RedcapRecordChanged(
        redcap_url="https://redcap.example.org/",
        project_id="42",
        record_id="1",
        event_name=event_name,
        instrument="baseline",
        completion_status=status,
        trigger=RedcapTrigger.FULL_SYNC,
        values={},
        emitted_at=T,
        producer="test",
    )


def test_a_questionnaire_recounts_every_status_of_its_instrument_and_event_and_the_days_it_moves_between() -> None:
    counters = counters_for_redcap([_redcap(RedcapCompletionStatus.COMPLETE)], previous_days=[date(2024, 4, 2)])
    completion = [c for c in counters if c.dimension == "questionnaire_completion"]
    assert {c.labels["status"] for c in completion} == {"INCOMPLETE", "UNVERIFIED", "COMPLETE"}
    assert completion[0].query["event_name"] == "baseline_arm_1"
    assert {c.key for c in counters if c.dimension == "redcap_records_per_day"} == {"2024-04-02", "2024-05-01"}
    classic = counters_for_redcap([_redcap(RedcapCompletionStatus.COMPLETE, None)])
    assert classic[0].query["event_name"] is None


def _ehr(record_type: EhrRecordType, **more) -> EhrRecord:
    return EhrRecord(
        source="mimic-iv",
        source_file="patients.csv",
        source_row_id="1",
        subject_id="10000032",
        record_type=record_type,
        emitted_at=T,
        producer="test",
        **more,
    )


def test_ehr_rows_are_counted_by_ingestion_day_and_subjects_by_sex() -> None:
    record = _ehr(EhrRecordType.PATIENT, attributes={"gender": "F", "anchor_age": "52"})
    assert {c.doc_id for c in counters_for_ehr([record])} == {
        "ehr_records_per_day|2024-05-01",
        "ehr_subjects_by_sex|F",
        "ehr_subjects_by_age_band|40-59",
    }
    assert timeline_update(record)._doc["$set"]["ingested_at"] == T
    fields = subject_updates([record])[0]._doc["$set"]
    assert (fields["sex_normalised"], fields["age_years"]) == ("F", 52)


@pytest.mark.parametrize(
    ("years", "band"), [(0, "0-17"), (17, "0-17"), (18, "18-39"), (79, "60-79"), (80, "80+"), (104, "80+")]
)
def test_age_bands_are_closed_below_and_open_above(years: int, band: str) -> None:
    assert age_band(years) == band


def test_annotation_counters_cover_every_status_of_each_model() -> None:
    counters = counters_for_annotations(["m1", "m1", "m2"])
    assert len(counters) == 8
    assert counters[0].query == {"model_name": "m1", "status": "suggested"}


def test_csv_and_ndjson_rows_carry_the_export_columns() -> None:
    row = {
        "subject_id": "S1",
        "identifiers": ["dicom:P1", "ehr:x|1"],
        "sources": ["dicom", "ehr"],
        "modalities": ["MR"],
        "sex": None,
        "age_years": 40,
        "study_count": 1,
        "series_count": 2,
        "questionnaire_count": 0,
        "has_ehr": True,
    }
    rows = list(csv.DictReader(io.StringIO(csv_lines([row], header=True))))
    assert rows == [
        {
            **{c: "" for c in EXPORT_COLUMNS},
            "subject_id": "S1",
            "sources": "dicom;ehr",
            "modalities": "MR",
            "age_years": "40",
            "study_count": "1",
            "series_count": "2",
            "questionnaire_count": "0",
            "has_ehr": "True",
        }
    ]
    assert json.loads(ndjson_lines([row])) == {k: v for k, v in row.items() if k != "identifiers"}
    assert "identifiers" not in EXPORT_COLUMNS, "source identifiers never leave in an export"


def test_the_subject_detail_links_orthanc_and_attaches_annotations_by_series() -> None:
    view = {
        "subject_id": "S1",
        "identifiers": ["dicom:P1"],
        "questionnaires": [],
        "ehr": [],
        "imaging": [
            {
                "_id": "P1",
                "sex": "F",
                "sex_normalised": "F",
                "orthanc_id": "p",
                "studies": ["1.2"],
                "study_detail": [
                    {
                        "_id": "1.2",
                        "series": ["1.2.3"],
                        "orthanc_id": "st",
                        "viewer_url": "v",
                        "series_detail": [
                            {"_id": "1.2.3", "modality": "MR", "orthanc_id": "se", "study_instance_uid": "1.2"}
                        ],
                    }
                ],
            }
        ],
    }
    detail = subject_detail(
        view, "http://orthanc:8042/", {"1.2.3": [{"_id": "a1", "annotation_id": "a1", "status": "suggested"}]}
    )
    study = detail.imaging[0].studies[0]
    assert study.orthanc_url == "http://orthanc:8042/studies/st"
    assert study.series[0].orthanc_url == "http://orthanc:8042/series/se"
    assert study.series[0].annotations[0].annotation_id == "a1"
