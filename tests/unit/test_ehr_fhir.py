"""FHIR R4 bundle mapping: each resource type, reference resolution, skips and bad resources."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cohortstream.events import EhrRecord, EhrRecordType
from cohortstream.synthetic_ehr import FHIR_BAD_KINDS, write_fhir
from producers.ehr.fhir import parse_bundle, parse_bundle_data
from producers.ehr.rows import BadRow, EhrFileError, Skipped, deterministic_event_id

SAMPLE = Path(__file__).parents[1] / "data" / "ehr" / "fhir"


def bundle(*resources: dict[str, Any], full_urls: list[str] | None = None) -> dict[str, Any]:
    entries = []
    for i, resource in enumerate(resources):
        entry: dict[str, Any] = {"resource": resource}
        if full_urls and i < len(full_urls):
            entry["fullUrl"] = full_urls[i]
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "gender": "female",
    "birthDate": "1970-05-02",
    "identifier": [{"system": "urn:mrn", "value": "MRN-1"}],
}


def one(data: dict[str, Any]) -> list[EhrRecord | BadRow | Skipped]:
    return list(parse_bundle_data(data, "b.json"))


def test_sample_bundles_map_every_resource() -> None:
    for path in sorted(SAMPLE.glob("*.json")):
        raw = json.loads(path.read_text())
        outcomes = list(parse_bundle(path, path.name))
        types = [e["resource"]["resourceType"] for e in raw["entry"]]
        assert len(outcomes) == len(types)
        assert [o.kind for o in outcomes if isinstance(o, Skipped)] == ["MedicationRequest"]
        records = [o for o in outcomes if isinstance(o, EhrRecord)]
        assert len(records) == len(types) - 1
        patient_id = raw["entry"][0]["resource"]["id"]
        assert {r.subject_id for r in records} == {patient_id}  # urn:uuid and Patient/<id> both resolved
        assert all(r.source == "fhir" and r.source_file == path.name for r in records)


def test_patient() -> None:
    [record] = one(bundle(PATIENT))
    assert isinstance(record, EhrRecord)
    assert record.record_type is EhrRecordType.PATIENT and record.subject_id == "p1"
    assert record.source_row_id == "Patient/p1"
    assert record.event_id == deterministic_event_id("fhir", "Patient", "Patient/p1")
    assert record.attributes == {"gender": "female", "birth_date": "1970-05-02", "identifier|urn:mrn": "MRN-1"}


def test_encounter_with_urn_uuid_subject() -> None:
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "type": [
            {"coding": [{"system": "http://snomed.info/sct", "code": "32485007", "display": "Hospital admission"}]}
        ],
        "subject": {"reference": "urn:uuid:aaaa"},
        "period": {"start": "2021-03-04T10:15:00-05:00", "end": "2021-03-06T09:00:00-05:00"},
    }
    _, record = one(bundle(PATIENT, encounter, full_urls=["urn:uuid:aaaa", "urn:uuid:bbbb"]))
    assert isinstance(record, EhrRecord)
    assert record.record_type is EhrRecordType.ENCOUNTER and record.subject_id == "p1"
    assert record.effective_at == datetime(2021, 3, 4, 15, 15, tzinfo=UTC)
    assert (record.code_system, record.code, record.display) == (
        "http://snomed.info/sct",
        "32485007",
        "Hospital admission",
    )
    assert record.attributes == {"status": "finished", "class": "IMP", "period_end": "2021-03-06T09:00:00-05:00"}


def test_observation_value_quantity_and_loinc() -> None:
    observation = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "category": [{"coding": [{"code": "laboratory"}]}],
        "code": {
            "coding": [
                {"system": "http://loinc.org", "code": "2160-0", "display": "Creatinine"},
                {"system": "urn:local", "code": "CREA"},
            ]
        },
        "subject": {"reference": "https://ehr.example.org/fhir/Patient/p9/_history/2"},
        "encounter": {"reference": "Encounter/e1"},
        "effectiveDateTime": "2021-03-04",
        "valueQuantity": {"value": 1.3, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
        "referenceRange": [{"low": {"value": 0.5}, "high": {"value": 1.2}}],
        "interpretation": [{"coding": [{"code": "H"}]}],
    }
    [record] = one(bundle(observation))
    assert isinstance(record, EhrRecord)
    assert record.record_type is EhrRecordType.OBSERVATION and record.subject_id == "p9"
    assert (record.code_system, record.code, record.display) == ("http://loinc.org", "2160-0", "Creatinine")
    assert (record.value_number, record.unit, record.value_text) == (1.3, "mg/dL", None)
    assert record.effective_at == datetime(2021, 3, 4, tzinfo=UTC)
    assert record.attributes == {
        "status": "final",
        "category": "laboratory",
        "encounter": "e1",
        "interpretation": "H",
        "ref_range_lower": "0.5",
        "ref_range_upper": "1.2",
        "coding|urn:local": "CREA",
    }


def test_observation_text_value() -> None:
    observation = {
        "resourceType": "Observation",
        "id": "o2",
        "code": {"coding": [{"system": "http://loinc.org", "code": "5767-9"}]},
        "subject": {"reference": "Patient/p1"},
        "valueCodeableConcept": {"text": "Clear"},
    }
    [record] = one(bundle(observation))
    assert isinstance(record, EhrRecord) and record.value_text == "Clear" and record.value_number is None


def test_condition_snomed_with_icd10() -> None:
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {
            "coding": [
                {"system": "http://snomed.info/sct", "code": "38341003", "display": "Hypertensive disorder"},
                {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10"},
            ]
        },
        "subject": {"reference": "Patient/p1"},
        "onsetDateTime": "2019-01-02T03:04:05Z",
    }
    [record] = one(bundle(condition))
    assert isinstance(record, EhrRecord)
    assert record.record_type is EhrRecordType.CONDITION and record.code == "38341003"
    assert record.effective_at == datetime(2019, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert record.attributes == {"clinical_status": "active", "coding|http://hl7.org/fhir/sid/icd-10-cm": "I10"}


def test_unknown_types_are_skipped_not_dead_lettered() -> None:
    outcomes = one(bundle(PATIENT, {"resourceType": "Procedure", "id": "x"}, {"resourceType": "Provenance"}))
    assert [type(o) for o in outcomes] == [EhrRecord, Skipped, Skipped]
    assert outcomes[1] == Skipped("b.json#entry[1]", "Procedure")


@pytest.mark.parametrize(
    ("resource", "reason"),
    [
        ({"resourceType": "Patient"}, "Patient.id: missing"),
        (
            {"resourceType": "Condition", "id": "c", "code": {"coding": [{"code": "1"}]}},
            "Condition.subject: missing subject reference",
        ),
        (
            {
                "resourceType": "Observation",
                "id": "o",
                "code": {"coding": [{"code": "1"}]},
                "subject": {"reference": "urn:uuid:nowhere"},
            },
            "urn:uuid:nowhere is not an entry of this bundle",
        ),
        (
            {
                "resourceType": "Observation",
                "id": "o",
                "code": {"coding": [{"code": "1"}]},
                "subject": {"reference": "Group/g1"},
            },
            "not a Patient reference",
        ),
        (
            {"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p"}},
            "Observation.code: missing coding",
        ),
        (
            {
                "resourceType": "Observation",
                "id": "o",
                "code": {"coding": [{"code": "1"}]},
                "subject": {"reference": "Patient/p"},
                "valueQuantity": {"value": "high"},
            },
            "valueQuantity.value: not a number",
        ),
        (
            {
                "resourceType": "Observation",
                "id": "o",
                "code": {"coding": [{"code": "1"}]},
                "subject": {"reference": "Patient/p"},
                "effectiveDateTime": "2021-01-01T10:00:00",
            },
            "dateTime with a time but no zone",
        ),
        ({"resourceType": "Encounter", "id": "e", "subject": "Patient/p"}, "missing subject reference"),
        (
            {
                "resourceType": "Observation",
                "id": "o",
                "code": {"coding": [{"code": "1", "system": 5}]},
                "subject": {"reference": "Patient/p"},
            },
            "field code_system",
        ),
        ({"no": "resourceType"}, "entry has no resource with a resourceType"),
    ],
)
def test_malformed_resources_are_bad_rows(resource: dict[str, Any], reason: str) -> None:
    outcomes = one(bundle(PATIENT, resource))
    bad = outcomes[1]
    assert isinstance(bad, BadRow), bad
    assert bad.location == "b.json#entry[1]" and reason in bad.reason
    assert json.loads(bad.raw) == {"resource": resource}


def test_single_resource_file_and_file_errors(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(PATIENT))
    [record] = parse_bundle(tmp_path / "p.json", "p.json")
    assert isinstance(record, EhrRecord) and record.subject_id == "p1"
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(EhrFileError, match="broken.json: cannot read as FHIR JSON"):
        list(parse_bundle(tmp_path / "broken.json", "broken.json"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(EhrFileError, match="list.json: not a FHIR resource"):
        list(parse_bundle(tmp_path / "list.json", "list.json"))


def test_generated_bad_resources_are_exactly_the_dead_letters(tmp_path: Path) -> None:
    extract = write_fhir(
        tmp_path, seed=5, n_patients=4, bad_resources=len(FHIR_BAD_KINDS) + 2, bundle_type="collection"
    )
    outcomes = [o for path in extract.files for o in parse_bundle(path, path.name)]
    assert sorted(o.location for o in outcomes if isinstance(o, BadRow)) == sorted(b.location for b in extract.bad_rows)
    assert sum(isinstance(o, Skipped) for o in outcomes) == extract.skipped == 4
    records = [o for o in outcomes if isinstance(o, EhrRecord)]
    for resource_type, record_type in (
        ("Patient", "PATIENT"),
        ("Encounter", "ENCOUNTER"),
        ("Observation", "OBSERVATION"),
        ("Condition", "CONDITION"),
    ):
        assert sum(r.record_type == record_type for r in records) == extract.resources[resource_type]
