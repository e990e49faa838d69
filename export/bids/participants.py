"""``participants.tsv`` and its sidecar: age and sex from whichever source has them.

Why this order of sources: DICOM PatientAge is measured at the scan, which is what an
imaging analysis wants; the EHR's anchor age comes next; sex is taken from DICOM, then
the EHR, then a REDCap field named ``sex`` (by its choice label). Ages above 89 are
written as 89 (HIPAA safe harbour: higher ages identify).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PARTICIPANTS_SIDECAR", "Demographics", "participant_row"]

MAX_AGE = 89

PARTICIPANTS_SIDECAR: dict[str, Any] = {
    "participant_id": {"Description": "Pseudonymous participant label (keyed hash of the registry's subject id)."},
    "age": {
        "Description": f"Age in years at the latest scan (DICOM PatientAge) or else from the EHR; ages above "
        f"{MAX_AGE} are written as {MAX_AGE}.",
        "Units": "year",
    },
    "sex": {
        "Description": "Sex as recorded by the sources (DICOM PatientSex, EHR gender, REDCap).",
        "Levels": {"M": "male", "F": "female", "O": "other"},
    },
}


@dataclass
class Demographics:
    """What the sources say about one subject."""

    dicom_patients: list[dict[str, Any]] = field(default_factory=list)
    ehr_subjects: list[dict[str, Any]] = field(default_factory=list)
    questionnaires: list[dict[str, Any]] = field(default_factory=list)


def _first(values: Sequence[Any]) -> Any:
    return next((v for v in values if v not in (None, "")), None)


def _redcap_sex(questionnaires: Sequence[dict[str, Any]]) -> str | None:
    for doc in questionnaires:
        label = str((doc.get("labels") or {}).get("sex") or "").strip().lower()
        if label.startswith(("m", "male")):
            return "M"
        if label.startswith(("f", "female", "w")):
            return "F"
        if label:
            return "O"
    return None


def participant_row(label: str, demographics: Demographics) -> dict[str, Any]:
    ages = [p.get("age_years") for p in demographics.dicom_patients] + [
        e.get("age_years") for e in demographics.ehr_subjects
    ]
    age = _first([a for a in ages if isinstance(a, int | float)])
    sex = _first(
        [p.get("sex_normalised") for p in demographics.dicom_patients]
        + [e.get("sex_normalised") for e in demographics.ehr_subjects]
    ) or _redcap_sex(demographics.questionnaires)
    return {
        "participant_id": f"sub-{label}",
        "age": min(int(age), MAX_AGE) if age is not None else None,
        "sex": sex if sex in ("M", "F", "O") else None,
    }
