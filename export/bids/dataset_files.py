"""The files of the dataset that are not images: ``dataset_description.json``, ``README``,
``CHANGES``, ``participants``, per-subject ``sessions`` and per-session ``scans`` tables,
``phenotype/`` and the derivative's description, written through the
:class:`~export.bids.writer.ExportWriter` (atomic, only when changed, in the manifest).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from cohortstream import __version__
from cohortstream.settings import Settings
from export.bids import naming
from export.bids.participants import PARTICIPANTS_SIDECAR
from export.bids.phenotype import PhenotypeTable
from export.bids.tables import json_bytes, tsv_bytes
from export.bids.writer import ExportWriter

__all__ = [
    "BIDS_VERSION",
    "write_changes",
    "write_dataset_files",
    "write_participants",
    "write_phenotype",
    "write_scans",
    "write_sessions",
]

BIDS_VERSION = "1.10.0"

_SCANS_SIDECAR = {
    "filename": {"Description": "Image file, relative to the session folder."},
    "acq_time": {"Description": "Acquisition time, shifted per participant (see README)."},
}
_SESSIONS_SIDECAR = {
    "session_id": {"Description": "One session per DICOM study."},
    "acq_time": {"Description": "Study date, shifted per participant (see README)."},
}

_README = """\
# cohortstream cohort export

This BIDS dataset was written by `cohortstream export bids` from the cohort's views
(MongoDB) and DICOM archive (Orthanc). Images were converted with dcm2niix.

- Participant labels are keyed pseudonyms; the key and the mapping stay with the
  platform. No names, patient ids, record ids or birth dates are included.
- One session per DICOM study (`ses-01`, `ses-02`, ... in study date order).
- All dates (acq_time, questionnaire dates) are shifted back per participant by a fixed
  number of years plus a keyed jitter; intervals within a participant are kept.
- `phenotype/` holds one table per REDCap instrument, the latest EHR lab values and the
  EHR diagnoses.
- `derivatives/cohortstream-annotations/` holds AI segmentations accepted or corrected
  by a reviewer, in the space of their source image.
"""

_DERIVATIVE_README = """\
# cohortstream accepted annotations

Discrete segmentations (`_dseg.nii.gz`) suggested by the platform's AI models and
accepted (or corrected) by a reviewer, one per reviewed series, on the voxel grid of the
source image in the raw dataset (`../../`). Each has a `_dseg.tsv` label table (index,
name) and a JSON sidecar naming the model and the source image.
"""


def write_participants(writer: ExportWriter, rows: Sequence[dict[str, Any]]) -> None:
    writer.write("participants.tsv", tsv_bytes(["participant_id", "age", "sex"], rows))
    writer.write("participants.json", json_bytes(PARTICIPANTS_SIDECAR))


def write_scans(writer: ExportWriter, label: str, session: str, scans: Iterable[tuple[str, str | None]]) -> None:
    """``scans.tsv`` of a session from ``(nifti relpath, shifted acq_time)`` pairs, and its sidecar."""
    rows = [{"filename": naming.scan_filename(rel, session), "acq_time": acq} for rel, acq in sorted(scans)]
    writer.write(naming.scans_file(label, session, ".tsv"), tsv_bytes(["filename", "acq_time"], rows))
    writer.write(naming.scans_file(label, session, ".json"), json_bytes(_SCANS_SIDECAR))


def write_sessions(writer: ExportWriter, label: str, rows: Sequence[dict[str, Any]]) -> None:
    """``sessions.tsv`` of a subject (``session_id``, ``acq_time``) and its sidecar."""
    writer.write(naming.sessions_file(label, ".tsv"), tsv_bytes(["session_id", "acq_time"], rows))
    writer.write(naming.sessions_file(label, ".json"), json_bytes(_SESSIONS_SIDECAR))


def write_phenotype(writer: ExportWriter, tables: Iterable[PhenotypeTable]) -> None:
    for table in tables:
        writer.write(naming.phenotype_file(table.name, ".tsv"), tsv_bytes(table.columns, table.rows))
        writer.write(naming.phenotype_file(table.name, ".json"), json_bytes(table.sidecar))


def write_dataset_files(writer: ExportWriter, settings: Settings, has_derivatives: bool) -> None:
    """``dataset_description.json`` and ``README``, and the derivative's when it has files."""
    generated = [
        {
            "Name": "cohortstream",
            "Version": __version__,
            "Description": "BIDS export of the cohortstream views and Orthanc (dcm2niix conversion)",
        }
    ]
    description: dict[str, Any] = {
        "Name": settings.bids_dataset_name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "GeneratedBy": generated,
    }
    if settings.bids_dataset_license:
        description["License"] = settings.bids_dataset_license
    if settings.bids_dataset_authors:
        description["Authors"] = list(settings.bids_dataset_authors)
    writer.write("dataset_description.json", json_bytes(description))
    writer.write("README", _README.encode("utf-8"))
    if has_derivatives:
        writer.write(
            f"{naming.derivative_dir()}/dataset_description.json",
            json_bytes(
                {
                    "Name": "cohortstream accepted annotations",
                    "BIDSVersion": BIDS_VERSION,
                    "DatasetType": "derivative",
                    "GeneratedBy": [
                        {**generated[0], "Description": "AI segmentations accepted or corrected on review"}
                    ],
                    "DatasetLinks": {"raw": "../../"},
                    **({"License": description["License"]} if "License" in description else {}),
                    **({"Authors": description["Authors"]} if "Authors" in description else {}),
                }
            ),
        )
        writer.write(f"{naming.derivative_dir()}/README", _DERIVATIVE_README.encode("utf-8"))


def write_changes(writer: ExportWriter) -> None:
    """CHANGES gains an entry only when an export changed something, so re-runs stay no-ops."""
    changed = [p for p in writer.written if p != "CHANGES"] + writer.removed
    entries: list[str] = list(writer.cache.get("changes", []))
    if changed or not entries:
        version = f"1.0.{len(entries)}"
        entries.insert(
            0,
            f"{version} {datetime.now(UTC).date().isoformat()}\n"
            f"  - Exported by cohortstream {__version__}: {len(changed)} files written or removed.\n",
        )
        writer.cache["changes"] = entries
    writer.write("CHANGES", "\n".join(entries).encode("utf-8"))
