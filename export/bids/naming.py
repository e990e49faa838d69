"""BIDS paths of everything the export writes, relative to the dataset root.

Why not pybids' ``bids.layout.writing.build_path``: it fits the job (entities + a path
pattern), but ``pybids`` 0.22 requires pandas, scipy, SQLAlchemy, formulaic, the legacy
Python ``bids-validator``, ``bidsschematools``, ``universal_pathlib``, ``num2words`` and
``frozendict`` (about 260 MB installed beside what we already have), and importing
``bids.layout.writing`` imports ``bids.layout`` with ``BIDSLayout`` and SQLAlchemy (420
modules, 0.33 s) for one function. We would still write the path patterns ourselves
(pybids' defaults know nothing of our ``desc-<model><suffix>_dseg`` derivative). The
names below are the handful this export writes, each in one place and unit-tested.

Entity order follows the BIDS specification's entity table: ``sub``, ``ses``, ``task``,
``acq``, ``run``, then ``desc``; labels are already alphanumeric
(:func:`export.bids.labels.bids_label`).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "DERIVATIVE_NAME",
    "ENTITY_ORDER",
    "derivative_dir",
    "dseg_stem",
    "participant_id",
    "phenotype_file",
    "scan_filename",
    "scans_file",
    "series_nifti",
    "session_id",
    "session_label",
    "sessions_file",
    "sidecar_of",
]

DERIVATIVE_NAME = "cohortstream-annotations"
"""Folder under ``derivatives/`` of the reviewed segmentations."""

ENTITY_ORDER = ("task", "acq")
"""Entities a mapping rule may set, in the order BIDS writes them (after sub and ses)."""


def participant_id(label: str) -> str:
    return f"sub-{label}"


def session_id(session: str) -> str:
    return f"ses-{session}"


def session_label(mode: str, index: int, shifted_date: str | None, taken: list[str]) -> str:
    """``ses-`` label of a subject's ``index``-th study (1-based, in study date order).

    ``mode`` ``date`` uses the shifted study date (``YYYY-MM-DD`` → ``YYYYMMDD``, with
    ``x<index>`` appended when two studies share a day); otherwise, or without a usable
    date, the two-digit ordinal."""
    if mode == "date" and shifted_date and shifted_date != "n/a":
        label = shifted_date.replace("-", "")
        return label if label not in taken else f"{label}x{index}"
    return f"{index:02d}"


def series_nifti(
    label: str, session: str, datatype: str, suffix: str, entities: Mapping[str, str], run: int | None
) -> str:
    """``sub-<label>/ses-<s>/<datatype>/sub-<label>_ses-<s>[_task-][_acq-][_run-<n>]_<suffix>.nii.gz``;
    ``run`` is None when the name is unique in the session."""
    parts = [participant_id(label), session_id(session)]
    parts += [f"{name}-{entities[name]}" for name in ENTITY_ORDER if name in entities]
    if run is not None:
        parts.append(f"run-{run}")
    return f"{participant_id(label)}/{session_id(session)}/{datatype}/{'_'.join(parts)}_{suffix}.nii.gz"


def sidecar_of(nifti_relpath: str) -> str:
    """The JSON sidecar beside a ``.nii.gz``."""
    return nifti_relpath.removesuffix(".nii.gz") + ".json"


def scan_filename(nifti_relpath: str, session: str) -> str:
    """A scan's path relative to its session folder (the ``filename`` column of ``scans.tsv``)."""
    return nifti_relpath.split(f"{session_id(session)}/", 1)[1]


def scans_file(label: str, session: str, extension: str) -> str:
    """``sub-<label>/ses-<s>/sub-<label>_ses-<s>_scans<extension>`` (``.tsv`` or ``.json``)."""
    base = participant_id(label)
    return f"{base}/{session_id(session)}/{base}_{session_id(session)}_scans{extension}"


def sessions_file(label: str, extension: str) -> str:
    """``sub-<label>/sub-<label>_sessions<extension>``."""
    base = participant_id(label)
    return f"{base}/{base}_sessions{extension}"


def phenotype_file(table: str, extension: str) -> str:
    return f"phenotype/{table}{extension}"


def derivative_dir() -> str:
    return f"derivatives/{DERIVATIVE_NAME}"


def dseg_stem(label: str, session: str, source_nifti: str, suffix: str, model: str) -> str:
    """Path without extension of the segmentation of ``source_nifti`` by ``model``:
    ``derivatives/<name>/sub-<label>/ses-<s>/anat/<source entities>_desc-<model><suffix>_dseg``."""
    stem = source_nifti.rsplit("/", 1)[1].removesuffix(f"_{suffix}.nii.gz")
    return f"{derivative_dir()}/{participant_id(label)}/{session_id(session)}/anat/{stem}_desc-{model}{suffix}_dseg"
