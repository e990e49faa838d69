"""The OHIF viewer with its MONAI Label panel in a real browser against the real stack.

A phantom MR series is stored in Orthanc and recorded in the views; the real application
(``create_api``) runs under uvicorn on a free port; headless Chromium (Debian's
``chromium``) driven by Playwright:

1. opens the study's ``viewer_url``, is sent to ``/login``, logs in with an annotator key;
2. lands in ``/ohif/monai-label?StudyInstanceUIDs=…``;
3. checks that the image was drawn — the viewport canvas's own pixels (``getImageData``),
   not the DOM: enough non-black pixels;
4. runs the model from the MONAI Label panel (the real ``/infer`` with
   ``result_extension=.nrrd``);
5. checks that the overlay appeared: coloured pixels on the canvas where there were none
   (the MR image is grey);
6. saves screenshots after each step in the test's tmp dir and under
   ``$COHORTSTREAM_TEST_ARTEFACTS`` (default ``<tmp>/cohortstream-artefacts``).

Skipped, with the reason, when Playwright, Chromium or the OHIF build (``make up`` /
``deploy/install_ohif.sh``) is missing. Every wait is bounded.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.keys import KeyStore
from api.ohif import ohif_dir
from api.principals import Role
from api.viewer_links import ohif_study_url
from cohortstream.admin import ensure_topics
from cohortstream.orthanc import OrthancClient
from cohortstream.settings import Settings
from tests.annotation_api_data import dataset_bytes
from tests.api_server import running_api
from tests.integration.test_dashboard import _artefact_dir
from tests.polling import eventually

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is not installed (pip install -e '.[dev]')"
)

TIMEOUT_MS = 60_000
INFER_TIMEOUT_MS = 180_000

# The viewport's canvas: its pixels as counts (non-black, coloured) computed in the page.
_CANVAS_PIXELS = """() => {
  const counts = [];
  for (const canvas of document.querySelectorAll('canvas.cornerstone-canvas')) {
    if (!canvas.width || !canvas.height) continue;
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let lit = 0, coloured = 0;
    for (let i = 0; i < data.length; i += 4) {
      const r = data[i], g = data[i + 1], b = data[i + 2];
      if (r + g + b > 30) lit++;
      if (Math.max(r, g, b) - Math.min(r, g, b) > 40) coloured++;
    }
    counts.push({ width: canvas.width, height: canvas.height, lit, coloured });
  }
  return counts;
}"""


@pytest.fixture
async def settings(stack_settings: Settings) -> Settings:
    settings = stack_settings.model_copy(update={"annotation_device": "cpu", "orthanc_timeout_s": 30.0})
    await ensure_topics(settings)
    return settings


@pytest.fixture
def viewer_build(settings: Settings) -> Path:
    root = ohif_dir(settings)
    if not (root / "index.html").is_file():
        pytest.skip(f"the OHIF build is not installed in {root} (deploy/install_ohif.sh; make up runs it)")
    return root


@pytest.fixture
def server(settings: Settings) -> Iterator[str]:
    """The real application under uvicorn on a free port, in a thread with its own loop."""
    with running_api(settings, "ohif-api") as url:
        yield url


@pytest.fixture
async def study(settings: Settings, db: Any) -> dict[str, str]:
    """A phantom MR series in Orthanc and in the series view (what ``/infer`` reads)."""
    from consumers.annotation.phantoms import phantom_series

    datasets, _ = phantom_series(31, (24, 64, 64), patient_id="PHANTOM-OHIF-31")
    async with OrthancClient(settings) as archive:
        for ds in datasets:
            await archive.store_bytes(dataset_bytes(ds), "phantom slice")
    first = datasets[0]
    await db["series"].insert_one(
        {
            "_id": str(first.SeriesInstanceUID),
            "study_instance_uid": str(first.StudyInstanceUID),
            "patient_id": str(first.PatientID),
            "modality": "MR",
            "body_part_examined": "PHANTOM",
            "instance_count": len(datasets),
        }
    )
    return {"study": str(first.StudyInstanceUID), "series": str(first.SeriesInstanceUID)}


async def _saved(page: Any, tmp_path: Path, name: str, shots: list[Path]) -> None:
    path = tmp_path / f"ohif-{name}.png"
    await page.screenshot(path=str(path))
    artefact = _artefact_dir() / f"ohif-{tmp_path.name}-{name}.png"
    artefact.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, artefact)
    shots.append(artefact)


async def test_ohif_shows_the_study_and_the_model_suggestion(
    settings: Settings,
    db: Any,
    server: str,
    study: dict[str, str],
    chromium: str,
    viewer_build: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = (await KeyStore(db).create("ohif-test", Role.ANNOTATOR)).key

    shots: list[Path] = []
    expect = playwright_api.expect
    expect.set_options(timeout=TIMEOUT_MS)
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"],
        )
        try:
            page = await (await browser.new_context(viewport={"width": 1600, "height": 1000})).new_page()
            errors: list[str] = []
            console: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("requestfailed", lambda r: console.append(f"failed: {r.url}"))
            page.on("response", lambda r: console.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)

            # 1. log in (the viewer link sends an anonymous browser to /login and back)
            await page.goto(server + ohif_study_url(study["study"]), timeout=TIMEOUT_MS)
            await expect(page.locator("#key")).to_be_visible()
            await _saved(page, tmp_path, "1-login", shots)
            await page.fill("#key", key)
            await page.click("#login")

            # 2. the study opens in the viewer
            await page.wait_for_url("**/ohif/monai-label?StudyInstanceUIDs=*", timeout=TIMEOUT_MS)
            canvas = page.locator("canvas.cornerstone-canvas").first
            await expect(canvas).to_be_visible()
            banner = page.get_by_role("button", name="Confirm and Hide")  # "investigational use only"
            if await banner.count():
                await banner.click()

            # 3. pixels were drawn on the canvas
            async def drawn() -> list[dict[str, int]] | None:
                counts = await page.evaluate(_CANVAS_PIXELS)
                return counts if counts and min(c["lit"] for c in counts) > 2000 else None

            before = await eventually(drawn, timeout_s=90, what="the image drawn on every viewport canvas")
            assert max(c["coloured"] for c in before) < 50, f"no overlay before inference: {before}"
            await _saved(page, tmp_path, "2-study", shots)

            # 4. connect the MONAI Label panel and run the model on the displayed series
            await page.click(".settingsTable button.actionButton")
            select = page.locator(".modelSelector select.selectBox").first
            await expect(select.locator("option[value='phantom-sphere-unet']")).to_have_count(1)
            await select.select_option("phantom-sphere-unet")
            await _saved(page, tmp_path, "3-panel", shots)
            async with page.expect_response(
                lambda r: "/infer/phantom-sphere-unet" in r.url, timeout=INFER_TIMEOUT_MS
            ) as inferred:
                await page.click("button[title='Run Segmentation']")
            response = await inferred.value
            assert response.status == 200 and (await response.body()).startswith(b"NRRD0004")

            # 5. the overlay appears on the canvases (coloured pixels on a grey image)
            async def overlaid() -> list[dict[str, int]] | None:
                counts = await page.evaluate(_CANVAS_PIXELS)
                return counts if counts and max(c["coloured"] for c in counts) > 200 else None

            after = await eventually(overlaid, timeout_s=60, what="the suggestion's overlay on the canvas")
            await _saved(page, tmp_path, "4-suggestion", shots)
            with capsys.disabled():
                print(f"\ncanvas pixels (lit, coloured) before: {before}\nafter: {after}")
            assert errors == [], errors
        finally:
            try:
                await _saved(page, tmp_path, "last", shots)
            finally:
                (_artefact_dir() / f"ohif-{tmp_path.name}-console.txt").write_text("\n".join(console + errors))
                await browser.close()
    with capsys.disabled():
        print("\nOHIF screenshots: " + ", ".join(str(s) for s in shots))
