"""Feature vectors where researchers work, on the real stack: the API (one subject's
vector, a cohort's matrix streamed as Parquet or CSV, the data dictionary, the summary)
and the dashboard (block coverage, one distribution plot per chosen feature) in a real
browser. The views and the features are built by the real sinks from a generated cohort
(EHR extract, questionnaires, MR/CT instances)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.keys import KeyStore
from api.principals import Role
from cohortstream.admin import ensure_topics
from cohortstream.events import (
    EhrRecord,
    Event,
    RedcapCompletionStatus,
    RedcapRecordChanged,
    RedcapTrigger,
)
from cohortstream.features.spec import default_spec
from cohortstream.settings import Settings, SubjectLinkRule
from cohortstream.synthetic_ehr import write_mimic
from consumers.dicom_views import DicomViews
from consumers.ehr_views import EhrViews
from consumers.features.views import FeatureViews
from consumers.redcap_views import RedcapViews
from producers.ehr.loader import load_extract
from tests.api_server import running_api
from tests.examples import example_events

SUBJECTS = 12
REDCAP_URL = "https://redcap.example.org/"
TIMEOUT_MS = 30_000


@pytest.fixture
async def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    """The test's settings; its topics exist (the API audits feature reads: ``audit.access``)."""
    spec = default_spec().model_dump(mode="json")
    spec["questionnaires"] = [{"instrument": "baseline"}]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    settings = stack_settings.model_copy(
        update={
            "features_spec_file": str(tmp_path / "spec.json"),
            "subject_link_rules": [
                SubjectLinkRule(ehr_source="mimic-iv", target="dicom_patient_id"),
                SubjectLinkRule(redcap_field="ehr_id", target="ehr_subject_id", ehr_source="mimic-iv"),
            ],
        }
    )
    await ensure_topics(settings)
    return settings


class _Collect:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish_many(self, items: Sequence[tuple[Event, str]]) -> object:
        self.events.extend(event for event, _ in items)
        return None


def _mimic(n: int) -> int:
    return 20_000_000 + n


async def _apply(sink: Any, events: list[Any]) -> None:
    await sink.setup()
    try:
        await sink.apply(events)
        if isinstance(sink, FeatureViews):
            await sink.flush_due(everything=True)
    finally:
        await sink.close()


async def _fill(settings: Settings, tmp_path: Path) -> None:
    extract = write_mimic(tmp_path / "ehr", seed=3, subject_ids=[_mimic(n) for n in range(SUBJECTS)])
    collect = _Collect()
    await load_extract(extract.root, collect)
    ehr = [e for e in collect.events if isinstance(e, EhrRecord)]
    template = example_events()[0]
    dicom = [
        template.model_copy(
            update={
                "patient_id": str(_mimic(n)),
                "study_instance_uid": f"1.2.3.{n}",
                "series_instance_uid": f"1.2.3.{n}.1",
                "sop_instance_uid": f"1.2.3.{n}.1.1",
                "modality": "MR" if n % 3 else "CT",
            }
        )
        for n in range(0, SUBJECTS, 2)
    ]
    redcap = [
        RedcapRecordChanged(
            producer="test",
            redcap_url=REDCAP_URL,
            project_id="7",
            record_id=f"R{n}",
            instrument="baseline",
            completion_status=RedcapCompletionStatus.COMPLETE,
            trigger=RedcapTrigger.FULL_SYNC,
            values={"ehr_id": str(_mimic(n)), "moca": 20 + n, "arm": "1" if n % 2 else "2"},
            labels={"arm": "A" if n % 2 else "B"},
        )
        for n in range(SUBJECTS)
        if n % 4 != 3
    ]
    await _apply(EhrViews(settings), ehr)
    await _apply(DicomViews(settings), dicom)
    await _apply(RedcapViews(settings), redcap)
    await _apply(FeatureViews(settings), [*ehr, *dicom, *redcap])


@pytest.fixture
def server(settings: Settings) -> Iterator[str]:
    with running_api(settings, "features-api") as url:
        yield url


@pytest.fixture
async def filled(settings: Settings, db: Any, server: str, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    await _fill(settings, tmp_path)
    issued = await KeyStore(db).create("features-test", Role.RESEARCHER)

    yield server, issued.key


async def test_subject_vector_cohort_matrix_dictionary_and_summary(filled: tuple[str, str], db: Any) -> None:
    import pandas as pd

    base, key = filled
    docs = {d["_id"]: d for d in await db.features.find({}).to_list()}
    assert len(docs) == SUBJECTS
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        # One subject, by identifier.
        one = await client.get(f"/subjects/ehr:mimic-iv|{_mimic(2)}/features")
        assert one.status_code == 200, one.text
        body = one.json()
        stored = docs[body["subject_id"]]
        assert body["features"] == stored["features"] and body["blocks"] == stored["blocks"]
        assert body["spec"]["version"] == 1 and "imaging" in body["blocks"] and "questionnaires" in body["blocks"]
        assert (await client.get("/subjects/dicom:NOBODY/features")).status_code == 404
        anonymous = await client.get(f"/subjects/ehr:mimic-iv|{_mimic(2)}/features", headers={"Authorization": ""})
        assert anonymous.status_code == 401

        # A cohort's matrix: MR subjects, streamed.
        query = {"modalities": ["MR"]}
        expected_ids = sorted(d["_id"] for d in docs.values() if d["features"].get("img_mr_series_count"))
        async with client.stream("POST", "/cohorts/features", params={"format": "parquet"}, json=query) as response:
            assert response.status_code == 200 and response.headers["x-cohort-count"] == str(len(expected_ids))
            assert response.headers["content-type"].startswith("application/vnd.apache.parquet")
            chunks = [chunk async for chunk in response.aiter_bytes()]
        frame = pd.read_parquet(io.BytesIO(b"".join(chunks)))
        assert sorted(frame["subject_id"]) == expected_ids
        for row in frame.to_dict("records"):
            features = docs[row["subject_id"]]["features"]
            for column, value in row.items():
                if column == "subject_id":
                    continue
                want = features.get(column)
                assert (want is None and pd.isna(value)) or value == pytest.approx(want), column
        as_csv = await client.post("/cohorts/features", params={"format": "csv"}, json=query)
        lines = as_csv.text.splitlines()
        assert as_csv.status_code == 200 and lines[0].split(",") == list(frame.columns)
        assert len(lines) == len(expected_ids) + 1
        bad = await client.post("/cohorts/features", params={"format": "xlsx"}, json=query)
        assert bad.status_code == 422

        # The data dictionary: name, source, unit, statistic of every column.
        dictionary = (await client.get("/features/dictionary")).json()
        columns = {c["name"]: c for c in dictionary["columns"]}
        assert list(columns) == list(frame.columns)
        assert columns["lab_50912_slope_per_day"]["unit"] == "mg/dL/day"
        assert columns["q_baseline_arm"]["statistic"] == "code" and columns["q_baseline_moca"]["dtype"] == "float64"
        assert all({"name", "source", "unit", "statistic"} <= set(c) for c in dictionary["columns"])

        # Summary: coverage of every block and the distributions asked for.
        summary = (await client.get("/features/summary", params=[("feature", "age"), ("feature", "sex")])).json()
        assert summary["subjects"] == SUBJECTS
        assert summary["coverage"]["imaging"]["subjects"] == SUBJECTS // 2
        assert summary["coverage"]["questionnaires"]["share"] == pytest.approx(9 / 12)
        assert (
            summary["distributions"]["age"]["kind"] == "numeric"
            and sum(summary["distributions"]["age"]["counts"]) == SUBJECTS
        )
        assert set(summary["distributions"]["sex"]["counts"]) <= {"M", "F"}


async def test_dashboard_shows_feature_coverage_and_distributions(filled: tuple[str, str], chromium: str) -> None:
    playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed")
    base, key = filled
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        summary = (await client.get("/features/summary")).json()
    expect = playwright_api.expect
    expect.set_options(timeout=TIMEOUT_MS)
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium, headless=True, args=["--disable-gpu", "--no-sandbox"]
        )
        try:
            page = await (await browser.new_context(viewport={"width": 1400, "height": 1800})).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"{base}/dashboard", timeout=TIMEOUT_MS)
            await page.fill("#api-key", key)
            await page.click("#key-form button[type=submit]")
            await expect(page.locator("body[data-loaded=true]")).to_have_count(1)
            rows = page.locator("#feature-coverage tr")
            await expect(rows).to_have_count(1 + len(summary["coverage"]))
            imaging = page.locator("#feature-coverage tr", has_text="imaging")
            await expect(imaging).to_contain_text("50.0 %")
            # One plot per default feature, drawn by Plotly.
            for name in summary["distributions"]:
                await expect(page.locator(f'[data-feature="{name}"] .main-svg').first).to_be_attached()
            # Choose other features: one plot each.
            await page.select_option("#feature-choice", ["sex", "lab_51222_max"])
            await page.click("#feature-form button[type=submit]")
            await expect(page.locator("#feature-plots [data-feature]")).to_have_count(2)
            await expect(page.locator('[data-feature="lab_51222_max"] .main-svg').first).to_be_attached()
            assert not errors, errors
        finally:
            await browser.close()


async def test_an_event_folded_during_its_subjects_flush_is_not_lost(settings: Settings, db: Any) -> None:
    """The features sink against the real MongoDB-wire server: a row that arrives while its
    subject is being recomputed is recomputed again, not dropped from the schedule."""
    from datetime import UTC, datetime

    from cohortstream.events import EhrRecordType

    def row(n: int) -> EhrRecord:
        return EhrRecord(
            producer="test",
            source="mimic-iv",
            source_file="f",
            source_row_id=f"r{n}",
            subject_id="1",
            record_type=EhrRecordType.LAB,
            effective_at=datetime(2024, 1, n, tzinfo=UTC),
            code="50912",
            value_number=float(n),
        )

    class Interleaving(FeatureViews):
        async def _flush(self, doc_ids: Sequence[str]) -> int:
            if not getattr(self, "_interleaved", False):
                self._interleaved = True
                await self.apply([row(2)])  # as the agent would, while this flush runs
            return await super()._flush(doc_ids)

    sink = Interleaving(settings)
    await sink.setup()
    try:
        await sink.apply([row(1)])
        await sink.flush_due(everything=True)
        assert sink.pending() == 1, "the row folded during the flush must stay scheduled"
        await sink.flush_due(everything=True)
        assert sink.pending() == 0
    finally:
        await sink.close()
    [doc] = await db.features.find({}).to_list()
    assert doc["features"]["lab_50912_count"] == 2 and doc["features"]["lab_50912_last"] == 2.0
    assert await db.feature_inputs.count_documents({"pending": True}) == 0
