"""A missing dcm2niix stops the BIDS export before it fetches anything, with a one-line
reason that names the setting and how to install it; the CLI exits non-zero with it.

The export's reads (views, Orthanc) are replaced by fakes here: the integration test
(tests/integration/test_bids_export.py) runs the whole export on the real stack, and
pins that an export with nothing left to convert still needs no dcm2niix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import SecretStr

import export.bids.dataset as dataset
from cohortstream import cli_export
from cohortstream.cli import main
from cohortstream.cohort_query import CohortQuery
from cohortstream.settings import Settings
from export.bids import Dcm2niixNotFoundError, export_bids
from export.bids.imaging import require_dcm2niix
from export.bids.selection import SelectedSubject

MISSING = "/nonexistent/dcm2niix"


class _Views:
    """One subject with one study holding one MR T1w series."""

    def __init__(self, settings: Settings) -> None:
        self.opened = self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.closed = True

    async def subject_ids(self, query: CohortQuery | None, subjects: Sequence[str] | None) -> list[str]:
        return ["S1"]

    async def subject(self, subject_id: str) -> SelectedSubject:
        return SelectedSubject(subject_id, ["PID1"], [], [])

    async def studies(self, patient_ids: Sequence[str]) -> list[dict[str, Any]]:
        return [{"_id": "1.2.3", "patient_id": "PID1", "study_date": "2021-03-04"}]

    async def series(self, study_instance_uid: str) -> list[dict[str, Any]]:
        return [
            {
                "_id": "1.2.3.4",
                "study_instance_uid": study_instance_uid,
                "patient_id": "PID1",
                "modality": "MR",
                "series_description": "T1w MPRAGE",
                "instance_count": 12,
            }
        ]

    async def reviewed_annotations(self, series_instance_uid: str) -> list[dict[str, Any]]:
        return []


class _Orthanc:
    fetched: ClassVar[list[str]] = []

    def __init__(self, settings: Settings) -> None:
        pass

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def series_files(self, series: dict[str, Any]) -> list[bytes]:
        _Orthanc.fetched.append(series["_id"])
        raise AssertionError("fetched a series although dcm2niix is missing")

    async def seg_file(self, sop_instance_uid: str) -> bytes:
        raise AssertionError("fetched a SEG although dcm2niix is missing")


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> type[_Orthanc]:
    _Orthanc.fetched = []
    monkeypatch.setattr(dataset, "ViewSelection", _Views)
    monkeypatch.setattr(dataset, "OrthancFetcher", _Orthanc)
    return _Orthanc


def test_the_reason_is_one_line_naming_the_setting_and_the_install() -> None:
    with pytest.raises(Dcm2niixNotFoundError) as info:
        require_dcm2niix(MISSING)
    message = str(info.value)
    assert "\n" not in message
    assert MISSING in message and "COHORTSTREAM_BIDS_DCM2NIIX" in message and "apt-get install dcm2niix" in message


def test_an_installed_dcm2niix_is_found_by_name_or_path(tmp_path: Path) -> None:
    tool = tmp_path / "dcm2niix"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert require_dcm2niix(str(tool)) == str(tool)


async def test_export_stops_before_fetching_when_dcm2niix_is_missing(fakes: type[_Orthanc], tmp_path: Path) -> None:
    settings = Settings(bids_dcm2niix=MISSING, bids_pseudonym_key=SecretStr("k" * 32))
    with pytest.raises(Dcm2niixNotFoundError, match="COHORTSTREAM_BIDS_DCM2NIIX"):
        await export_bids(settings, tmp_path / "out")
    assert fakes.fetched == []
    assert not list((tmp_path / "out").rglob("*.nii.gz"))


def test_cli_exits_non_zero_with_the_one_line_reason(
    fakes: type[_Orthanc], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COHORTSTREAM_BIDS_DCM2NIIX", MISSING)
    monkeypatch.setenv("COHORTSTREAM_BIDS_PSEUDONYM_KEY", "k" * 32)

    async def audited_selection(*args: object) -> list[str]:
        return []  # no MongoDB or Kafka here; tests/integration/test_audit_trail.py runs the real audit

    monkeypatch.setattr(cli_export, "_audited_selection", audited_selection)
    assert main(["export", "bids", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no report: nothing was exported
    (line,) = [text for text in captured.err.splitlines() if text.startswith("cohortstream:")]
    assert "dcm2niix executable" in line and "COHORTSTREAM_BIDS_DCM2NIIX" in line
    assert fakes.fetched == []
