"""The console entry point, called in-process as ``main([...])``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cohortstream.cli import main
from cohortstream.codec import EventCodec
from tests.examples import example_events

SUBCOMMANDS = ("settings", "schemas", "topics", "events", "staging", "worker", "dicom-scp")


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in SUBCOMMANDS:
        assert command in out


def test_settings_never_prints_secrets(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COHORTSTREAM_ORTHANC_PASSWORD", "hunter2")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert json.loads(out)["orthanc_password"] == "**********"


def test_bad_settings_exit_2_naming_the_variable(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COHORTSTREAM_TOPIC_PARTITIONS", "zero")
    assert main(["settings"]) == 2
    assert "COHORTSTREAM_TOPIC_PARTITIONS" in capsys.readouterr().err


def test_events_decode_prints_the_event_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = tmp_path / "value.bin"
    message.write_bytes(EventCodec().encode_event(example_events()[0]))
    assert main(["events", "decode", str(message)]) == 0
    decoded = json.loads(capsys.readouterr().out)
    assert decoded["schema"] == "org.cohortstream.events.DicomInstanceReceived"
    assert decoded["event"]["study_instance_uid"] == "1.2.826.0.1.3680043.8.498.1"


def test_events_decode_of_garbage_fails_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = tmp_path / "value.bin"
    message.write_bytes(b'{"not": "avro"}')
    assert main(["events", "decode", str(message)]) == 1
    assert "single-object marker" in capsys.readouterr().err


def test_schemas_lists_fingerprints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemas"]) == 0
    out = capsys.readouterr().out
    assert "org.cohortstream.events.AnnotationRequested\tv1\td44a7f993f01f03a" in out
