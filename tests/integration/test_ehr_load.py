"""`cohortstream ehr load` against the real Kafka: every good row is an EhrRecord, every
bad row a dead letter naming its file:line, and a second load repeats the same event ids."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from cohortstream.admin import ensure_topics
from cohortstream.cli import main
from cohortstream.events import DeadLetter, EhrRecord, Event
from cohortstream.settings import Settings
from cohortstream.synthetic_ehr import write_fhir, write_mimic
from tests.kafka_probe import read_topic


async def read_events(settings: Settings, name: str, expected: int) -> list[Event]:
    """Every event on the topic once ``expected`` arrived (and no extra)."""
    return [r.event for r in await read_topic(settings, name, expected)]


@pytest.fixture
def cli_env(stack_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Make ``main([...])`` use this test's topics (the environment wins over the env file)."""
    monkeypatch.setenv("COHORTSTREAM_TOPIC_PREFIX", stack_settings.topic_prefix)
    monkeypatch.setenv("COHORTSTREAM_LOG_LEVEL", "WARNING")
    return stack_settings


async def test_load_twice_publishes_records_dead_letters_and_same_ids(
    cli_env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = cli_env
    await ensure_topics(settings)
    root = tmp_path / "extract"
    # Default size: hundreds of subjects, tens of thousands of lab rows, as MIMIC ships them (gzip).
    mimic = write_mimic(root / "mimic", seed=21, compress=True, bad_rows=8)
    assert mimic.rows["patients"] >= 300 and mimic.rows["labevents"] >= 10_000
    fhir = write_fhir(root / "fhir", seed=21, n_patients=3, bad_resources=5)
    good = sum(mimic.good_rows(t) for t in ("patients", "admissions", "labevents", "diagnoses_icd")) + sum(
        fhir.resources.values()
    )
    bad_locations = sorted(
        [f"mimic/{b.location}" for b in mimic.bad_rows] + [f"fhir/{b.location}" for b in fhir.bad_rows]
    )

    # The CLI runs its own event loop: call it from a thread, as a shell would run it.
    assert await asyncio.to_thread(main, ["ehr", "load", str(root), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert f"{good:>9}" in out.splitlines()[-1] and "TOTAL" in out
    for location in bad_locations:
        assert f"bad row {location}: " in err

    records = await read_events(settings, "ehr.record", good)
    letters = await read_events(settings, "dead-letter", len(bad_locations))
    assert len(records) == good and all(isinstance(r, EhrRecord) for r in records)
    assert sorted(d.source_location for d in letters if isinstance(d, DeadLetter)) == bad_locations
    for letter in letters:
        assert isinstance(letter, DeadLetter) and letter.producer == "ehr-loader"
        assert letter.value and letter.reason and letter.source_topic is None

    # Loading again: the same rows, recognisable by the same event ids.
    assert await asyncio.to_thread(main, ["ehr", "load", str(root), "--no-progress"]) == 0
    again = await read_events(settings, "ehr.record", 2 * good)
    assert len(again) == 2 * good
    ids: dict[tuple[str, str], set[uuid.UUID]] = {}
    for record in again:
        assert isinstance(record, EhrRecord)
        ids.setdefault((record.source, record.source_row_id), set()).add(record.event_id)
    assert len(ids) == good and all(len(v) == 1 for v in ids.values())
    letters_again = await read_events(settings, "dead-letter", 2 * len(bad_locations))
    assert len({d.event_id for d in letters_again}) == len(bad_locations)


async def test_kafka_down_exits_non_zero(cli_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mimic(tmp_path / "m", seed=1, n_subjects=2, labs_per_admission=(1, 2))
    monkeypatch.setenv("COHORTSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("COHORTSTREAM_KAFKA_REQUEST_TIMEOUT_S", "5")
    assert (
        await asyncio.wait_for(asyncio.to_thread(main, ["ehr", "load", str(tmp_path / "m"), "--no-progress"]), 60) == 1
    )
