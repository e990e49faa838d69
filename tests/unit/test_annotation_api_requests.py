"""Requests the review API refuses before touching a service: limits, filters, cursors,
missing review fields, unsupported MONAI Label options. Every refusal is the one JSON
shape ``{"error", "field"}`` naming the field.

The application is served without its lifespan (httpx's ASGI transport does not run
it), so nothing connects: a request that got past validation would fail loudly. The
caller is an admin (authentication is overridden; tests/unit/test_api_auth.py covers it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from api.app import create_api
from api.auth import Principal, Role, authenticated, browser_authenticated
from cohortstream.settings import Settings

ANNOTATION = "0b0e2f1c-0000-4000-8000-000000000001"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_api(Settings())
    app.dependency_overrides[authenticated] = lambda: Principal("tester", Role.ADMIN)
    app.dependency_overrides[browser_authenticated] = app.dependency_overrides[authenticated]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        yield client


async def _refused(response: httpx.Response, status: int, field: str | None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "field"} and body["field"] == field, body
    assert "Traceback" not in body["error"]
    return str(body["error"])


@pytest.mark.parametrize("path", ["/annotations", "/annotations/queue"])
@pytest.mark.parametrize("limit", ["501", "0", "-1", "many"])
async def test_limit_beyond_500_or_below_1_is_refused(client: httpx.AsyncClient, path: str, limit: str) -> None:
    message = await _refused(await client.get(path, params={"limit": limit}), 422, "limit")
    assert message.startswith("limit: ")
    if limit == "501":
        assert "500" in message


@pytest.mark.parametrize(("param", "value"), [("status", "approved"), ("sort", "date")])
async def test_unknown_status_or_order_is_refused(client: httpx.AsyncClient, param: str, value: str) -> None:
    await _refused(await client.get("/annotations", params={param: value}), 422, param)


async def test_a_bad_cursor_is_refused(client: httpx.AsyncClient) -> None:
    await _refused(await client.get("/annotations", params={"cursor": "garbage!"}), 422, "cursor")
    await _refused(
        await client.get("/annotations/queue", params={"cursor": "eyJvIjoiaWQiLCJpZCI6IngifQ"}), 422, "cursor"
    )


async def test_reject_needs_a_reason(client: httpx.AsyncClient) -> None:
    path = f"/annotations/{ANNOTATION}/reject"
    message = await _refused(await client.post(path, json={"reviewer": "r"}), 422, "reason")
    assert "reason" in message and "required" in message
    await _refused(await client.post(path, json={"reviewer": "r", "reason": "   "}), 422, "reason")


@pytest.mark.parametrize("body", [{"reviewer": ""}, {"reviewer": "  "}, {"reviewer": "r" * 257}])
async def test_a_given_reviewer_must_not_be_blank_or_too_long(client: httpx.AsyncClient, body: dict) -> None:
    await _refused(await client.post(f"/annotations/{ANNOTATION}/accept", json=body), 422, "reviewer")


async def test_unknown_fields_and_statuses_in_a_review_are_refused(client: httpx.AsyncClient) -> None:
    path = f"/annotations/{ANNOTATION}/accept"
    await _refused(await client.post(path, json={"reviewer": "r", "decision": "x"}), 422, "decision")
    await _refused(await client.post(path, json={"reviewer": "r", "expected_status": "done"}), 422, "expected_status")


async def test_a_correction_needs_a_file_and_a_reviewer_name_within_bounds(client: httpx.AsyncClient) -> None:
    path = f"/annotations/{ANNOTATION}/correct"
    await _refused(await client.post(path, data={"reviewer": "r"}), 422, "file")
    files = {"file": ("seg.dcm", b"DICM", "application/dicom")}
    await _refused(await client.post(path, data={"reviewer": "r" * 257}, files=files), 422, "reviewer")


async def test_monailabel_refuses_what_it_does_not_support(client: httpx.AsyncClient) -> None:
    await _refused(await client.post("/activelearning/entropy", json={"client_id": "c"}), 404, "strategy")
    await _refused(await client.get("/datastore/", params={"output": "train"}), 422, "output")
    await _refused(await client.post("/infer/no-such-model", params={"image": "1.2.3"}), 404, "model")
    await _refused(await client.post("/infer/phantom-sphere-unet"), 422, "image")
    await _refused(
        await client.post("/infer/phantom-sphere-unet", params={"image": "1.2.3"}, files={"file": ("x.nii.gz", b"x")}),
        422,
        "file",
    )
    await _refused(
        await client.post("/infer/phantom-sphere-unet", params={"image": "1.2.3"}, data={"params": "{not json"}),
        422,
        "params",
    )
