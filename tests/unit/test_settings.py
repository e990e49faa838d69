"""Settings: typed, frozen, one env var per field, documented in docs/settings.md from the class."""

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

SETTINGS_DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


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
def test_bad_values_are_refused_with_a_message(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=message):
        Settings.load()


def test_unknown_prefixed_variables_are_reported_as_typos() -> None:
    environ = {
        "COHORTSTREAM_KAFKA_BOOTSTRAPP": "x",
        "COHORTSTREAM_LOG_LEVEL": "INFO",
        "COHORTSTREAM_STACK_DIR": "/s",
        "HOME": "/root",
    }
    assert unknown_env_vars(environ) == ["COHORTSTREAM_KAFKA_BOOTSTRAPP"]


def test_the_projects_own_variables_are_not_reported_as_typos() -> None:
    # The Makefile exports COHORTSTREAM_CACHE_DIR to every command it runs; the CLI reads
    # COHORTSTREAM_ENV_FILE; deploy/stack.sh reads COHORTSTREAM_STACK_*; tests/run.sh and
    # the tests read COHORTSTREAM_TEST_*. None of them is a setting, none is a typo.
    environ = {
        "COHORTSTREAM_CACHE_DIR": "/home/u/.cache/cohortstream",
        "COHORTSTREAM_ENV_FILE": ".stack/stack.env",
        "COHORTSTREAM_STACK_MONGO_PORT": "27017",
        "COHORTSTREAM_STACK_SERVICES": "kafka mongo",
        "COHORTSTREAM_TEST_STACK_DIR": "/tmp/s",
        "COHORTSTREAM_TEST_ARTEFACTS": "/tmp/a",
        "COHORTSTREAM_CACHE_DIRR": "/typo",
        "COHORTSTREAM_STACKDIR": "/typo",
    }
    assert unknown_env_vars(environ) == ["COHORTSTREAM_CACHE_DIRR", "COHORTSTREAM_STACKDIR"]


def test_every_prefixed_variable_the_repository_uses_is_a_setting_or_known() -> None:
    """Scan the Makefile, scripts and code for COHORTSTREAM_* names: each must be a setting
    or one of the project's own variables, so no service start warns about them."""
    import re

    root = SETTINGS_DOC.parents[1]
    sources = [
        root / "Makefile",
        *(root / "deploy").rglob("*.sh"),
        *(root / "tests").rglob("*.sh"),
        *(root / "tests").rglob("conftest.py"),
    ]
    names: set[str] = set()
    for path in sources:
        names.update(re.findall(r"\b(COHORTSTREAM_[A-Z0-9_]*[A-Z0-9])\b", path.read_text(encoding="utf-8")))
    names = {name for name in names if not name.endswith("_")}
    assert names, "no COHORTSTREAM_ variables found: the scan is broken"
    assert unknown_env_vars({name: "x" for name in names}) == []


def test_docs_settings_table_is_generated_from_the_class() -> None:
    table = settings_markdown_table()
    for name in Settings.model_fields:
        assert f"`{env_var_name(name)}`" in table
    text = SETTINGS_DOC.read_text(encoding="utf-8")
    start, end = "<!-- settings-table:start -->\n", "<!-- settings-table:end -->"
    assert start in text and end in text, f"{SETTINGS_DOC} lost its settings-table markers"
    generated = text[text.index(start) + len(start) : text.index(end)]
    assert generated == table, "docs/settings.md's settings table is stale: regenerate it with `make settings-table`"


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
