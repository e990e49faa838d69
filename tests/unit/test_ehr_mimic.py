"""MIMIC-IV table parsers: each table's mapping, bad rows with file/line/reason, gzip."""

from __future__ import annotations

import gzip
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cohortstream.events import EhrRecord, EhrRecordType, FailureStage
from cohortstream.synthetic_ehr import MIMIC_BAD_KINDS, write_mimic
from producers.ehr.mimic import (
    Lookups,
    parse_table,
    read_icd_titles,
    read_labitems,
    table_name,
)
from producers.ehr.rows import (
    BadRow,
    EhrFileError,
    MissingColumnError,
    deterministic_event_id,
)

SAMPLE = Path(__file__).parents[1] / "data" / "ehr" / "mimic" / "hosp"


def lookups(folder: Path = SAMPLE) -> Lookups:
    items, bad_items = read_labitems(folder / "d_labitems.csv", "d_labitems.csv")
    titles, bad_titles = read_icd_titles(folder / "d_icd_diagnoses.csv", "d_icd_diagnoses.csv")
    assert bad_items == [] and bad_titles == []
    return Lookups(labitems=items, icd_titles=titles)


def parse(table: str, folder: Path = SAMPLE, rel: str | None = None) -> list[EhrRecord | BadRow]:
    return list(parse_table(table, folder / f"{table}.csv", rel or f"{table}.csv", "mimic-iv", lookups(folder)))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_dictionary_tables() -> None:
    found = lookups()
    assert found.labitems is not None
    assert found.labitems[50912] == "Creatinine" and found.labitems[51222] == "Hemoglobin"
    assert found.labitems[50931] == "Glucose"
    assert found.icd_titles[(10, "I10")] == "Essential (primary) hypertension"
    assert found.icd_titles[(9, "4019")] == "Unspecified essential hypertension"


def test_patients() -> None:
    records = parse("patients")
    assert len(records) == 3 and all(isinstance(r, EhrRecord) for r in records)
    first = records[0]
    assert isinstance(first, EhrRecord)
    row = (SAMPLE / "patients.csv").read_text().splitlines()[1].split(",")
    assert first.record_type is EhrRecordType.PATIENT
    assert first.subject_id == first.source_row_id == row[0]
    assert first.attributes["gender"] == row[1] and first.attributes["anchor_age"] == row[2]
    assert first.attributes["anchor_year"] == row[3]
    assert first.source == "mimic-iv" and first.source_file == "patients.csv" and first.producer == "ehr-loader"
    assert first.event_id == deterministic_event_id("mimic-iv", "patients", row[0])


def test_admissions() -> None:
    records = [r for r in parse("admissions") if isinstance(r, EhrRecord)]
    assert len(records) == 7
    first = records[0]
    header, row = ((SAMPLE / "admissions.csv").read_text().splitlines()[i].split(",") for i in (0, 1))
    values = dict(zip(header, row, strict=True))
    assert first.record_type is EhrRecordType.ADMISSION
    assert first.source_row_id == values["hadm_id"] and first.subject_id == values["subject_id"]
    # Naive MIMIC time, labelled UTC with the wall-clock value unchanged.
    assert first.effective_at == datetime.strptime(values["admittime"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert first.attributes["dischtime"] == values["dischtime"]
    assert first.attributes["admission_type"] == values["admission_type"] == first.code
    assert first.attributes["hadm_id"] == values["hadm_id"]


def test_labevents_join_d_labitems() -> None:
    records = [r for r in parse("labevents") if isinstance(r, EhrRecord)]
    assert len(records) == 53
    numeric = next(r for r in records if r.value_number is not None)
    assert numeric.record_type is EhrRecordType.LAB
    assert numeric.code_system == "mimic-iv-itemid"
    assert numeric.display == lookups().labitems[int(numeric.code)]  # type: ignore[index,arg-type]
    assert numeric.value_text is None and numeric.unit
    assert {"ref_range_lower", "ref_range_upper", "specimen_id", "storetime"} <= set(numeric.attributes)
    assert float(numeric.attributes["ref_range_lower"]) < float(numeric.attributes["ref_range_upper"])
    assert numeric.effective_at is not None and numeric.effective_at.tzinfo is UTC


def test_lab_text_value_when_valuenum_empty(tmp_path: Path) -> None:
    shutil.copy(SAMPLE / "d_labitems.csv", tmp_path)
    shutil.copy(SAMPLE / "d_icd_diagnoses.csv", tmp_path)
    write(
        tmp_path / "labevents.csv",
        "labevent_id,subject_id,hadm_id,itemid,charttime,value,valuenum,valueuom,flag\n"
        "7,10000001,,51463,2150-01-01 10:00:00,FEW,,,abnormal\n",
    )
    [record] = parse("labevents", tmp_path)
    assert isinstance(record, EhrRecord)
    assert record.value_number is None and record.value_text == "FEW" and record.unit is None
    assert record.display == "Bacteria" and record.attributes == {"flag": "abnormal"}


def test_diagnoses_icd_versions_and_titles() -> None:
    records = [r for r in parse("diagnoses_icd") if isinstance(r, EhrRecord)]
    assert len(records) == 29
    assert {r.code_system for r in records} <= {"ICD-9-CM", "ICD-10-CM"}
    for record in records:
        hadm_id, seq_num = record.source_row_id.split("/")
        assert record.attributes == {"hadm_id": hadm_id, "seq_num": seq_num}
        version = 9 if record.code_system == "ICD-9-CM" else 10
        assert record.display == lookups().icd_titles[(version, record.code)]  # type: ignore[index]
        assert record.record_type is EhrRecordType.DIAGNOSIS and record.effective_at is None


@pytest.mark.parametrize(
    ("table", "text", "reason"),
    [
        ("patients", "subject_id,gender,anchor_age,anchor_year\nx1,F,40,2150\n", "column subject_id: not an integer"),
        ("patients", "subject_id,gender,anchor_age,anchor_year\n1,,40,2150\n", "column gender: empty"),
        ("admissions", "subject_id,hadm_id,admittime\n1,2,2150-02-30 10:00:00\n", "column admittime: not a time"),
        ("admissions", "subject_id,hadm_id,admittime,dischtime\n1,2.5,2150-02-01,\n", "column hadm_id: not an integer"),
        (
            "labevents",
            "labevent_id,subject_id,itemid,charttime,value,valuenum,valueuom\n1,2,99999,2150-01-01,1,1,mg\n",
            "column itemid: 99999 is not in d_labitems",
        ),
        (
            "labevents",
            "labevent_id,subject_id,itemid,charttime,value,valuenum,valueuom\n1,2,50912,2150-01-01,x,1..2,mg\n",
            "column valuenum: not a number",
        ),
        (
            "labevents",
            "labevent_id,subject_id,itemid,charttime,value,valuenum,valueuom\n1,2,50912,2150-01-01,1,nan,mg\n",
            "column valuenum: not a finite number",
        ),
        (
            "labevents",
            "labevent_id,subject_id,itemid,charttime,value,valuenum,valueuom\n1,2,50912\n",
            "expected 7 fields, got 3",
        ),
        (
            "diagnoses_icd",
            "subject_id,hadm_id,seq_num,icd_code,icd_version\n1,2,1,I10,11\n",
            "column icd_version: expected 9 or 10",
        ),
        ("diagnoses_icd", "subject_id,hadm_id,seq_num,icd_code,icd_version\n1,2,1,,10\n", "column icd_code: empty"),
    ],
)
def test_bad_rows_name_file_line_column(tmp_path: Path, table: str, text: str, reason: str) -> None:
    shutil.copy(SAMPLE / "d_labitems.csv", tmp_path)
    shutil.copy(SAMPLE / "d_icd_diagnoses.csv", tmp_path)
    # A good row first, so the bad one is on line 3.
    header, bad = text.splitlines()
    good = {
        "patients": "5,M,50,2150",
        "admissions": "5,6,2150-01-01 00:00:00",
        "labevents": "9,5,50912,2150-01-01,1,1,mg",
        "diagnoses_icd": "5,6,1,I10,10",
    }[table]
    good += "," * (header.count(",") - good.count(","))
    write(tmp_path / f"{table}.csv", f"{header}\n{good}\n{bad}\n")
    first, second = parse(table, tmp_path, rel=f"hosp/{table}.csv")
    assert isinstance(first, EhrRecord)
    assert isinstance(second, BadRow)
    assert second.location == f"hosp/{table}.csv:3"
    assert reason in second.reason and second.reason.startswith(f"{table}: ")
    assert second.raw == f"{bad}\n".encode()
    letter = second.to_dead_letter()
    assert letter.producer == "ehr-loader" and letter.stage is FailureStage.VALIDATE
    assert letter.source_location == f"hosp/{table}.csv:3" and letter.value == second.raw
    assert letter.source_topic is None and letter.source_offset is None and letter.attempts == 0
    assert letter.reason == second.reason


def test_bad_row_key_and_quoted_multiline_line_numbers(tmp_path: Path) -> None:
    write(
        tmp_path / "admissions.csv",
        'subject_id,hadm_id,admittime,admission_location\n5,6,2150-01-01 00:00:00,"TWO\nLINES"\n7,8,never,X\n',
    )
    first, second = parse_table("admissions", tmp_path / "admissions.csv", "admissions.csv")
    assert isinstance(first, EhrRecord) and first.attributes["admission_location"] == "TWO\nLINES"
    assert isinstance(second, BadRow)
    assert second.location == "admissions.csv:4"  # the quoted newline took lines 2 and 3
    assert second.key == "mimic-iv/7" and second.message_key == "mimic-iv/7"


def test_missing_column_fails_the_file_naming_it(tmp_path: Path) -> None:
    write(
        tmp_path / "labevents.csv", "labevent_id,subject_id,charttime,value,valuenum,valueuom\n1,2,2150-01-01,1,1,mg\n"
    )
    with pytest.raises(MissingColumnError, match=r"labevents\.csv: table labevents lacks required column\(s\) itemid"):
        list(parse_table("labevents", tmp_path / "labevents.csv", "labevents.csv", lookups=Lookups(labitems={})))


def test_labevents_without_d_labitems_is_a_file_error(tmp_path: Path) -> None:
    shutil.copy(SAMPLE / "labevents.csv", tmp_path)
    with pytest.raises(EhrFileError, match="needs d_labitems"):
        list(parse_table("labevents", tmp_path / "labevents.csv", "labevents.csv"))


def test_gzip_gives_the_same_events_as_plain(tmp_path: Path) -> None:
    for name in ("labevents.csv", "d_labitems.csv"):
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress((SAMPLE / name).read_bytes()))
    items, _ = read_labitems(tmp_path / "d_labitems.csv.gz", "d_labitems.csv.gz")
    zipped = list(
        parse_table("labevents", tmp_path / "labevents.csv.gz", "labevents.csv", lookups=Lookups(labitems=items))
    )
    plain = parse("labevents")
    assert [r.model_dump(exclude={"emitted_at"}) for r in zipped] == [  # type: ignore[union-attr]
        r.model_dump(exclude={"emitted_at"})
        for r in plain  # type: ignore[union-attr]
    ]
    assert table_name(tmp_path / "labevents.csv.gz") == "labevents"
    assert table_name(tmp_path / "chartevents.csv.gz") is None


def test_truncated_gzip_is_a_file_error(tmp_path: Path) -> None:
    data = gzip.compress((SAMPLE / "patients.csv").read_bytes())
    (tmp_path / "patients.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(EhrFileError, match="patients.csv.gz"):
        list(parse_table("patients", tmp_path / "patients.csv.gz", "patients.csv.gz"))


def test_generated_bad_rows_are_exactly_the_dead_letters(tmp_path: Path) -> None:
    extract = write_mimic(
        tmp_path, seed=3, n_subjects=40, labs_per_admission=(5, 10), bad_rows=2 * len(MIMIC_BAD_KINDS)
    )
    folder = tmp_path / "hosp"
    found: list[BadRow] = []
    for table in ("patients", "admissions", "labevents", "diagnoses_icd"):
        outcomes = parse(table, folder, rel=f"hosp/{table}.csv")
        assert sum(isinstance(o, EhrRecord) for o in outcomes) == extract.good_rows(table)
        found += [o for o in outcomes if isinstance(o, BadRow)]
    assert sorted(b.location for b in found) == sorted(b.location for b in extract.bad_rows)
    assert {b.kind for b in extract.bad_rows} == set(MIMIC_BAD_KINDS)
