"""``cohortstream redcap ...`` commands and project selection (no services)."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from cohortstream.cli import main
from cohortstream.settings import RedcapProject
from producers.redcap.errors import RedcapError
from producers.redcap.sync import select_project

PROJECTS = [
    RedcapProject(redcap_url="https://a.example.org/", project_id="12", api_token=SecretStr("A" * 32)),
    RedcapProject(redcap_url="https://b.example.org/redcap/", project_id="12", api_token=SecretStr("B" * 32)),
    RedcapProject(redcap_url="https://b.example.org/redcap/", project_id="13", api_token=SecretStr("C" * 32)),
]


def test_redcap_help_lists_sync_and_webhook(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["redcap", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "sync" in out and "webhook" in out


def test_sync_of_an_unconfigured_project_fails_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("COHORTSTREAM_ENV_FILE", raising=False)
    monkeypatch.setenv(
        "COHORTSTREAM_REDCAP_PROJECTS",
        json.dumps([{"redcap_url": "https://a.example.org", "project_id": "12", "api_token": "secret-token"}]),
    )
    assert main(["redcap", "sync", "--project", "99"]) == 1
    err = capsys.readouterr().err
    assert "99" in err and "secret-token" not in err


def test_select_project_by_id_and_server() -> None:
    assert select_project(PROJECTS, "13").api_token.get_secret_value() == "C" * 32
    assert select_project(PROJECTS, "12", "HTTPS://B.example.org/redcap").api_token.get_secret_value() == "B" * 32
    with pytest.raises(RedcapError, match="several servers"):
        select_project(PROJECTS, "12")
    with pytest.raises(RedcapError, match="not in"):
        select_project(PROJECTS, "12", "https://c.example.org/")
