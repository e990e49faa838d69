"""Credentials never reach a log line: URL passwords are masked, known secrets vanish."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from cohortstream.logs import configure_logging, logging_dict_config
from cohortstream.redact import mask_url_credentials, settings_secrets
from cohortstream.settings import Settings

URL = "mongodb://cohortstream:Pa55-word!x@mongo:27017/?authSource=admin"


@pytest.mark.parametrize(
    "text, expected",
    [
        (URL, "mongodb://cohortstream:***@mongo:27017/?authSource=admin"),
        ("to mongodb+srv://u:p%40ss@h/db now", "to mongodb+srv://u:***@h/db now"),
        ("https://redcap.example.org/api/", "https://redcap.example.org/api/"),
        ("mongodb://127.0.0.1:27017/", "mongodb://127.0.0.1:27017/"),
        ('"POST /redcap/trigger?secret=a-guess HTTP/1.1" 403', '"POST /redcap/trigger?secret=*** HTTP/1.1" 403'),
        ("/x?a=1&token=abc&b=2", "/x?a=1&token=***&b=2"),
    ],
)
def test_connection_strings_lose_their_password(text: str, expected: str) -> None:
    assert mask_url_credentials(text) == expected


def test_the_secrets_of_the_settings_are_collected() -> None:
    settings = Settings(
        mongo_url=URL,
        orthanc_password="orthanc-pw-1",
        kafka_sasl_password="kafka-pw-1",
        redcap_projects=[{"redcap_url": "https://r.example/", "project_id": "1", "api_token": "TOKEN123456"}],
    )
    secrets = settings_secrets(settings)
    for value in ("orthanc-pw-1", "kafka-pw-1", "TOKEN123456", "Pa55-word!x", URL):
        assert value in secrets


@pytest.fixture
def captured(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    yield stream
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_no_log_line_shows_a_secret(captured: io.StringIO, log_format: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(mongo_url=URL, orthanc_password="orthanc-pw-1", log_format=log_format)
    monkeypatch.setattr("sys.stderr", captured)
    configure_logging(settings)
    log = logging.getLogger("pymongo.test")  # a library's record, not only ours
    log.warning("cannot reach %s", URL, extra={"url": URL})
    try:
        raise ConnectionError(f"auth failed for orthanc-pw-1 at {URL}")
    except ConnectionError:
        log.exception("gave up")
    text = captured.getvalue()
    assert "Pa55-word!x" not in text and "orthanc-pw-1" not in text
    assert "cohortstream:***@mongo" in text
    if log_format == "json":
        assert [json.loads(line)["level"] for line in text.splitlines() if line.startswith("{")] == ["WARNING", "ERROR"]


def test_the_faust_logging_config_redacts_too() -> None:
    config = logging_dict_config(Settings(orthanc_password="orthanc-pw-1"))
    assert config["handlers"]["stderr"]["filters"] == ["redact"]
    assert "orthanc-pw-1" in config["filters"]["redact"]["secrets"]
