"""Settings: typed, frozen, one env var per field, documented in the README from the class."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cohortstream.errors import ConfigurationError
from cohortstream.settings import (
    Settings,
    env_var_name,
    settings_markdown_table,
    unknown_env_vars,
)

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(env_var_name(name), raising=False)


def test_every_setting_comes_from_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COHORTSTREAM_KAFKA_BOOTSTRAP", "broker-a:9092, broker-b:9093")
    monkeypatch.setenv("COHORTSTREAM_ORTHANC_PASSWORD", "s3cret")
    monkeypatch.setenv("COHORTSTREAM_TOPIC_PARTITIONS", "6")
    settings = Settings.load()
    assert settings.kafka_bootstrap_servers == ["broker-a:9092", "broker-b:9093"]
    assert settings.orthanc_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.topic_partitions == 6


def test_settings_are_frozen() -> None:
    settings = Settings.load()
    with pytest.raises(ValidationError, match="frozen"):
        settings.kafka_bootstrap = "elsewhere:9092"  # type: ignore[misc]


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "stack.env"
    env_file.write_text("COHORTSTREAM_MONGO_DATABASE=from_file\nCOHORTSTREAM_ORTHANC_AET=FILEAET\n")
    monkeypatch.setenv("COHORTSTREAM_ORTHANC_AET", "ENVAET")
    settings = Settings.load(env_file)
    assert settings.mongo_database == "from_file"
    assert settings.orthanc_aet == "ENVAET"


def test_a_missing_env_file_is_an_error_not_silently_ignored(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        Settings.load(tmp_path / "nope.env")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("COHORTSTREAM_KAFKA_BOOTSTRAP", "localhost", "not host:port"),
        ("COHORTSTREAM_ORTHANC_URL", "127.0.0.1:8042", "must start with http"),
        ("COHORTSTREAM_LOG_LEVEL", "LOUD", "DEBUG"),
        ("COHORTSTREAM_ORTHANC_DICOM_PORT", "70000", "less than or equal"),
    ],
)
def test_bad_values_are_refused_with_a_message(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=message):
        Settings.load()


def test_unknown_prefixed_variables_are_reported_as_typos() -> None:
    environ = {"COHORTSTREAM_KAFKA_BOOTSTRAPP": "x", "COHORTSTREAM_LOG_LEVEL": "INFO", "COHORTSTREAM_STACK_DIR": "/s", "HOME": "/root"}
    assert unknown_env_vars(environ) == ["COHORTSTREAM_KAFKA_BOOTSTRAPP"]


def test_readme_settings_table_is_generated_from_the_class() -> None:
    table = settings_markdown_table()
    for name in Settings.model_fields:
        assert f"`{env_var_name(name)}`" in table
    assert table in README.read_text(encoding="utf-8"), (
        "README settings table is stale: regenerate with `cohortstream settings --markdown`"
    )


def test_settings_environment_rebuilds_the_same_settings_in_a_child_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from cohortstream.settings import settings_environment

    original = Settings(
        redcap_projects=[{"redcap_url": "https://redcap.example.org", "project_id": "12", "api_token": "T0KEN"}],
        subject_link_rules=[{"redcap_field": "mrn", "target": "dicom_patient_id"}],
        dicom_scp_allowed_aets=["MODALITY1", "PACS"],
        orthanc_password="s3cret",
    )
    for name, value in settings_environment(original).items():
        monkeypatch.setenv(name, value)
    assert Settings() == original
    assert Settings().redcap_projects[0].api_token.get_secret_value() == "T0KEN"
