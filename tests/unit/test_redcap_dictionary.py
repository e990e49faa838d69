"""Typing flat-export values with the data dictionary (no services)."""

from __future__ import annotations

import logging

import pytest

from cohortstream.events import RedcapCompletionStatus
from producers.redcap.dictionary import DataDictionary, checkbox_column, parse_choices
from producers.redcap.errors import RedcapError
from tests.redcap_simulator import cohort_metadata, meta

DICTIONARY = DataDictionary.from_metadata(cohort_metadata())


def test_choices_are_parsed_with_commas_in_labels() -> None:
    assert parse_choices("1, Headache | 3, Fatigue, tiredness | -1, None of the above") == {
        "1": "Headache",
        "3": "Fatigue, tiredness",
        "-1": "None of the above",
    }
    assert parse_choices("LDN, London|MUC,Munich") == {"LDN": "London", "MUC": "Munich"}


@pytest.mark.parametrize(
    ("code", "column"),
    [("1", "symptoms___1"), ("-1", "symptoms____1"), ("A", "symptoms___a"), ("1.5", "symptoms___1_5")],
)
def test_checkbox_export_columns(code: str, column: str) -> None:
    assert checkbox_column("symptoms", code) == column


def test_record_id_field_is_the_first_field_and_forms_keep_their_order() -> None:
    assert DICTIONARY.record_id_field == "record_id"
    assert DICTIONARY.forms == ("demographics", "baseline", "medication")
    with pytest.raises(RedcapError, match="nosuchform"):
        DICTIONARY.fields_of("nosuchform")


def test_every_field_type_is_typed() -> None:
    row = {
        "record_id": "1001",
        "mrn": "MRN0001",
        "dob": "1961-04-12",
        "sex": "99",
        "enrolled_at": "2024-03-01 09:30",
        "height_cm": "165.5",
        "weight_kg": "61",
        "bmi": "22.3",
        "demographics_complete": "2",
    }
    typed = DICTIONARY.type_instrument("demographics", row)
    assert typed.values == {
        "mrn": "MRN0001",
        "dob": "1961-04-12",
        "sex": "99",
        "enrolled_at": "2024-03-01T09:30:00",
        "height_cm": 165.5,
        "weight_kg": 61.0,
        "bmi": 22.3,
    }
    assert isinstance(typed.values["weight_kg"], float)
    assert typed.labels == {"sex": "Prefer not to say"}
    assert typed.completion_status is RedcapCompletionStatus.COMPLETE
    assert typed.has_data and typed.problems == ()
    assert "record_id" not in typed.values

    baseline = {
        "record_id": "1001",
        "visit_date": "2024-03-01",
        "symptoms___1": "1",
        "symptoms___2": "0",
        "symptoms___3": "1",
        "symptoms____1": "0",
        "smoker": "1",
        "cigarettes_per_day": "-0",
        "consent_imaging": "0",
        "pain_score": "30",
        "site": "MUC",
        "wake_time": "06:45",
        "comments": "two\nlines",
        "baseline_complete": "1",
    }
    typed = DICTIONARY.type_instrument("baseline", baseline)
    assert typed.values == {
        "visit_date": "2024-03-01",
        "symptoms": ["1", "3"],
        "smoker": True,
        "cigarettes_per_day": 0,
        "consent_imaging": False,
        "pain_score": 30,
        "site": "MUC",
        "wake_time": "06:45",
        "comments": "two\nlines",
    }
    assert type(typed.values["smoker"]) is bool and type(typed.values["cigarettes_per_day"]) is int
    assert "baseline_intro" not in typed.values  # descriptive
    assert typed.labels == {"smoker": "Yes", "consent_imaging": "False", "site": "Munich"}
    assert typed.completion_status is RedcapCompletionStatus.UNVERIFIED


def test_negative_checkbox_code_and_no_box_checked() -> None:
    typed = DICTIONARY.type_instrument("baseline", {"record_id": "1", "symptoms____1": "1", "symptoms___1": "0"})
    assert typed.values["symptoms"] == ["-1"]
    typed = DICTIONARY.type_instrument("baseline", {"record_id": "1", "symptoms___1": "0", "symptoms____1": "0"})
    assert typed.values["symptoms"] == []


def test_empty_values_are_none_and_an_empty_form_has_no_data() -> None:
    typed = DICTIONARY.type_instrument(
        "medication", {"record_id": "1", "med_name": "", "med_dose_mg": " ", "medication_complete": ""}
    )
    assert typed.values == {"med_name": None, "med_dose_mg": None, "med_start": None, "med_route": None}
    assert typed.labels == {}
    assert typed.completion_status is RedcapCompletionStatus.INCOMPLETE
    assert not typed.has_data


def test_a_form_marked_complete_without_values_has_data() -> None:
    assert DICTIONARY.type_instrument("medication", {"record_id": "1", "medication_complete": "2"}).has_data


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("cigarettes_per_day", "5.5"),
        ("pain_score", "high"),
        ("visit_date", "31-12-2024"),
        ("smoker", "2"),
        ("site", "PAR"),
        ("wake_time", "25:00"),
        ("consent_imaging", "yes"),
    ],
)
def test_a_value_that_does_not_parse_is_kept_raw_and_named(
    field: str, raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="producers.redcap.dictionary"):
        typed = DICTIONARY.type_instrument(
            "baseline", {"record_id": "1", field: raw}, log_context={"redcap_record": "1"}
        )
    assert typed.values[field] == raw
    assert typed.problems == (field,)
    assert field not in typed.labels
    [record] = caplog.records
    assert record.fields == [field]  # type: ignore[attr-defined]
    assert raw not in record.getMessage() and raw not in str(vars(record).get("fields"))


def test_bad_number_date_and_calc_are_kept_raw() -> None:
    typed = DICTIONARY.type_instrument(
        "demographics",
        {"record_id": "1", "height_cm": "tall", "dob": "1961-02-30", "bmi": "#DIV/0!", "enrolled_at": "soon"},
    )
    assert (
        typed.values["height_cm"] == "tall" and typed.values["dob"] == "1961-02-30" and typed.values["bmi"] == "#DIV/0!"
    )
    assert set(typed.problems) == {"height_cm", "dob", "bmi", "enrolled_at"}


def test_unknown_completion_code_is_reported() -> None:
    typed = DICTIONARY.type_instrument("medication", {"record_id": "1", "med_name": "x", "medication_complete": "5"})
    assert typed.completion_status is RedcapCompletionStatus.INCOMPLETE
    assert typed.problems == ("medication_complete",)


def test_more_validations() -> None:
    dictionary = DataDictionary.from_metadata(
        [
            meta("id", "f", "text"),
            meta("a", "f", "text", validation="number_2dp_comma_decimal"),
            meta("b", "f", "text", validation="datetime_seconds_dmy"),
            meta("c", "f", "text", validation="email"),
            meta("d", "f", "text", validation="decimal"),
            meta("e", "f", "calc", choices="[a]*2"),
            meta("g", "f", "file"),
            meta("h", "f", "checkbox", choices="A, Alpha | b2, Beta"),
        ]
    )
    typed = dictionary.type_instrument(
        "f",
        {
            "id": "x",
            "a": "3,25",
            "b": "2024-01-02 03:04:05",
            "c": "a@b.org",
            "d": "7",
            "e": "6",
            "g": "scan.pdf",
            "h___a": "1",
            "h___b2": "1",
        },
    )
    assert typed.values == {
        "a": 3.25,
        "b": "2024-01-02T03:04:05",
        "c": "a@b.org",
        "d": 7.0,
        "e": 6.0,
        "g": "scan.pdf",
        "h": ["A", "b2"],
    }
    assert typed.problems == ()


def test_an_empty_dictionary_is_an_error() -> None:
    with pytest.raises(RedcapError):
        DataDictionary.from_metadata([])
    with pytest.raises(RedcapError, match="form_name"):
        DataDictionary.from_metadata([{"field_name": "x", "field_type": "text"}])
