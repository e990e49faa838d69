"""BIDS paths of the export: exact names for the cases the export writes."""

from __future__ import annotations

import pytest

from export.bids import naming


@pytest.mark.parametrize(
    ("datatype", "suffix", "entities", "run", "expected"),
    [
        ("anat", "T1w", {}, None, "sub-ab12/ses-01/anat/sub-ab12_ses-01_T1w.nii.gz"),
        ("anat", "T1w", {}, 2, "sub-ab12/ses-01/anat/sub-ab12_ses-01_run-2_T1w.nii.gz"),
        (
            "func",
            "bold",
            {"acq": "mb4", "task": "rest"},
            None,
            "sub-ab12/ses-01/func/sub-ab12_ses-01_task-rest_acq-mb4_bold.nii.gz",
        ),
        ("anat", "FLAIR", {"acq": "sag"}, 1, "sub-ab12/ses-01/anat/sub-ab12_ses-01_acq-sag_run-1_FLAIR.nii.gz"),
    ],
)
def test_series_nifti_orders_entities_as_bids_does(
    datatype: str, suffix: str, entities: dict[str, str], run: int | None, expected: str
) -> None:
    assert naming.series_nifti("ab12", "01", datatype, suffix, entities, run) == expected


def test_files_beside_and_about_a_scan() -> None:
    nifti = "sub-ab12/ses-01/anat/sub-ab12_ses-01_run-2_T1w.nii.gz"
    assert naming.sidecar_of(nifti) == "sub-ab12/ses-01/anat/sub-ab12_ses-01_run-2_T1w.json"
    assert naming.scan_filename(nifti, "01") == "anat/sub-ab12_ses-01_run-2_T1w.nii.gz"
    assert naming.scans_file("ab12", "01", ".tsv") == "sub-ab12/ses-01/sub-ab12_ses-01_scans.tsv"
    assert naming.sessions_file("ab12", ".json") == "sub-ab12/sub-ab12_sessions.json"
    assert naming.phenotype_file("labs", ".tsv") == "phenotype/labs.tsv"
    assert naming.dseg_stem("ab12", "01", nifti, "T1w", "spleen") == (
        "derivatives/cohortstream-annotations/sub-ab12/ses-01/anat/sub-ab12_ses-01_run-2_desc-spleenT1w_dseg"
    )


def test_session_labels_ordinal_or_shifted_date() -> None:
    assert naming.session_label("ordinal", 3, "2001-02-03", []) == "03"
    assert naming.session_label("date", 1, "2001-02-03", []) == "20010203"
    assert naming.session_label("date", 2, "2001-02-03", ["20010203"]) == "20010203x2"
    assert naming.session_label("date", 4, None, []) == "04"
    assert naming.session_label("date", 4, "n/a", []) == "04"
