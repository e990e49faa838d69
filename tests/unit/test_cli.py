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


def test_bad_settings_exit_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
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


# --- a quiet CLI: library INFO off for one-shot commands, -v turns it on -----------------


def _log_one_line_each() -> None:
    import logging

    logging.getLogger("httpx").info("HTTP Request: GET http://orthanc/instances/1 200 OK")
    logging.getLogger("aiokafka.conn").info("connected to broker")
    logging.getLogger("httpx").warning("library warning stays visible")
    logging.getLogger("export.bids.dataset").info("our own info line")


def test_one_shot_commands_hide_library_info_logs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COHORTSTREAM_LOG_LEVEL", "INFO")
    assert main(["schemas"]) == 0
    capsys.readouterr()
    _log_one_line_each()
    err = capsys.readouterr().err
    assert "HTTP Request" not in err and "connected to broker" not in err
    assert "library warning stays visible" in err
    assert "our own info line" in err


def test_verbose_shows_library_info_logs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COHORTSTREAM_LOG_LEVEL", "INFO")
    for flag in ("-v", "--verbose"):
        assert main([flag, "schemas"]) == 0
        capsys.readouterr()
        _log_one_line_each()
        err = capsys.readouterr().err
        assert "HTTP Request" in err and "connected to broker" in err and "our own info line" in err


@pytest.mark.parametrize(
    ("argv", "service"),
    [
        (["worker"], True),
        (["worker", "--lane", "ehr-views"], True),
        (["dicom-scp"], True),
        (["api"], True),
        (["redcap", "webhook"], True),
        (["annotate", "worker"], True),
        (["redcap", "sync", "--project", "1"], False),
        (["ehr", "load", "x"], False),
        (["export", "bids", "out"], False),
        (["staging", "sweep"], False),
        (["annotate", "request", "1.2.3"], False),
        (["topics", "list"], False),
    ],
)
def test_services_keep_their_library_logs(argv: list[str], service: bool) -> None:
    from cohortstream.cli import _is_service, _parser

    assert _is_service(_parser().parse_args(argv)) is service


def test_the_projects_own_variables_raise_no_typo_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COHORTSTREAM_CACHE_DIR", "/tmp/cache")  # the Makefile exports it
    monkeypatch.setenv("COHORTSTREAM_STACK_DIR", "/tmp/stack")
    monkeypatch.setenv("COHORTSTREAM_TEST_ARTEFACTS", "/tmp/artefacts")
    monkeypatch.setenv("COHORTSTREAM_KAFKA_BOOTSTRAPP", "typo:9092")
    assert main(["schemas"]) == 0
    err = capsys.readouterr().err
    assert "COHORTSTREAM_KAFKA_BOOTSTRAPP" in err
    assert "COHORTSTREAM_CACHE_DIR" not in err
    assert "COHORTSTREAM_STACK_DIR" not in err
    assert "COHORTSTREAM_TEST_ARTEFACTS" not in err


def test_log_progress_moves_a_bar_from_done_total_records(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from cohortstream.logs import LogProgress

    logger = logging.getLogger("tests.progress.source")
    logger.setLevel(logging.INFO)
    with LogProgress("tests.progress.source", desc="sync", unit=" records", enabled=True) as bar:
        logger.info("batch", extra={"done": 50, "total": 200})
        logger.info("no counts here")
        logger.info("batch", extra={"done": 200, "total": 200})
        assert bar._bar is not None and bar._bar.n == 200 and bar._bar.total == 200
    assert bar not in logger.handlers
    assert "200/200" in capsys.readouterr().err
    with LogProgress("tests.progress.source", desc="sync", unit=" records", enabled=False) as off:
        logger.info("batch", extra={"done": 1, "total": 2})
        assert off._bar is None


# --- the tools the CLI needs, and tests that cannot pass by accident ---------------------

REPO = Path(__file__).resolve().parents[2]


def test_make_up_and_the_test_runner_install_tools_with_one_script() -> None:
    script = (REPO / "deploy" / "install_tools.sh").read_text(encoding="utf-8")
    assert "dcm2niix" in script and "dcmtk" in script and "chromium" in script and "dicom3tools" in script
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    up_line = next(line for line in makefile.splitlines() if line.startswith("up:"))
    assert "tools" in up_line.split(":", 1)[1].split(), "make up must depend on the tools target"
    assert "deploy/install_tools.sh cli" in makefile
    run = (REPO / "tests" / "run.sh").read_text(encoding="utf-8")
    assert "deploy/install_tools.sh test" in run
    assert "apt-get" not in run, "the apt logic lives in deploy/install_tools.sh only"
    assert "-rs" in run


def test_an_integration_test_that_skips_fails_the_run(tmp_path: Path) -> None:
    """The hook in tests/integration/conftest.py, run on a copy in a scratch project."""
    import os
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "tests" / "integration"
    folder.mkdir(parents=True)
    shutil.copy(REPO / "tests" / "integration" / "conftest.py", folder / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (folder / "test_tool.py").write_text(
        "import pytest\n\ndef test_runs():\n    pass\n\n"
        "def test_needs_a_tool():\n    pytest.skip('dcm2niix missing')\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if k != "COHORTSTREAM_TEST_ALLOW_SKIPS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/integration"]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 integration test(s) skipped" in run.stdout and "dcm2niix missing" in run.stdout
    allowed = subprocess.run(
        command,
        cwd=tmp_path,
        env={**env, "COHORTSTREAM_TEST_ALLOW_SKIPS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    (folder / "test_tool.py").write_text("def test_runs():\n    pass\n", encoding="utf-8")
    clean = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stdout + clean.stderr
