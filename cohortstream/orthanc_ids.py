"""Orthanc's identifiers, computed the way Orthanc computes them.

Orthanc names each resource by the SHA-1 of its DICOM identifiers (PatientID, then
Study/Series/SOP Instance UIDs joined with ``|``), printed as five dash-separated groups
of eight hex digits. Knowing them without asking Orthanc lets a sink check whether an
instance is already stored (idempotence after the staged file is gone) and lets the
views link to Orthanc even before the archive agent has run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["OrthancIds", "orthanc_hash", "orthanc_ids"]


def orthanc_hash(*identifiers: str) -> str:
    """Orthanc's resource id for the ``|``-joined identifiers."""
    digest = hashlib.sha1("|".join(identifiers).encode("utf-8")).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


@dataclass(frozen=True)
class OrthancIds:
    """Orthanc resource ids of one instance and its parents."""

    patient: str
    study: str
    series: str
    instance: str


def orthanc_ids(patient_id: str, study_uid: str, series_uid: str, sop_uid: str) -> OrthancIds:
    """The ids Orthanc gives an instance with these DICOM identifiers."""
    return OrthancIds(
        patient=orthanc_hash(patient_id),
        study=orthanc_hash(patient_id, study_uid),
        series=orthanc_hash(patient_id, study_uid, series_uid),
        instance=orthanc_hash(patient_id, study_uid, series_uid, sop_uid),
    )
