"""The browser side of the API against the real stack: ``/login`` sessions, the DICOMweb
proxy to Orthanc, the OHIF files and the roles of the viewer's routes.

Every request goes through the real application (ASGI) to the real Orthanc and MongoDB;
the session cookie travels in the client's cookie jar as a browser's would.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pydicom
import pytest

from api.app import create_api
from api.auth import SESSION_COOKIE, Role
from api.keys import KeyStore
from api.ohif import SERVER_URL_COOKIE
from cohortstream.admin import ensure_topics
from cohortstream.mongo import open_database
from cohortstream.orthanc import OrthancClient
from cohortstream.settings import Settings
from tests.annotation_api_data import dataset_bytes
from tests.integration.test_annotation_api import create_key


@pytest.fixture
async def ohif_build(tmp_path: Path) -> Path:
    """A stand-in build (two files), so these tests do not depend on the cached viewer."""
    root = tmp_path / "ohif"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html><title>OHIF</title>")
    (root / "app-config.js").write_text("window.config = {routerBasename: '/ohif/'};")
    (tmp_path / "secret.txt").write_text("outside the build")
    return root


@pytest.fixture
async def settings(stack_settings: Settings, ohif_build: Path) -> Settings:
    settings = stack_settings.model_copy(update={"api_key_cache_ttl_s": 0.0, "ohif_dir": ohif_build})
    await ensure_topics(settings)
    return settings


@pytest.fixture
async def app(settings: Settings, db: Any) -> AsyncIterator[Any]:
    application = create_api(settings)
    async with application.router.lifespan_context(application):
        yield application


def _browser(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=60)


async def _login(client: httpx.AsyncClient, key: str, next_path: str = "/ohif/") -> httpx.Response:
    return await client.post("/login", data={"key": key, "next": next_path})


@pytest.fixture
async def stored_study(settings: Settings) -> pydicom.Dataset:
    """One MR slice with fresh UIDs, stored in Orthanc through its REST API."""
    from consumers.annotation.phantoms import phantom_series

    datasets, _ = phantom_series(3, (8, 16, 16), patient_id=f"VIEW-{uuid.uuid4().hex[:8]}")
    async with OrthancClient(settings) as archive:
        await archive.store_bytes(dataset_bytes(datasets[0]), "viewer test slice")
    return datasets[0]


async def test_login_sets_an_httponly_strict_session_cookie_and_redirects(app: Any, settings: Settings) -> None:
    key = await create_key(settings, Role.RESEARCHER, "viewer")
    async with _browser(app) as browser:
        page = await browser.get("/login")
        assert page.status_code == 200 and 'name="key"' in page.text and "Content-Security-Policy" in page.headers

        wrong = await _login(browser, key[:-1] + ("A" if key[-1] != "A" else "B"))
        assert wrong.status_code == 401 and SESSION_COOKIE not in wrong.cookies

        ok = await _login(browser, key, "/ohif/viewer?StudyInstanceUIDs=1.2.3")
        assert ok.status_code == 303 and ok.headers["location"] == "/ohif/viewer?StudyInstanceUIDs=1.2.3"
        cookie = ok.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert key not in cookie, "the cookie holds a session token, never the key"

        elsewhere = await _login(browser, key, "https://evil.example/")
        assert elsewhere.headers["location"] == "/ohif/", "no open redirect"
        async with open_database(settings) as db:
            stored = [doc async for doc in db["api_sessions"].find({})]
        assert len(stored) == 2 and all(doc["_id"] not in cookie for doc in stored), "only token hashes are stored"


async def test_proxy_refuses_requests_without_a_session_or_key(app: Any, stored_study: pydicom.Dataset) -> None:
    async with _browser(app) as anonymous:
        for method, path in [
            ("GET", "/proxy/dicom/qido/studies"),
            ("GET", f"/proxy/dicom/wado/studies/{stored_study.StudyInstanceUID}/metadata"),
            ("POST", "/proxy/dicom/stow/studies"),
        ]:
            response = await anonymous.request(method, path)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["field"] == "Authorization"
        anonymous.cookies.set(SESSION_COOKIE, "not-a-session")
        forged = await anonymous.get("/proxy/dicom/qido/studies")
        assert forged.status_code == 401 and "log in again" in forged.json()["error"]


async def test_a_session_reads_orthanc_dicomweb_through_the_proxy(
    app: Any, settings: Settings, stored_study: pydicom.Dataset
) -> None:
    key = await create_key(settings, Role.RESEARCHER, "viewer")
    study = str(stored_study.StudyInstanceUID)
    async with _browser(app) as browser:
        await _login(browser, key)
        found = await browser.get(
            "/proxy/dicom/qido/studies",
            params={"StudyInstanceUID": study},
            headers={"Accept": "application/dicom+json"},
        )
        assert found.status_code == 200 and found.headers["content-type"].startswith("application/dicom+json")
        assert [s["0020000D"]["Value"][0] for s in found.json()] == [study]
        assert "www-authenticate" not in found.headers
        assert settings.orthanc_password.get_secret_value() not in found.text

        metadata = await browser.get(
            f"/proxy/dicom/wado/studies/{study}/series/{stored_study.SeriesInstanceUID}/metadata",
            headers={"Accept": "application/dicom+json"},
        )
        assert metadata.status_code == 200
        assert metadata.json()[0]["00080018"]["Value"][0] == str(stored_study.SOPInstanceUID)

        frames = await browser.get(
            f"/proxy/dicom/wado/studies/{study}/series/{stored_study.SeriesInstanceUID}"
            f"/instances/{stored_study.SOPInstanceUID}/frames/1",
            headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
        )
        assert frames.status_code == 200 and frames.headers["content-type"].startswith("multipart/related")
        assert len(frames.content) >= 16 * 16 * 2, "the frame's pixels came through"

        escape = await browser.get("/proxy/dicom/qido/../../instances")
        assert escape.status_code in (400, 404)

    async with _browser(app) as script:  # bearer keys keep working for scripts
        by_key = await script.get(
            "/proxy/dicom/qido/studies", params={"StudyInstanceUID": study}, headers={"Authorization": f"Bearer {key}"}
        )
        assert by_key.status_code == 200 and len(by_key.json()) == 1


def _stow_body(ds: pydicom.Dataset) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + dataset_bytes(ds)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


async def test_storing_needs_the_annotator_role_and_the_session_is_only_for_viewer_routes(
    app: Any, settings: Settings
) -> None:
    from consumers.annotation.phantoms import phantom_series

    datasets, _ = phantom_series(4, (8, 16, 16), patient_id=f"STOW-{uuid.uuid4().hex[:8]}")
    body, content_type = _stow_body(datasets[0])
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    researcher, annotator = (
        await create_key(settings, Role.RESEARCHER, "r"),
        await create_key(settings, Role.ANNOTATOR, "a"),
    )
    async with _browser(app) as browser:
        await _login(browser, researcher)
        refused = await browser.post("/proxy/dicom/stow/studies", content=body, headers=headers)
        assert refused.status_code == 403 and "annotator" in refused.json()["error"]
        infer = await browser.post("/infer/phantom-sphere-unet", params={"image": "1.2.3"})
        assert infer.status_code == 403
        assert (await browser.get("/info/")).status_code == 200, "MONAI Label reads take the session"
        assert (await browser.get("/annotations")).status_code == 401, "other routes ignore the cookie"

    async with _browser(app) as browser:
        await _login(browser, annotator)
        stored = await browser.post("/proxy/dicom/stow/studies", content=body, headers=headers)
        assert stored.status_code == 200, stored.text
        assert stored.json()["00081199"]["Value"][0]["00081155"]["Value"][0] == str(datasets[0].SOPInstanceUID)
        # OHIF's store segmentation posts to its wadoRoot: the same STOW-RS.
        body, content_type = _stow_body(datasets[1])
        via_wado = await browser.post(
            "/proxy/dicom/wado/studies", content=body, headers={**headers, "Content-Type": content_type}
        )
        assert via_wado.status_code == 200, via_wado.text
    async with OrthancClient(settings) as archive:
        assert await archive.lookup(str(datasets[0].SOPInstanceUID))
        assert await archive.lookup(str(datasets[1].SOPInstanceUID))


async def test_revoking_the_key_ends_its_sessions(app: Any, settings: Settings) -> None:
    key = await create_key(settings, Role.RESEARCHER, "viewer")
    async with _browser(app) as browser:
        await _login(browser, key)
        assert (await browser.get("/proxy/dicom/qido/studies", params={"limit": 1})).status_code == 200
        async with open_database(settings) as db:
            assert await KeyStore(db).revoke(key.split("_")[1])
        assert (await browser.get("/proxy/dicom/qido/studies", params={"limit": 1})).status_code == 401
        await browser.post("/logout")
        assert SESSION_COOKIE not in browser.cookies


async def test_ohif_is_served_with_the_server_url_cookie_and_an_index_fallback(app: Any, settings: Settings) -> None:
    async with _browser(app) as browser:
        away = await browser.get("/ohif/monai-label?StudyInstanceUIDs=1.2", headers={"Accept": "text/html"})
        assert away.status_code == 303
        assert away.headers["location"] == "/login?next=%2Fohif%2Fmonai-label%3FStudyInstanceUIDs%3D1.2"
        assert (await browser.get("/ohif/app-config.js")).status_code == 401

        await _login(browser, await create_key(settings, Role.RESEARCHER, "viewer"))
        index = await browser.get("/ohif/")
        assert index.status_code == 200 and "<title>OHIF</title>" in index.text
        assert index.headers["set-cookie"].startswith(f"{SERVER_URL_COOKIE}=http%3A%2F%2Fapi%2F;"), "unquoted"
        assert unquote(browser.cookies[SERVER_URL_COOKIE]) == "http://api/"
        route = await browser.get("/ohif/monai-label", params={"StudyInstanceUIDs": "1.2"})
        assert route.text == index.text, "viewer routes fall back to index.html"
        config = await browser.get("/ohif/app-config.js")
        assert config.headers["content-type"].startswith("text/javascript") and "routerBasename" in config.text
        outside = await browser.get("/ohif/..%2Fsecret.txt")
        assert "outside the build" not in outside.text
