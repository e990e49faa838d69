"""TSV/JSON bytes, sidecar scrubbing, NIfTI header cleaning, phenotype and participants tables."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from export.bids.imaging import clean_nifti, scrub_sidecar
from export.bids.participants import Demographics, participant_row
from export.bids.phenotype import (
    Dictionary,
    diagnosis_table,
    instrument_tables,
    labs_table,
)
from export.bids.tables import json_bytes, tsv_bytes, tsv_value


def test_tsv_cells_and_files() -> None:
    assert [tsv_value(v) for v in (None, "", float("nan"), True, 3.0, 1.25, ["a", "b"], "x\ty\nz")] == [
        "n/a",
        "n/a",
        "n/a",
        "1",
        "3",
        "1.25",
        "a,b",
        "x y z",
    ]
    assert tsv_bytes(["a", "b"], [{"a": 1}, {"b": "x"}]) == b"a\tb\n1\tn/a\nn/a\tx\n"
    with pytest.raises(ValueError, match="'c'"):
        tsv_bytes(["a"], [{"c": 1}])
    assert json_bytes({"b": 1, "a": [1]}) == json_bytes({"a": [1], "b": 1})
    assert json.loads(json_bytes({"a": "é"})) == {"a": "é"}


def test_sidecar_scrub_removes_identifiers_and_dates_keeps_acquisition_parameters() -> None:
    sidecar = {
        "PatientName": "Doe^Jane",
        "PatientID": "P1",
        "PatientBirthDate": "19600101",
        "PatientSex": "F",
        "AcquisitionDateTime": "2021-03-04T09:10:00",
        "InstitutionName": "Site",
        "InstitutionAddress": "Street",
        "DeviceSerialNumber": "123",
        "StationName": "MR1",
        "ReferringPhysicianName": "Dr",
        "AccessionNumber": "A1",
        "RepetitionTime": 2.0,
        "EchoTime": 0.03,
        "ImageOrientationPatientDICOM": [1, 0, 0, 0, 1, 0],
        "AcquisitionTime": "09:10:00.000000",
        "SeriesDescription": "T1w",
    }
    assert scrub_sidecar(sidecar) == {
        "RepetitionTime": 2.0,
        "EchoTime": 0.03,
        "ImageOrientationPatientDICOM": [1, 0, 0, 0, 1, 0],
        "AcquisitionTime": "09:10:00.000000",
        "SeriesDescription": "T1w",
    }


def test_clean_nifti_blanks_free_text_and_is_deterministic() -> None:
    image = nib.Nifti1Image(np.zeros((2, 3, 4), dtype=np.int16), np.eye(4))
    image.header["descrip"] = b"Doe^Jane TE=30"
    image.header["aux_file"] = b"P1"
    raw = gzip.compress(image.to_bytes(), mtime=1234)
    cleaned, ndim = clean_nifti(raw)
    header = nib.Nifti1Image.from_bytes(gzip.decompress(cleaned)).header
    assert header["descrip"].item() == b"" and header["aux_file"].item() == b"" and ndim == 3
    assert cleaned == clean_nifti(raw)[0] and b"Doe" not in gzip.decompress(cleaned)


def _q(event: str, values: dict, labels: dict) -> dict:
    return {
        "_id": event,
        "instrument": "moca",
        "event_name": event,
        "repeat_instance": 1,
        "completion_status": "COMPLETE",
        "values": values,
        "labels": labels,
    }


def test_instrument_tables_drop_identifiers_shift_dates_and_split_events() -> None:
    questionnaires = [
        (
            "pa",
            "S1",
            _q(
                "baseline",
                {"score": 20, "smoker": True, "mrn": "P1", "record_id": "R1", "when": "2024-03-01", "secret": "x"},
                {"smoker": "Yes"},
            ),
        ),
        ("pa", "S1", _q("followup", {"score": 22, "smoker": False, "when": "2025-03-01"}, {"smoker": "No"})),
        ("pb", "S2", _q("baseline", {"score": 18, "smoker": False}, {"smoker": "No"})),
    ]
    dictionary = Dictionary(identifiers=frozenset({"secret"}))
    tables = instrument_tables(questionnaires, dictionary, ["mrn"], lambda subject, value: f"shifted-{subject}")
    assert [t.name for t in tables] == ["moca_baseline", "moca_followup"]
    baseline = tables[0]
    assert baseline.columns == [
        "participant_id",
        "redcap_event_name",
        "redcap_repeat_instance",
        "completion_status",
        "score",
        "smoker",
        "when",
    ]
    assert baseline.rows[0]["when"] == "shifted-S1" and baseline.rows[0]["smoker"] == "1"
    assert baseline.sidecar["smoker"]["Levels"] == {"0": "No", "1": "Yes"}
    assert "derived from the answers seen" in baseline.sidecar["smoker"]["Description"]
    single = instrument_tables(
        questionnaires[2:], Dictionary(labels={"score": "Total score"}, units={"score": "points"}), [], lambda s, v: v
    )
    assert single[0].name == "moca" and single[0].sidecar["score"] == {"Description": "Total score", "Units": "points"}


def test_dictionary_from_metadata_rows() -> None:
    rows = [
        {"field_name": "record_id", "form_name": "d", "field_type": "text", "field_label": "Record"},
        {"field_name": "name", "form_name": "d", "field_type": "text", "field_label": "Name", "identifier": "y"},
        {
            "field_name": "sex",
            "form_name": "d",
            "field_type": "radio",
            "field_label": "<b>Sex</b>",
            "select_choices_or_calculations": "1, Male | 2, Female",
        },
        {
            "field_name": "visit",
            "form_name": "d",
            "field_type": "text",
            "field_label": "Visit",
            "text_validation_type_or_show_slider_number": "date_ymd",
        },
    ]
    rows += [
        {"field_name": "notes", "form_name": "d", "field_type": "notes", "field_label": "Notes"},
        {"field_name": "comment", "form_name": "d", "field_type": "text", "field_label": "Comment"},
        {
            "field_name": "weight",
            "form_name": "d",
            "field_type": "text",
            "field_label": "Weight",
            "text_validation_type_or_show_slider_number": "number_1dp",
        },
    ]
    d = Dictionary.from_metadata(rows)
    assert d.record_id_field == "record_id" and d.identifiers == {"name"} and d.dates == {"visit"}
    assert d.free_text == {"name", "notes", "comment"}, "notes, and text without a structured validation"
    assert d.choices["sex"] == {"1": "Male", "2": "Female"} and d.labels["sex"] == "Sex"


def test_labs_diagnoses_and_participants() -> None:
    ehr = [
        (
            "pa",
            {
                "latest_labs": {
                    "50912": {
                        "code": "50912",
                        "display": "Creatinine",
                        "value": 1.2,
                        "unit": "mg/dL",
                        "code_system": "mimic-itemid",
                    }
                },
                "diagnoses": {
                    "r1": {"code": "I10", "code_system": "ICD-10", "display": "Hypertension"},
                    "r2": {"code": "I10", "code_system": "ICD-10", "display": "Hypertension"},
                },
            },
        )
    ]
    labs = labs_table(ehr)
    assert (
        labs is not None
        and labs.columns == ["participant_id", "lab_50912"]
        and labs.sidecar["lab_50912"]["Units"] == "mg/dL"
    )
    diagnoses = diagnosis_table(ehr)
    assert diagnoses is not None and len(diagnoses.rows) == 1
    assert labs_table([("pb", {})]) is None and diagnosis_table([("pb", {})]) is None
    row = participant_row("pa", Demographics(dicom_patients=[{"age_years": 93, "sex_normalised": "F"}]))
    assert row == {"participant_id": "sub-pa", "age": 89, "sex": "F"}
    row = participant_row(
        "pb", Demographics(ehr_subjects=[{"age_years": 40}], questionnaires=[{"labels": {"sex": "Male"}}])
    )
    assert row == {"participant_id": "sub-pb", "age": 40, "sex": "M"}


def test_free_text_is_left_out_and_reported_by_default_or_kept_flagged() -> None:
    questionnaires = [
        ("pa", "S1", _q("baseline", {"score": "21", "when": "2024-03-01", "remark": "lives at Elm Row 7"}, {})),
        ("pb", "S2", _q("baseline", {"score": "18", "colour": "b", "remark": ""}, {"colour": "Blue"})),
    ]
    warnings: list[str] = []
    (table,) = instrument_tables(questionnaires, Dictionary(), [], lambda s, v: v, warnings=warnings)
    assert "remark" not in table.columns and "remark" not in table.sidecar
    assert {"score", "when", "colour"} <= set(table.columns), "numbers, dates and labelled choices stay"
    assert len(warnings) == 1 and "'remark'" in warnings[0] and "free text" in warnings[0]
    (kept,) = instrument_tables(questionnaires, Dictionary(), [], lambda s, v: v, keep_free_text=True)
    assert "remark" in kept.columns and kept.sidecar["remark"]["Description"].endswith(
        "(free text: review before sharing)"
    )
    # The dictionary decides for the fields it knows: a validated text field is not free text.
    known = Dictionary(labels={"remark": "Remark", "score": "Score"}, free_text=frozenset({"remark"}))
    (table,) = instrument_tables(questionnaires, known, [], lambda s, v: v)
    assert "remark" not in table.columns and "score" in table.columns
