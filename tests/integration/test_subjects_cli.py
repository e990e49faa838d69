"""``cohortstream subjects`` and ``cohortstream cohort query`` against FerretDB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cohortstream.cli import main
from cohortstream.settings import Settings


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_link_show_and_refuse_a_conflicting_link(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    record = "redcap:https://redcap.example.org/|42|1001"
    code, out, _ = _run(["subjects", "link", record, "dicom:P-0001"], capsys)
    assert code == 0
    subject_id = out.strip()
    assert subject_id.startswith("S")
    code, out, _ = _run(["subjects", "link", "ehr:mimic-iv|10001", "dicom:P-0001"], capsys)
    assert (code, out.strip()) == (0, _run(["subjects", "link", record, "ehr:mimic-iv|10001"], capsys)[1].strip())

    code, out, _ = _run(["subjects", "show", "dicom:P-0001"], capsys)
    shown = json.loads(out)
    assert code == 0 and set(shown["identifiers"]) == {record, "dicom:P-0001", "ehr:mimic-iv|10001"}

    code, _, err = _run(["subjects", "link", record, "dicom:P-0002"], capsys)
    assert code == 1 and "refused to link" in err and "already has dicom:P-0001" in err
    code, out, _ = _run(["subjects", "conflicts"], capsys)
    assert len(json.loads(out)) == 1

    code, _, err = _run(["subjects", "show", "dicom:NOBODY"], capsys)
    assert code == 1 and "no subject has the identifier dicom:NOBODY" in err
    code, _, err = _run(["subjects", "link", "P-0001", "dicom:P-0001"], capsys)
    assert code == 1 and "must start with one of" in err


def test_cohort_query_file_in_json_out(cli_env: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _run(["subjects", "link", "redcap:https://r.org/|1|7", "dicom:P-7"], capsys)
    query = tmp_path / "query.json"
    query.write_text(json.dumps({}))
    code, out, _ = _run(["cohort", "query", str(query)], capsys)
    assert code == 0 and json.loads(out)["count"] == 1
    query.write_text(json.dumps({"labs": [{"code": "50912", "min": 3, "max": 1}]}))
    code, _, err = _run(["cohort", "query", str(query)], capsys)
    assert code == 1 and "labs.0" in err and "min 3.0 is above max 1.0" in err
