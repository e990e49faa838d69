"""Pure parts of linkage and the REDCap/EHR views: identifiers, rules, merged updates,
cohort query validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from cohortstream.cohort_query import CohortQuery, LabCriterion
from cohortstream.events import (
    EhrRecord,
    EhrRecordType,
    RedcapCompletionStatus,
    RedcapRecordChanged,
    RedcapTrigger,
)
from cohortstream.settings import SubjectLinkRule
from cohortstream.subjects import (
    SubjectIdentifier,
    SubjectIdentifierError,
    subject_id_for,
)
from consumers.ehr_views import latest_lab_updates, subject_updates
from consumers.redcap_views import questionnaire_key, rule_links

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def _redcap(values: dict[str, object], **changes: object) -> RedcapRecordChanged:
    fields: dict[str, object] = {
        "producer": "redcap-sync",
        "redcap_url": "https://redcap.example.org",
        "project_id": "42",
        "record_id": "1001",
        "event_name": "baseline_arm_1",
        "instrument": "demographics",
        "completion_status": RedcapCompletionStatus.COMPLETE,
        "trigger": RedcapTrigger.FULL_SYNC,
        "values": values,
    }
    fields.update(changes)
    return RedcapRecordChanged(**fields)  # type: ignore[arg-type]


def _lab(row: str, at: datetime | None, value: float, code: str = "50912", subject: str = "10001") -> EhrRecord:
    return EhrRecord(
        producer="ehr-loader",
        source="mimic-iv",
        source_file="hosp/labevents.csv",
        source_row_id=row,
        subject_id=subject,
        record_type=EhrRecordType.LAB,
        effective_at=at,
        code_system="mimic-iv-itemid",
        code=code,
        display="Creatinine",
        value_number=value,
        unit="mg/dL",
    )


@pytest.mark.parametrize(
    "identifier",
    [
        SubjectIdentifier.dicom("P-0001"),
        SubjectIdentifier.redcap("https://redcap.example.org/", "42", "MUC-07"),
        SubjectIdentifier.ehr("mimic-iv", "10001"),
        SubjectIdentifier.dicom("weird:id|with bars"),
    ],
)
def test_identifiers_round_trip_through_their_text(identifier: SubjectIdentifier) -> None:
    assert SubjectIdentifier.parse(identifier.key) == identifier


@pytest.mark.parametrize("text", ["P-0001", "pacs:P1", "dicom:", "redcap:https://x/|42", "ehr:10001"])
def test_malformed_identifiers_are_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(SubjectIdentifierError, match=repr(text).strip("'")[:5]):
        SubjectIdentifier.parse(text)


def test_redcap_urls_with_and_without_slash_are_one_identifier() -> None:
    assert SubjectIdentifier.redcap("https://r.org", "1", "7") == SubjectIdentifier.redcap("https://r.org/", "1", "7")


def test_subject_id_depends_on_the_set_not_the_order_and_hides_identifiers() -> None:
    keys = ["dicom:P1", "redcap:https://r.org/|1|7", "ehr:mimic-iv|10001"]
    assert subject_id_for(keys) == subject_id_for(reversed(keys))
    assert "P1" not in subject_id_for(keys) and subject_id_for(keys).startswith("S")


def test_rules_link_a_record_to_dicom_and_ehr_and_skip_empty_values() -> None:
    rules = [
        SubjectLinkRule(redcap_field="mrn", target="dicom_patient_id"),
        SubjectLinkRule(redcap_field="ehr_id", target="ehr_subject_id", ehr_source="mimic-iv"),
    ]
    links = rule_links(_redcap({"mrn": " P-0001 ", "ehr_id": 10001}), rules)
    assert [(a.key, b.key) for a, b, _ in links] == [
        ("redcap:https://redcap.example.org/|42|1001", "dicom:P-0001"),
        ("redcap:https://redcap.example.org/|42|1001", "ehr:mimic-iv|10001"),
    ]
    assert rule_links(_redcap({"mrn": None, "ehr_id": ""}), rules) == []
    assert rule_links(_redcap({"other": "x"}), rules) == []


def test_link_rules_are_validated_with_clear_messages() -> None:
    with pytest.raises(ValidationError, match="needs redcap_field or ehr_source"):
        SubjectLinkRule(target="dicom_patient_id")
    with pytest.raises(ValidationError, match="must name its ehr_source"):
        SubjectLinkRule(redcap_field="ehr_id", target="ehr_subject_id")


def test_questionnaire_key_separates_events_instruments_and_repeat_instances() -> None:
    base = _redcap({})
    keys = {
        questionnaire_key(base),
        questionnaire_key(_redcap({}, event_name="followup_1_arm_1")),
        questionnaire_key(_redcap({}, instrument="baseline")),
        questionnaire_key(_redcap({}, instrument="medication", repeat_instrument="medication", repeat_instance=2)),
    }
    assert len(keys) == 4
    assert questionnaire_key(base) == questionnaire_key(_redcap({}, redcap_url="https://redcap.example.org/"))


def test_latest_lab_is_the_latest_measurement_of_the_batch_whatever_the_order() -> None:
    rows = [
        _lab("3", T0 + timedelta(days=2), 1.9),
        _lab("1", T0, 0.8),
        _lab("2", T0 + timedelta(days=1), 1.1),
        _lab("4", None, 5.0),
        _lab("5", T0, 4.4, code="51222"),
    ]
    updates = latest_lab_updates(rows)
    by_path = {next(iter(u._doc["$set"])): u._doc["$set"] for u in updates}
    assert by_path["latest_labs.50912"]["latest_labs.50912"]["value"] == 1.9
    assert by_path["latest_labs.51222"]["latest_labs.51222"]["value"] == 4.4
    assert len(updates) == 2  # the undated row never becomes "latest"
    assert latest_lab_updates(list(reversed(rows)))[0]._doc == updates[0]._doc


def test_lab_codes_with_dots_become_safe_field_names() -> None:
    (update,) = latest_lab_updates([_lab("1", T0, 1.0, code="2160.0")])
    assert "latest_labs.2160_0" in update._doc["$set"]


def test_subject_summary_collects_diagnosis_codes_once_per_subject() -> None:
    diagnosis = _lab("h1/1", T0, 0).model_copy(
        update={
            "record_type": EhrRecordType.DIAGNOSIS,
            "code": "I10",
            "code_system": "ICD-10-CM",
            "source_row_id": "h1/1",
        }
    )
    second = diagnosis.model_copy(update={"code": "E119", "source_row_id": "h1/2"})
    (update,) = subject_updates([diagnosis, second, diagnosis])
    assert update._doc["$addToSet"]["diagnosis_codes"] == {"$each": ["E119", "I10"]}
    assert set(update._doc["$set"]) >= {"diagnoses.h1/1", "diagnoses.h1/2", "source", "subject_id"}


def test_cohort_query_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match="needs min or max"):
        LabCriterion(code="50912")
    with pytest.raises(ValidationError, match="min 2.0 is above max 1.0"):
        LabCriterion(code="50912", min=2, max=1)
    with pytest.raises(ValidationError, match="labz"):
        CohortQuery.model_validate({"labz": []})
