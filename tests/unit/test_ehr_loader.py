"""The loader without Kafka: discovery, batching, dead letters, file failures, report."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from cohortstream.events import DeadLetter, EhrRecord, Event
from cohortstream.publisher import PublishError
from cohortstream.synthetic_ehr import write_fhir, write_mimic
from producers.ehr.loader import discover, load_extract

SAMPLE = Path(__file__).parents[1] / "data" / "ehr"


class ListSink:
    """Collects what the loader would publish, batch by batch."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.batches: list[list[tuple[Event, str]]] = []
        self.fail_after = fail_after

    async def publish_many(self, items: Sequence[tuple[Event, str]]) -> None:
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise PublishError("Kafka is down")
        self.batches.append(list(items))

    @property
    def items(self) -> list[tuple[Event, str]]:
        return [item for batch in self.batches for item in batch]


async def test_sample_directory_loads_everything() -> None:
    sink = ListSink()
    report = await load_extract(SAMPLE, sink)
    kinds = report.by_kind()
    assert kinds["patients"].published == 3 and kinds["labevents"].published == 53
    assert kinds["admissions"].published == 7 and kinds["diagnoses_icd"].published == 29
    assert kinds["fhir"].skipped == 2 and kinds["fhir"].dead_lettered == 0
    assert report.totals().dead_lettered == 0 and report.ignored == []
    events = [e for e, _ in sink.items]
    assert all(isinstance(e, EhrRecord) for e in events)
    assert {e.source for e in events} == {"mimic-iv", "fhir"}  # type: ignore[union-attr]
    assert all(key == f"{e.source}/{e.subject_id}" for e, key in sink.items)  # type: ignore[attr-defined]
    assert {e.source_file for e in events if e.source == "mimic-iv"} == {  # type: ignore[union-attr]
        "mimic/hosp/patients.csv",
        "mimic/hosp/admissions.csv",
        "mimic/hosp/labevents.csv",
        "mimic/hosp/diagnoses_icd.csv",
    }
    # Patients before their facts.
    order = [r.file for r in report.files]
    assert order.index("mimic/hosp/patients.csv") < order.index("mimic/hosp/labevents.csv")
    summary = report.summary()
    assert "labevents" in summary and "TOTAL" in summary and "per table:" in summary


async def test_loading_twice_gives_the_same_event_ids() -> None:
    first, second = ListSink(), ListSink()
    await load_extract(SAMPLE, first, batch_size=7)
    await load_extract(SAMPLE, second, batch_size=1000)
    assert [e.event_id for e, _ in first.items] == [e.event_id for e, _ in second.items]
    assert len({e.event_id for e, _ in first.items}) == len(first.items)
    assert max(len(b) for b in first.batches) <= 7


async def test_bad_rows_become_dead_letters_with_file_and_line(tmp_path: Path) -> None:
    mimic = write_mimic(
        tmp_path / "x" / "mimic", seed=4, n_subjects=30, labs_per_admission=(5, 10), compress=True, bad_rows=8
    )
    fhir = write_fhir(tmp_path / "x" / "fhir", seed=4, n_patients=3, bad_resources=5)
    sink = ListSink()
    report = await load_extract(tmp_path / "x", sink, source="site-a")
    letters = [(e, k) for e, k in sink.items if isinstance(e, DeadLetter)]
    expected = [f"mimic/{b.location}" for b in mimic.bad_rows] + [f"fhir/{b.location}" for b in fhir.bad_rows]
    assert sorted(e.source_location for e, _ in letters) == sorted(expected)  # type: ignore[attr-defined]
    assert report.totals().dead_lettered == len(expected)
    assert report.totals().published == sum(
        mimic.good_rows(t) for t in ("patients", "admissions", "labevents", "diagnoses_icd")
    ) + sum(fhir.resources.values())
    assert {e.source for e, _ in sink.items if isinstance(e, EhrRecord)} == {"site-a"}
    for letter, key in letters:
        assert isinstance(letter, DeadLetter) and letter.value and letter.reason
        assert key == (letter.key.decode() if letter.key else letter.source_location)
    bad_locations = [b.location for f in report.files for b in f.bad_rows]
    assert sorted(bad_locations) == sorted(expected)


async def test_a_file_missing_a_column_fails_alone(tmp_path: Path) -> None:
    shutil.copytree(SAMPLE / "mimic", tmp_path / "mimic")
    admissions = tmp_path / "mimic" / "hosp" / "admissions.csv"
    lines = admissions.read_text().splitlines()
    admissions.write_text(
        "\n".join(line.split(",", 2)[0] + "," + line.split(",", 2)[2] for line in lines) + "\n"
    )  # drop hadm_id
    (tmp_path / "mimic" / "hosp" / "notes.txt").write_text("not a table")
    sink = ListSink()
    report = await load_extract(tmp_path / "mimic", sink)
    failed = next(r for r in report.files if r.kind == "admissions")
    assert failed.error is not None and "hosp/admissions.csv" in failed.error and "hadm_id" in failed.error
    assert failed.published == 0 and failed.dead_lettered == 1
    letter = next(e for e, _ in sink.items if isinstance(e, DeadLetter))
    assert letter.source_location == "hosp/admissions.csv" and letter.error_type == "MissingColumnError"
    assert letter.value == (lines[0].split(",", 2)[0] + "," + lines[0].split(",", 2)[2] + "\n").encode()
    assert report.by_kind()["labevents"].published == 53  # the other files still loaded
    assert report.ignored == ["hosp/notes.txt"]
    assert "FILE FAILED hosp/admissions.csv" in report.summary()


async def test_single_table_file_finds_its_dictionary_next_to_it() -> None:
    sink = ListSink()
    report = await load_extract(SAMPLE / "mimic" / "hosp" / "labevents.csv", sink)
    assert [r.file for r in report.files] == ["d_labitems.csv", "d_icd_diagnoses.csv", "labevents.csv"]
    assert report.by_kind()["labevents"].published == 53


async def test_publish_failure_propagates() -> None:
    with pytest.raises(PublishError):
        await load_extract(SAMPLE, ListSink(fail_after=1), batch_size=5)


def test_discover_splits_tables_bundles_and_the_rest() -> None:
    tables, bundles, ignored = discover(SAMPLE)
    assert sorted(t for t, _ in tables) == sorted(
        ["patients", "admissions", "labevents", "d_labitems", "diagnoses_icd", "d_icd_diagnoses"]
    )
    assert len(bundles) == 2 and ignored == []
