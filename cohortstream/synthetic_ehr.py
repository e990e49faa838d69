"""Deterministic synthetic EHR extracts: MIMIC-IV-shaped CSV tables and FHIR R4 bundles.

No MIMIC-IV demo is packaged anywhere this project can reach, and tests must run
offline, so the EHR loader is tested on data made here. Everything is drawn from one
seeded :class:`random.Random` and written with fixed formatting (gzip with ``mtime=0``),
so the same arguments give the same bytes. The shapes follow MIMIC-IV v2 ``hosp``
(column names and order, shifted years 2110–2210, ``EW EMER.`` admission types, blood
chemistry/haematology item ids such as creatinine 50912, haemoglobin 51222, glucose
50931) and FHIR R4 (one transaction or collection Bundle per patient with ``urn:uuid``
full URLs, LOINC-coded lab Observations with UCUM ``valueQuantity``, SNOMED + ICD-10-CM
coded Conditions).

Callers may pass their own subject ids (to line EHR subjects up with DICOM PatientIDs
or REDCap record ids) and ask for bad rows; each injected bad row is returned with its
file, location and kind so a test can check that exactly those were dead-lettered.

Regenerate the tiny sample under ``tests/data/ehr`` with::

    .venv/bin/python -m cohortstream.synthetic_ehr tests/data/ehr --seed 7 --subjects 3 \\
        --labs 3 6 --fhir-patients 2
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DIAGNOSES",
    "FHIR_BAD_KINDS",
    "LAB_ITEMS",
    "MIMIC_BAD_KINDS",
    "Diagnosis",
    "FhirExtract",
    "InjectedBadRow",
    "LabItem",
    "MimicExtract",
    "main",
    "write_fhir",
    "write_mimic",
]


@dataclass(frozen=True)
class LabItem:
    """One d_labitems row with its LOINC code, units and reference range."""

    itemid: int
    label: str
    fluid: str
    category: str
    loinc: str
    loinc_display: str
    unit: str
    """MIMIC valueuom."""
    ucum: str
    """The same unit in UCUM, for FHIR valueQuantity.code."""
    low: float
    high: float
    decimals: int


LAB_ITEMS: tuple[LabItem, ...] = (
    LabItem(
        50912,
        "Creatinine",
        "Blood",
        "Chemistry",
        "2160-0",
        "Creatinine [Mass/volume] in Serum or Plasma",
        "mg/dL",
        "mg/dL",
        0.5,
        1.2,
        1,
    ),
    LabItem(
        51222,
        "Hemoglobin",
        "Blood",
        "Hematology",
        "718-7",
        "Hemoglobin [Mass/volume] in Blood",
        "g/dL",
        "g/dL",
        12.0,
        16.0,
        1,
    ),
    LabItem(
        50931,
        "Glucose",
        "Blood",
        "Chemistry",
        "2345-7",
        "Glucose [Mass/volume] in Serum or Plasma",
        "mg/dL",
        "mg/dL",
        70.0,
        100.0,
        0,
    ),
    LabItem(
        50983,
        "Sodium",
        "Blood",
        "Chemistry",
        "2951-2",
        "Sodium [Moles/volume] in Serum or Plasma",
        "mEq/L",
        "mmol/L",
        133.0,
        145.0,
        0,
    ),
    LabItem(
        50971,
        "Potassium",
        "Blood",
        "Chemistry",
        "2823-3",
        "Potassium [Moles/volume] in Serum or Plasma",
        "mEq/L",
        "mmol/L",
        3.3,
        5.1,
        1,
    ),
    LabItem(
        50902,
        "Chloride",
        "Blood",
        "Chemistry",
        "2075-0",
        "Chloride [Moles/volume] in Serum or Plasma",
        "mEq/L",
        "mmol/L",
        96.0,
        108.0,
        0,
    ),
    LabItem(
        50882,
        "Bicarbonate",
        "Blood",
        "Chemistry",
        "1963-8",
        "Bicarbonate [Moles/volume] in Serum or Plasma",
        "mEq/L",
        "mmol/L",
        22.0,
        32.0,
        0,
    ),
    LabItem(
        51006,
        "Urea Nitrogen",
        "Blood",
        "Chemistry",
        "3094-0",
        "Urea nitrogen [Mass/volume] in Serum or Plasma",
        "mg/dL",
        "mg/dL",
        6.0,
        20.0,
        0,
    ),
    LabItem(
        50893,
        "Calcium, Total",
        "Blood",
        "Chemistry",
        "17861-6",
        "Calcium [Mass/volume] in Serum or Plasma",
        "mg/dL",
        "mg/dL",
        8.4,
        10.3,
        1,
    ),
    LabItem(
        50960,
        "Magnesium",
        "Blood",
        "Chemistry",
        "19123-9",
        "Magnesium [Mass/volume] in Serum or Plasma",
        "mg/dL",
        "mg/dL",
        1.6,
        2.6,
        1,
    ),
    LabItem(
        51301,
        "White Blood Cells",
        "Blood",
        "Hematology",
        "6690-2",
        "Leukocytes [#/volume] in Blood by Automated count",
        "K/uL",
        "10*3/uL",
        4.0,
        11.0,
        1,
    ),
    LabItem(
        51265,
        "Platelet Count",
        "Blood",
        "Hematology",
        "777-3",
        "Platelets [#/volume] in Blood by Automated count",
        "K/uL",
        "10*3/uL",
        150.0,
        440.0,
        0,
    ),
    LabItem(
        51221,
        "Hematocrit",
        "Blood",
        "Hematology",
        "4544-3",
        "Hematocrit [Volume Fraction] of Blood by Automated count",
        "%",
        "%",
        36.0,
        48.0,
        1,
    ),
    LabItem(
        51237,
        "INR(PT)",
        "Blood",
        "Hematology",
        "6301-6",
        "INR in Platelet poor plasma by Coagulation assay",
        "",
        "{INR}",
        0.9,
        1.1,
        1,
    ),
    LabItem(
        50813,
        "Lactate",
        "Blood",
        "Blood Gas",
        "2524-7",
        "Lactate [Moles/volume] in Serum or Plasma",
        "mmol/L",
        "mmol/L",
        0.5,
        2.0,
        1,
    ),
    LabItem(
        50862,
        "Albumin",
        "Blood",
        "Chemistry",
        "1751-7",
        "Albumin [Mass/volume] in Serum or Plasma",
        "g/dL",
        "g/dL",
        3.5,
        5.2,
        1,
    ),
)

#: A text-valued urine item (valuenum empty, as MIMIC has many).
URINE_BACTERIA = (51463, "Bacteria", "Urine", "Hematology")
_BACTERIA_VALUES = ("NONE", "FEW", "MOD", "MANY")

_PANELS: tuple[tuple[int, ...], ...] = (
    (50983, 50971, 50902, 50882, 51006, 50912, 50931),  # basic metabolic panel
    (51301, 51222, 51221, 51265),  # complete blood count
    (50893, 50960),
    (51237,),
    (50813,),
    (50862,),
)


@dataclass(frozen=True)
class Diagnosis:
    """A condition with its ICD-9-CM, ICD-10-CM and SNOMED CT codes."""

    icd9: str
    icd9_title: str
    icd10: str
    icd10_title: str
    snomed: str
    snomed_display: str


DIAGNOSES: tuple[Diagnosis, ...] = (
    Diagnosis(
        "4019",
        "Unspecified essential hypertension",
        "I10",
        "Essential (primary) hypertension",
        "38341003",
        "Hypertensive disorder",
    ),
    Diagnosis(
        "25000",
        "Diabetes mellitus without mention of complication, type II or unspecified type, not stated as uncontrolled",
        "E119",
        "Type 2 diabetes mellitus without complications",
        "44054006",
        "Diabetes mellitus type 2",
    ),
    Diagnosis(
        "4280",
        "Congestive heart failure, unspecified",
        "I509",
        "Heart failure, unspecified",
        "84114007",
        "Heart failure",
    ),
    Diagnosis(
        "5849",
        "Acute kidney failure, unspecified",
        "N179",
        "Acute kidney failure, unspecified",
        "14669001",
        "Acute renal failure syndrome",
    ),
    Diagnosis(
        "2724",
        "Other and unspecified hyperlipidemia",
        "E785",
        "Hyperlipidemia, unspecified",
        "55822004",
        "Hyperlipidemia",
    ),
    Diagnosis(
        "42731", "Atrial fibrillation", "I4891", "Unspecified atrial fibrillation", "49436004", "Atrial fibrillation"
    ),
    Diagnosis(
        "5990",
        "Urinary tract infection, site not specified",
        "N390",
        "Urinary tract infection, site not specified",
        "68566005",
        "Urinary tract infectious disease",
    ),
    Diagnosis(
        "486", "Pneumonia, organism unspecified", "J189", "Pneumonia, unspecified organism", "233604007", "Pneumonia"
    ),
    Diagnosis("2859", "Anemia, unspecified", "D649", "Anemia, unspecified", "271737000", "Anemia"),
    Diagnosis(
        "311",
        "Depressive disorder, not elsewhere classified",
        "F329",
        "Major depressive disorder, single episode, unspecified",
        "35489007",
        "Depressive disorder",
    ),
)


@dataclass(frozen=True)
class InjectedBadRow:
    """A row made bad on purpose: where it is and what is wrong with it."""

    file: str
    """Path relative to the extract root, as the loader reports it."""
    location: str
    """``file:line`` for CSV, ``file#entry[i]`` for FHIR."""
    kind: str


MIMIC_BAD_KINDS: tuple[str, ...] = (
    "unknown_itemid",
    "valuenum_not_number",
    "charttime_not_time",
    "subject_id_not_integer",
    "admittime_not_time",
    "icd_version_unknown",
    "anchor_age_not_integer",
    "wrong_field_count",
)

FHIR_BAD_KINDS: tuple[str, ...] = (
    "missing_id",
    "missing_subject",
    "unresolvable_subject",
    "value_not_number",
    "bad_datetime",
)

_PATIENTS_COLUMNS = ("subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod")
_ADMISSIONS_COLUMNS = (
    "subject_id",
    "hadm_id",
    "admittime",
    "dischtime",
    "deathtime",
    "admission_type",
    "admit_provider_id",
    "admission_location",
    "discharge_location",
    "insurance",
    "language",
    "marital_status",
    "race",
    "edregtime",
    "edouttime",
    "hospital_expire_flag",
)
_LABEVENTS_COLUMNS = (
    "labevent_id",
    "subject_id",
    "hadm_id",
    "specimen_id",
    "itemid",
    "order_provider_id",
    "charttime",
    "storetime",
    "value",
    "valuenum",
    "valueuom",
    "ref_range_lower",
    "ref_range_upper",
    "flag",
    "priority",
    "comments",
)
_DIAGNOSES_COLUMNS = ("subject_id", "hadm_id", "seq_num", "icd_code", "icd_version")

_ADMISSION_TYPES = ("EW EMER.", "URGENT", "ELECTIVE", "OBSERVATION ADMIT", "DIRECT EMER.", "EU OBSERVATION")
_ADMISSION_LOCATIONS = ("EMERGENCY ROOM", "PHYSICIAN REFERRAL", "TRANSFER FROM HOSPITAL", "WALK-IN/SELF REFERRAL")
_DISCHARGE_LOCATIONS = ("HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY", "REHAB")
_INSURANCE = ("Medicare", "Medicaid", "Other")
_MARITAL = ("MARRIED", "SINGLE", "WIDOWED", "DIVORCED")
_RACE = ("WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO - PUERTO RICAN", "ASIAN", "OTHER", "UNKNOWN")
_YEAR_GROUPS = ("2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022")


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _number(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Sequence[str]], compress: bool) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    data = buffer.getvalue().encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped:
            zipped.write(data)
    else:
        path.write_bytes(data)
    return path


@dataclass(frozen=True)
class MimicExtract:
    """What :func:`write_mimic` wrote."""

    root: Path
    files: dict[str, Path]
    """Table name → file."""
    rows: dict[str, int]
    """Table name → data rows written (bad ones included)."""
    bad_rows: tuple[InjectedBadRow, ...]
    subject_ids: tuple[int, ...]

    def good_rows(self, table: str) -> int:
        """Rows of ``table`` that should become events."""
        prefix = self.files[table].relative_to(self.root).as_posix() + ":"
        return self.rows[table] - sum(b.location.startswith(prefix) for b in self.bad_rows)


def _lab_value(rng: random.Random, item: LabItem, sick: float) -> float:
    mid, span = (item.low + item.high) / 2, item.high - item.low
    value = rng.gauss(mid + sick * span * 0.6, span / 3.2)
    return round(max(value, item.low * 0.2 if item.low > 0 else 0.1), item.decimals)


def write_mimic(
    out_dir: Path,
    *,
    seed: int = 0,
    n_subjects: int = 300,
    subject_ids: Sequence[int] | None = None,
    labs_per_admission: tuple[int, int] = (20, 60),
    compress: bool = False,
    bad_rows: int = 0,
    layout: Literal["hosp", "flat"] = "hosp",
) -> MimicExtract:
    """Write patients, admissions, labevents, d_labitems, diagnoses_icd and
    d_icd_diagnoses under ``out_dir`` (in ``hosp/`` like MIMIC-IV, or flat).

    ``subject_ids`` (integers, as MIMIC's are) replaces the drawn ids and ``n_subjects``.
    ``bad_rows`` corrupts that many data rows in place, cycling through
    :data:`MIMIC_BAD_KINDS`; they are returned in ``bad_rows`` with file and line.
    """
    rng = random.Random(seed)
    ids = (
        list(subject_ids) if subject_ids is not None else sorted(rng.sample(range(10_000_000, 20_000_000), n_subjects))
    )
    if len(set(ids)) != len(ids) or any(not isinstance(i, int) or i < 0 for i in ids):
        raise ValueError("subject_ids must be distinct non-negative integers (MIMIC subject_id is an integer)")
    items = {item.itemid: item for item in LAB_ITEMS}
    patients: list[list[str]] = []
    admissions: list[list[str]] = []
    labs: list[list[str]] = []
    diagnoses: list[list[str]] = []
    hadm_id = 20_000_000 + rng.randrange(1_000_000)
    labevent_id = 1 + rng.randrange(1_000)
    specimen_id = 1_000_000 + rng.randrange(1_000_000)
    for subject in ids:
        gender = rng.choice("MF")
        age = rng.randint(18, 91)
        anchor_year = rng.randint(2110, 2200)
        sick = rng.random() * 0.8
        n_admissions = rng.choices((1, 2, 3, 4), weights=(50, 25, 15, 10))[0]
        start = datetime(anchor_year, 1, 1) + timedelta(days=rng.randrange(365 * 3))
        dies = rng.random() < 0.08
        dod = ""
        marital, race, insurance = rng.choice(_MARITAL), rng.choice(_RACE), rng.choice(_INSURANCE)
        for n in range(n_admissions):
            hadm_id += rng.randint(1, 5000)
            admit = start.replace(hour=rng.randrange(24), minute=rng.randrange(60), second=0)
            discharge = admit + timedelta(hours=rng.randint(20, 24 * 14))
            last = n == n_admissions - 1
            died_here = dies and last and rng.random() < 0.5
            if dies and last:
                dod = (discharge if died_here else discharge + timedelta(days=rng.randint(10, 400))).strftime(
                    "%Y-%m-%d"
                )
            kind = rng.choice(_ADMISSION_TYPES)
            ed = kind in ("EW EMER.", "EU OBSERVATION", "DIRECT EMER.")
            admissions.append(
                [
                    str(subject),
                    str(hadm_id),
                    _time(admit),
                    _time(discharge),
                    _time(discharge) if died_here else "",
                    kind,
                    f"P{rng.randrange(10**5):05d}",
                    rng.choice(_ADMISSION_LOCATIONS),
                    "DIED" if died_here else rng.choice(_DISCHARGE_LOCATIONS),
                    insurance,
                    "ENGLISH",
                    marital,
                    race,
                    _time(admit - timedelta(hours=rng.randint(2, 9))) if ed else "",
                    _time(admit) if ed else "",
                    "1" if died_here else "0",
                ]
            )
            n_labs = rng.randint(*labs_per_admission)
            written = 0
            while written < n_labs:
                specimen_id += rng.randint(1, 50)
                charted = admit + timedelta(minutes=rng.randrange(int((discharge - admit).total_seconds() // 60)))
                stored = _time(charted + timedelta(minutes=rng.randint(20, 180)))
                priority = rng.choices(("ROUTINE", "STAT", ""), weights=(65, 30, 5))[0]
                outpatient = rng.random() < 0.04
                if rng.random() < 0.03:
                    labevent_id += 1
                    itemid, _, _, _ = URINE_BACTERIA
                    labs.append(
                        [
                            str(labevent_id),
                            str(subject),
                            "" if outpatient else str(hadm_id),
                            str(specimen_id),
                            str(itemid),
                            "",
                            _time(charted),
                            stored,
                            rng.choice(_BACTERIA_VALUES),
                            "",
                            "",
                            "",
                            "",
                            "",
                            priority,
                            "",
                        ]
                    )
                    written += 1
                    continue
                for itemid in rng.choice(_PANELS):
                    item = items[itemid]
                    value = _lab_value(rng, item, sick)
                    labevent_id += 1
                    text = _number(value, item.decimals)
                    flag = "abnormal" if value < item.low or value > item.high else ""
                    labs.append(
                        [
                            str(labevent_id),
                            str(subject),
                            "" if outpatient else str(hadm_id),
                            str(specimen_id),
                            str(itemid),
                            "",
                            _time(charted),
                            stored,
                            text,
                            text,
                            item.unit,
                            _number(item.low, item.decimals),
                            _number(item.high, item.decimals),
                            flag,
                            priority,
                            "",
                        ]
                    )
                    written += 1
            icd_version = 9 if rng.random() < 0.45 else 10
            for seq, diagnosis in enumerate(rng.sample(DIAGNOSES, rng.randint(1, 6)), start=1):
                code = diagnosis.icd9 if icd_version == 9 else diagnosis.icd10
                diagnoses.append([str(subject), str(hadm_id), str(seq), code, str(icd_version)])
            start = discharge + timedelta(days=rng.randint(5, 700))
        patients.append(
            [
                str(subject),
                gender,
                str(age),
                str(anchor_year),
                rng.choice(_YEAR_GROUPS),
                dod,
            ]
        )
    labitems = [[str(i.itemid), i.label, i.fluid, i.category] for i in LAB_ITEMS]
    labitems.append([str(URINE_BACTERIA[0]), *URINE_BACTERIA[1:]])
    labitems.sort(key=lambda row: int(row[0]))
    icd_rows = sorted(
        [[d.icd9, "9", d.icd9_title] for d in DIAGNOSES] + [[d.icd10, "10", d.icd10_title] for d in DIAGNOSES],
        key=lambda row: (row[1], row[0]),
    )
    tables: dict[str, tuple[Sequence[str], list[list[str]]]] = {
        "patients": (_PATIENTS_COLUMNS, patients),
        "admissions": (_ADMISSIONS_COLUMNS, admissions),
        "labevents": (_LABEVENTS_COLUMNS, labs),
        "d_labitems": (("itemid", "label", "fluid", "category"), labitems),
        "diagnoses_icd": (_DIAGNOSES_COLUMNS, diagnoses),
        "d_icd_diagnoses": (("icd_code", "icd_version", "long_title"), icd_rows),
    }
    base = out_dir / "hosp" if layout == "hosp" else out_dir
    suffix = ".csv.gz" if compress else ".csv"

    def rel(table: str) -> str:
        return (base / f"{table}{suffix}").relative_to(out_dir).as_posix()

    injected = _inject_mimic(rng, tables, bad_rows, rel)
    files = {
        table: _write_csv(base / f"{table}.csv", columns, rows, compress) for table, (columns, rows) in tables.items()
    }
    return MimicExtract(
        root=out_dir,
        files=files,
        rows={table: len(rows) for table, (_, rows) in tables.items()},
        bad_rows=tuple(sorted(injected, key=lambda b: (b.file, int(b.location.rsplit(":", 1)[1])))),
        subject_ids=tuple(ids),
    )


_BAD_TARGETS: dict[str, tuple[str, str, str]] = {
    # kind: (table, column, bad value)
    "unknown_itemid": ("labevents", "itemid", "99999"),
    "valuenum_not_number": ("labevents", "valuenum", "1.2.3"),
    "charttime_not_time": ("labevents", "charttime", "2150-13-45 25:61:00"),
    "subject_id_not_integer": ("labevents", "subject_id", "S-12"),
    "admittime_not_time": ("admissions", "admittime", "yesterday"),
    "icd_version_unknown": ("diagnoses_icd", "icd_version", "11"),
    "anchor_age_not_integer": ("patients", "anchor_age", "forty"),
    "wrong_field_count": ("labevents", "", ""),
}


def _inject_mimic(
    rng: random.Random, tables: dict[str, tuple[Sequence[str], list[list[str]]]], count: int, rel: Any
) -> list[InjectedBadRow]:
    injected: list[InjectedBadRow] = []
    used: set[tuple[str, int]] = set()
    for n in range(count):
        kind = MIMIC_BAD_KINDS[n % len(MIMIC_BAD_KINDS)]
        table, column, bad = _BAD_TARGETS[kind]
        columns, rows = tables[table]
        free = [i for i in range(len(rows)) if (table, i) not in used]
        if not free:
            raise ValueError(f"too many bad rows asked for table {table}")
        index = rng.choice(free)
        used.add((table, index))
        if kind == "wrong_field_count":
            rows[index] = rows[index][:-2]
        else:
            rows[index] = list(rows[index])
            rows[index][list(columns).index(column)] = bad
        injected.append(InjectedBadRow(rel(table), f"{rel(table)}:{index + 2}", kind))
    return injected


# --------------------------------------------------------------------------- FHIR


@dataclass(frozen=True)
class FhirExtract:
    """What :func:`write_fhir` wrote."""

    root: Path
    files: tuple[Path, ...]
    patient_ids: tuple[str, ...]
    resources: dict[str, int] = field(default_factory=dict)
    """Mapped resource type → valid resources written."""
    skipped: int = 0
    """Resources of types the loader does not map."""
    bad_rows: tuple[InjectedBadRow, ...] = ()


_LOINC = "http://loinc.org"
_SNOMED = "http://snomed.info/sct"
_ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
_UCUM = "http://unitsofmeasure.org"
_MRN_SYSTEM = "https://hospital.example.org/fhir/mrn"
_ZONES = (UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=1)), timezone(timedelta(hours=-8)))
_ENCOUNTER_CLASSES = (("IMP", "inpatient encounter"), ("AMB", "ambulatory"), ("EMER", "emergency"))
_ENCOUNTER_TYPES = (
    ("32485007", "Hospital admission"),
    ("185349003", "Encounter for check up"),
    ("50849002", "Emergency room admission"),
)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _instant(value: datetime) -> str:
    return value.isoformat(timespec="seconds")


def _concept(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        concept["text"] = text
    return concept


def _entry(resource: dict[str, Any], full_url: str, bundle_type: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"fullUrl": full_url, "resource": resource}
    if bundle_type == "transaction":
        entry["request"] = {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
    return entry


def _fhir_patient(
    rng: random.Random, patient_id: str, bundle_type: str, counts: dict[str, int]
) -> list[dict[str, Any]]:
    patient_url = f"urn:uuid:{_uuid(rng)}"
    birth = date(rng.randint(1935, 2003), rng.randint(1, 12), rng.randint(1, 28))
    entries = [
        _entry(
            {
                "resourceType": "Patient",
                "id": patient_id,
                "identifier": [
                    {
                        "type": _concept(
                            "http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical record number"
                        ),
                        "system": _MRN_SYSTEM,
                        "value": patient_id,
                    }
                ],
                "gender": rng.choice(("male", "female")),
                "birthDate": birth.isoformat(),
            },
            patient_url,
            bundle_type,
        )
    ]
    counts["Patient"] += 1
    when = datetime(rng.randint(2016, 2023), rng.randint(1, 12), rng.randint(1, 28), tzinfo=UTC)
    items = [i for i in LAB_ITEMS if i.unit]
    for _ in range(rng.randint(1, 3)):
        zone = rng.choice(_ZONES)
        start = (when + timedelta(hours=rng.randrange(24))).astimezone(zone).replace(minute=rng.randrange(60), second=0)
        end = start + timedelta(hours=rng.randint(1, 24 * 7))
        encounter_id = _uuid(rng)
        encounter_url = f"urn:uuid:{encounter_id}"
        klass, klass_display = rng.choice(_ENCOUNTER_CLASSES)
        type_code, type_display = rng.choice(_ENCOUNTER_TYPES)
        entries.append(
            _entry(
                {
                    "resourceType": "Encounter",
                    "id": encounter_id,
                    "status": "finished",
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": klass,
                        "display": klass_display,
                    },
                    "type": [_concept(_SNOMED, type_code, type_display, type_display)],
                    "subject": {"reference": patient_url},
                    "period": {"start": _instant(start), "end": _instant(end)},
                },
                encounter_url,
                bundle_type,
            )
        )
        counts["Encounter"] += 1
        for _ in range(rng.randint(4, 12)):
            item = rng.choice(items)
            value = _lab_value(rng, item, rng.random() * 0.5)
            effective = start + timedelta(minutes=rng.randrange(max(1, int((end - start).total_seconds() // 60))))
            interpretation = "H" if value > item.high else "L" if value < item.low else "N"
            observation_id = _uuid(rng)
            entries.append(
                _entry(
                    {
                        "resourceType": "Observation",
                        "id": observation_id,
                        "status": "final",
                        "category": [
                            _concept(
                                "http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory"
                            )
                        ],
                        "code": _concept(_LOINC, item.loinc, item.loinc_display, item.label),
                        "subject": {"reference": f"Patient/{patient_id}"},
                        "encounter": {"reference": encounter_url},
                        "effectiveDateTime": _instant(effective),
                        "issued": _instant((effective + timedelta(minutes=rng.randint(20, 180))).astimezone(UTC)),
                        "valueQuantity": {"value": value, "unit": item.ucum, "system": _UCUM, "code": item.ucum},
                        "interpretation": [
                            _concept(
                                "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                interpretation,
                                {"H": "High", "L": "Low", "N": "Normal"}[interpretation],
                            )
                        ],
                        "referenceRange": [
                            {
                                "low": {"value": item.low, "unit": item.ucum, "system": _UCUM, "code": item.ucum},
                                "high": {"value": item.high, "unit": item.ucum, "system": _UCUM, "code": item.ucum},
                            }
                        ],
                    },
                    f"urn:uuid:{observation_id}",
                    bundle_type,
                )
            )
            counts["Observation"] += 1
        for diagnosis in rng.sample(DIAGNOSES, rng.randint(0, 2)):
            condition_id = _uuid(rng)
            concept = _concept(_SNOMED, diagnosis.snomed, diagnosis.snomed_display, diagnosis.snomed_display)
            concept["coding"].append({"system": _ICD10CM, "code": diagnosis.icd10, "display": diagnosis.icd10_title})
            entries.append(
                _entry(
                    {
                        "resourceType": "Condition",
                        "id": condition_id,
                        "clinicalStatus": _concept(
                            "http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"
                        ),
                        "verificationStatus": _concept(
                            "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"
                        ),
                        "category": [
                            _concept(
                                "http://terminology.hl7.org/CodeSystem/condition-category",
                                "encounter-diagnosis",
                                "Encounter Diagnosis",
                            )
                        ],
                        "code": concept,
                        "subject": {"reference": patient_url},
                        "encounter": {"reference": encounter_url},
                        "onsetDateTime": _instant(start),
                        "recordedDate": _instant(end),
                    },
                    f"urn:uuid:{condition_id}",
                    bundle_type,
                )
            )
            counts["Condition"] += 1
        when = end.astimezone(UTC) + timedelta(days=rng.randint(10, 300))
    medication_id = _uuid(rng)
    entries.append(
        _entry(
            {
                "resourceType": "MedicationRequest",
                "id": medication_id,
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": _concept(
                    "http://www.nlm.nih.gov/research/umls/rxnorm", "197361", "amlodipine 5 MG Oral Tablet"
                ),
                "subject": {"reference": patient_url},
                "authoredOn": _instant(when),
            },
            f"urn:uuid:{medication_id}",
            bundle_type,
        )
    )
    return entries


def _bad_resource(rng: random.Random, kind: str, patient_id: str) -> dict[str, Any]:
    resource_id = _uuid(rng)
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": resource_id,
        "status": "final",
        "code": _concept(_LOINC, "2160-0", "Creatinine [Mass/volume] in Serum or Plasma"),
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2020-01-01T08:00:00Z",
        "valueQuantity": {"value": 1.0, "unit": "mg/dL", "system": _UCUM, "code": "mg/dL"},
    }
    if kind == "missing_id":
        del observation["id"]
    elif kind == "missing_subject":
        observation = {
            "resourceType": "Condition",
            "id": resource_id,
            "code": _concept(_SNOMED, "38341003", "Hypertensive disorder"),
        }
    elif kind == "unresolvable_subject":
        observation["subject"] = {"reference": f"urn:uuid:{_uuid(rng)}"}
    elif kind == "value_not_number":
        observation["valueQuantity"]["value"] = "high"
    elif kind == "bad_datetime":
        observation["effectiveDateTime"] = "2020-13-45T99:00:00Z"
    return {"fullUrl": f"urn:uuid:{resource_id}", "resource": observation}


def write_fhir(
    out_dir: Path,
    *,
    seed: int = 0,
    n_patients: int = 20,
    patient_ids: Sequence[str] | None = None,
    bundle_type: Literal["transaction", "collection"] = "transaction",
    bad_resources: int = 0,
) -> FhirExtract:
    """Write one Bundle per patient as ``bundle-<patient id>.json`` under ``out_dir``.

    ``patient_ids`` (FHIR ids: letters, digits, ``-`` and ``.``) replaces the drawn ids;
    each Patient also gets an MRN identifier equal to its id. Every bundle carries one
    MedicationRequest, a type the loader skips. ``bad_resources`` appends that many
    malformed entries (cycling :data:`FHIR_BAD_KINDS`) to the bundles in turn.
    """
    rng = random.Random(seed)
    ids = list(patient_ids) if patient_ids is not None else [f"pt-{_uuid(rng)[:8]}" for _ in range(n_patients)]
    if len(set(ids)) != len(ids):
        raise ValueError("patient_ids must be distinct")
    counts = {"Patient": 0, "Encounter": 0, "Observation": 0, "Condition": 0}
    bundles = [_fhir_patient(rng, patient_id, bundle_type, counts) for patient_id in ids]
    names = [f"bundle-{patient_id}.json" for patient_id in ids]
    injected: list[InjectedBadRow] = []
    for n in range(bad_resources):
        kind = FHIR_BAD_KINDS[n % len(FHIR_BAD_KINDS)]
        target = n % len(bundles)
        bundles[target].append(_bad_resource(rng, kind, ids[target]))
        injected.append(InjectedBadRow(names[target], f"{names[target]}#entry[{len(bundles[target]) - 1}]", kind))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name, entries in zip(names, bundles, strict=True):
        head = {"resourceType": "Bundle", "id": str(uuid.uuid5(uuid.NAMESPACE_URL, name)), "type": bundle_type}
        # One entry per line: small, diff-friendly, and still readable.
        lines = ",\n".join(json.dumps(entry, separators=(",", ":")) for entry in entries)
        path = out_dir / name
        path.write_text(json.dumps(head)[:-1] + ', "entry": [\n' + lines + "\n]}\n", encoding="utf-8")
        files.append(path)
    return FhirExtract(
        root=out_dir,
        files=tuple(files),
        patient_ids=tuple(ids),
        resources=counts,
        skipped=len(ids),
        bad_rows=tuple(injected),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cohortstream.synthetic_ehr OUT``: write OUT/mimic and OUT/fhir."""
    parser = argparse.ArgumentParser(prog="python -m cohortstream.synthetic_ehr", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subjects", type=int, default=300, help="MIMIC subjects (default 300)")
    parser.add_argument(
        "--labs", type=int, nargs=2, default=(20, 60), metavar=("MIN", "MAX"), help="lab rows per admission"
    )
    parser.add_argument("--fhir-patients", type=int, default=20, help="FHIR bundles (default 20; 0 for none)")
    parser.add_argument("--gzip", action="store_true", help="write .csv.gz like MIMIC-IV ships")
    parser.add_argument("--bad-rows", type=int, default=0, help="corrupt this many MIMIC rows and FHIR resources")
    args = parser.parse_args(argv)
    extract = write_mimic(
        args.out / "mimic",
        seed=args.seed,
        n_subjects=args.subjects,
        labs_per_admission=tuple(args.labs),
        compress=args.gzip,
        bad_rows=args.bad_rows,
    )
    print(f"MIMIC: {extract.rows} under {extract.root}")
    if args.fhir_patients:
        fhir = write_fhir(args.out / "fhir", seed=args.seed, n_patients=args.fhir_patients, bad_resources=args.bad_rows)
        print(f"FHIR: {len(fhir.files)} bundles, {fhir.resources} under {fhir.root}")
    for bad in extract.bad_rows + (fhir.bad_rows if args.fhir_patients else ()):
        print(f"bad row {bad.location}: {bad.kind}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
