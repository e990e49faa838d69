"""The synthetic EHR generator: deterministic bytes, caller's ids, valid FHIR R4(B)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle

from cohortstream.synthetic_ehr import LAB_ITEMS, main, write_fhir, write_mimic

SAMPLE = Path(__file__).parents[1] / "data" / "ehr"


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("compress", [False, True])
def test_same_seed_same_bytes(tmp_path: Path, compress: bool) -> None:
    for name in ("a", "b"):
        write_mimic(tmp_path / name / "mimic", seed=11, n_subjects=20, compress=compress, bad_rows=5)
        write_fhir(tmp_path / name / "fhir", seed=11, n_patients=3, bad_resources=2)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    write_mimic(tmp_path / "c", seed=12, n_subjects=20, compress=compress)
    assert (
        tree(tmp_path / "c")["hosp/labevents.csv" + (".gz" if compress else "")]
        != tree(tmp_path / "a" / "mimic")["hosp/labevents.csv" + (".gz" if compress else "")]
    )


def test_checked_in_sample_is_what_the_documented_command_writes(tmp_path: Path) -> None:
    assert main([str(tmp_path), "--seed", "7", "--subjects", "3", "--labs", "3", "6", "--fhir-patients", "2"]) == 0
    assert tree(tmp_path) == tree(SAMPLE)
    assert sum(len(b) for b in tree(SAMPLE).values()) < 50_000


def test_default_size_and_realism(tmp_path: Path) -> None:
    extract = write_mimic(tmp_path, seed=0)
    assert extract.rows["patients"] == 300 and extract.rows["labevents"] > 10_000
    with (tmp_path / "hosp" / "d_labitems.csv").open() as handle:
        labels = {int(r["itemid"]): r["label"] for r in csv.DictReader(handle)}
    assert {
        50912: "Creatinine",
        51222: "Hemoglobin",
        50931: "Glucose",
        50983: "Sodium",
        50971: "Potassium",
    }.items() <= labels.items()
    with (tmp_path / "hosp" / "diagnoses_icd.csv").open() as handle:
        assert {r["icd_version"] for r in csv.DictReader(handle)} == {"9", "10"}
    with (tmp_path / "hosp" / "labevents.csv").open() as handle:
        creatinine = [float(r["valuenum"]) for r in csv.DictReader(handle) if r["itemid"] == "50912"]
    assert 0.5 < sorted(creatinine)[len(creatinine) // 2] < 2.0  # plausible median, mg/dL
    assert all(item.low < item.high for item in LAB_ITEMS)


def test_caller_subject_ids(tmp_path: Path) -> None:
    extract = write_mimic(tmp_path / "m", subject_ids=[42, 7], labs_per_admission=(1, 2))
    with (tmp_path / "m" / "hosp" / "patients.csv").open() as handle:
        assert [r["subject_id"] for r in csv.DictReader(handle)] == ["42", "7"]
    assert extract.subject_ids == (42, 7)
    with pytest.raises(ValueError, match="integers"):
        write_mimic(tmp_path / "x", subject_ids=["SYNTH-0001"])  # type: ignore[list-item]
    fhir = write_fhir(tmp_path / "f", patient_ids=["SYNTH-0001", "MRN.77"])
    assert [p.name for p in fhir.files] == ["bundle-SYNTH-0001.json", "bundle-MRN.77.json"]
    patient = json.loads(fhir.files[0].read_text())["entry"][0]["resource"]
    assert patient["id"] == "SYNTH-0001" and patient["identifier"][0]["value"] == "SYNTH-0001"


@pytest.mark.parametrize("bundle_type", ["transaction", "collection"])
def test_generated_bundles_are_valid_fhir_r4b(tmp_path: Path, bundle_type: str) -> None:
    extract = write_fhir(tmp_path, seed=2, n_patients=5, bundle_type=bundle_type)  # type: ignore[arg-type]
    for path in extract.files:
        bundle = Bundle.model_validate(json.loads(path.read_text()))
        assert bundle.type == bundle_type
        kinds = {entry.resource.get_resource_type() for entry in bundle.entry}
        assert {"Patient", "Encounter", "Observation", "MedicationRequest"} <= kinds
        if bundle_type == "transaction":
            assert all(entry.request is not None for entry in bundle.entry)
