"""The dashboard in a real browser against the real stack.

The views are filled through the real sinks with the synthetic cohort of
``test_api_data`` (six subjects, MR/CT, questionnaires, EHR, two AI suggestions); the real
application (``create_api``) runs under uvicorn on a free port in a background thread;
headless Chromium (Debian's ``chromium``) driven by Playwright loads ``/dashboard``,
enters a researcher key, and the numbers it shows are compared with ``GET /statistics``
fetched with httpx. A cohort-builder query's count is checked against ``POST
/cohorts/query`` and its CSV download against the export. A screenshot is saved in the
test's tmp dir and under ``$COHORTSTREAM_TEST_ARTEFACTS`` (default
``<tmp>/cohortstream-artefacts``); its path is printed.

Skipped, with the reason, when Playwright or Chromium is missing (``tests/run.sh``
installs ``chromium``). Every wait is bounded (Playwright's ``expect``/``wait_for``
timeouts; the server start is polled with :func:`tests.polling.eventually`).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.keys import KeyStore
from api.principals import Role
from cohortstream.settings import Settings
from tests.api_server import running_api
from tests.integration.test_api_data import N, _fill, _sid
from tests.integration.test_api_data import settings as settings
from tests.polling import eventually

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is not installed (pip install -e '.[dev]')"
)

TIMEOUT_MS = 30_000


@pytest.fixture
def server(settings: Settings) -> Iterator[str]:
    """The real application under uvicorn on a free port, in a thread with its own loop."""
    with running_api(settings, "dashboard-api") as url:
        yield url


@pytest.fixture
async def filled(settings: Settings, db: Any, server: str) -> AsyncIterator[tuple[str, str]]:
    """(base URL, researcher key) of the running API over the filled views."""
    await _fill(settings)
    issued = await KeyStore(db).create("dashboard-test", Role.RESEARCHER)

    yield server, issued.key


def _artefact_dir() -> Path:
    return Path(os.environ.get("COHORTSTREAM_TEST_ARTEFACTS") or Path(tempfile.gettempdir()) / "cohortstream-artefacts")


async def test_the_dashboard_shows_the_statistics_and_builds_a_cohort(
    filled: tuple[str, str], chromium: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, key = filled
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:

        async def statistics_with_multimodal() -> dict[str, Any] | None:
            # The multimodal figure is a background registry join: null until its first run.
            body = (await client.get("/statistics")).json()
            return body if body["multimodal"] is not None else None

        stats = await eventually(statistics_with_multimodal, timeout_s=60, what="the multimodal statistic")
        query = {"modalities": ["MR"], "labs": [{"code": "50912", "min": 1.2}]}
        answer = (await client.post("/cohorts/query", json=query)).json()
        export = await client.post("/cohorts/export", params={"format": "csv"}, json=query)
        queue = (await client.get("/annotations/queue")).json()["items"]
        page_html = await client.get("/dashboard", headers={"Authorization": ""})
        plotly_js = await client.get("/dashboard/static/plotly.min.js", headers={"Authorization": ""})
    assert page_html.status_code == 200, "the page itself holds no data and needs no key"
    assert "script-src 'self'" in page_html.headers["content-security-policy"]
    assert plotly_js.status_code == 200 and len(plotly_js.content) > 1_000_000, "Plotly.js from the plotly package"
    assert answer["count"] == 2 and answer["subject_ids"] == sorted([_sid(0), _sid(4)]), answer
    assert export.status_code == 200

    expect = playwright_api.expect
    expect.set_options(timeout=TIMEOUT_MS)
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium, headless=True, args=["--disable-gpu", "--no-sandbox"]
        )
        try:
            context = await browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1800})
            page = await context.new_page()
            console_errors: list[str] = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))

            await page.goto(f"{base}/dashboard", timeout=TIMEOUT_MS)
            # No key yet: the page asks for one and shows nothing else.
            await expect(page.locator("#login")).to_be_visible()
            await expect(page.locator("#dashboard")).to_be_hidden()
            await page.fill("#api-key", "cs_wrong_key")
            await page.click("#key-form button[type=submit]")
            await expect(page.locator("#login-error")).to_contain_text("refused")

            await page.fill("#api-key", key)
            await page.click("#key-form button[type=submit]")
            await expect(page.locator("body[data-loaded=true]")).to_have_count(1)
            assert await page.evaluate("sessionStorage.getItem('cohortstream.apiKey')") == key

            # The numbers shown are the API's.
            for name, value in stats["totals"].items():
                await expect(page.locator(f'[data-stat="totals.{name}"] .value')).to_have_text(str(value))
            for name in ("subjects", "with_imaging", "with_questionnaire", "with_ehr", "complete"):
                await expect(page.locator(f'[data-stat="multimodal.{name}"] .value')).to_have_text(
                    str(stats["multimodal"][name])
                )
            age_rows = [
                [band, str(stats["age_bands"]["dicom"][band]), str(stats["age_bands"]["ehr"][band])]
                for band in stats["age_bands"]["dicom"]
            ]
            assert await _rows(page, "#table-age") == age_rows
            sexes = sorted(set(stats["sex"]["dicom"]) | set(stats["sex"]["ehr"]))
            assert await _rows(page, "#table-sex") == [
                [s, str(stats["sex"]["dicom"].get(s, 0)), str(stats["sex"]["ehr"].get(s, 0))] for s in sexes
            ]
            (completion,) = stats["questionnaire_completion"]
            assert await _rows(page, "#table-completion") == [
                [
                    f"{completion['instrument']} @ {completion['event_name']}",
                    *(str(completion["counts"][s]) for s in ("COMPLETE", "UNVERIFIED", "INCOMPLETE")),
                ]
            ]
            (model,) = stats["annotations_by_model"]
            assert await _rows(page, "#table-annotations") == [
                [model["model"], *(str(model["counts"][s]) for s in ("suggested", "accepted", "corrected", "rejected"))]
            ]
            # The review queue links each suggestion to its study in OHIF.
            assert queue and all(q["viewer_url"].startswith("/ohif/monai-label?StudyInstanceUIDs=") for q in queue)
            links = page.locator("#review-queue a")
            await expect(links).to_have_count(len(queue))
            assert [await links.nth(i).get_attribute("href") for i in range(len(queue))] == [
                q["viewer_url"] for q in queue
            ]
            assert await _rows(page, "#table-modality") == [
                [m, str(stats["series_by_modality"][m]), str(stats["patients_by_modality"][m])]
                for m in sorted(stats["series_by_modality"])
            ]
            # Plotly drew every plot (an SVG in each), from the served plotly.min.js.
            for plot in ("modality", "body-part", "age", "sex", "completion", "annotations", "ingestion"):
                await expect(page.locator(f"#plot-{plot} .main-svg").first).to_be_attached()
            # Modality x subject matrix: one row per subject, MR marked for the even ones.
            await expect(page.locator("#matrix tr[data-subject]")).to_have_count(N)
            for n in range(N):
                cell = page.locator(f'#matrix tr[data-subject="{_sid(n)}"] td[data-column="MR"]')
                await expect(cell).to_have_text("●" if n % 2 == 0 else "·")

            # Cohort builder: MR with latest creatinine >= 1.2 -> subjects 0 and 4.
            await page.check('#modality-choices input[value="MR"]')
            await page.fill("#lab-code", "50912")
            await page.fill("#lab-min", "1.2")
            await page.click("#run-query")
            await expect(page.locator("#cohort-count")).to_have_text(str(answer["count"]))
            await expect(page.locator("#cohort-ids")).to_have_text("\n".join(answer["subject_ids"]))
            assert await _rows(page, "#per-criterion") == [[k, str(v)] for k, v in answer["per_criterion"].items()]

            async with page.expect_download(timeout=TIMEOUT_MS) as download_info:
                await page.click("#download-csv")
            download = await download_info.value
            assert download.suggested_filename == "cohort.csv"
            saved = tmp_path / "cohort.csv"
            await download.save_as(saved)
            downloaded = saved.read_text(encoding="utf-8")
            assert downloaded == export.text
            assert [r["subject_id"] for r in csv.DictReader(io.StringIO(downloaded))] == answer["subject_ids"]

            screenshot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(screenshot), full_page=True)
            artefact = _artefact_dir() / f"dashboard-{tmp_path.name}.png"
            artefact.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(screenshot, artefact)
            with capsys.disabled():
                print(f"\ndashboard screenshot: {artefact} (also {screenshot})")

            # Forgetting the key asks for it again; nothing of it stays in the tab.
            await page.click("#forget-key")
            await expect(page.locator("#login")).to_be_visible()
            assert await page.evaluate("sessionStorage.getItem('cohortstream.apiKey')") is None
            unexpected = [e for e in console_errors if "401" not in e]
            assert unexpected == [], unexpected
        finally:
            await browser.close()


async def _rows(page: Any, selector: str) -> list[list[str]]:
    """The body rows of a table, as text."""
    return await page.eval_on_selector(
        selector, "t => [...t.querySelectorAll('tr')].slice(1).map(r => [...r.cells].map(c => c.textContent))"
    )


def test_the_page_is_packaged() -> None:
    """The static files are package data, and the page names only files this app serves."""
    from api.dashboard import STATIC_FILES, plotly_js_path

    static = Path(__file__).resolve().parents[2] / "api" / "static"
    html = (static / "dashboard.html").read_text(encoding="utf-8")
    for name in STATIC_FILES:
        assert (static / name).is_file() and f"/dashboard/static/{name}" in html
    assert "http://" not in html and "https://" not in html, "no CDN: nothing is fetched from the internet"
    assert plotly_js_path() is not None
