"""The core Orthanc client's error classification, on httpx's mock transport.

No answer or 502/503/504 is an outage (retried as backpressure); any other 5xx, and a
4xx where a 2xx was needed, is a rejection (dead-lettered after ``sink_error_attempts``).
The real server is exercised by tests/integration/test_orthanc.py and the pipelines.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx
import pytest

from cohortstream.orthanc import OrthancClient, OrthancRejectedError, OrthancUnavailableError
from cohortstream.settings import Settings

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler, **settings: object) -> OrthancClient:
    base = {"orthanc_url": "http://orthanc.test:8042/", "sink_retry_max_delay_s": 0.01}
    return OrthancClient(Settings.model_validate({**base, **settings}), transport=httpx.MockTransport(handler))


def _refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_and_unavailable_answers_are_an_outage(status: int) -> None:
    async with _client(lambda request: httpx.Response(status)) as orthanc:
        with pytest.raises(OrthancUnavailableError, match=f"HTTP {status}"):
            await orthanc.has_instance("abc")


async def test_no_answer_is_an_outage() -> None:
    async with _client(_refused) as orthanc:
        with pytest.raises(OrthancUnavailableError, match="ConnectError"):
            await orthanc.request("GET", "/system")


@pytest.mark.parametrize("status", [500, 507])
async def test_other_server_errors_are_rejections(status: int) -> None:
    async with _client(lambda request: httpx.Response(status, text="boom")) as orthanc:
        with pytest.raises(OrthancRejectedError, match=f"HTTP {status} boom"):
            await orthanc.upload(b"DICM", "a test object")


async def test_absence_is_an_answer_and_a_refusal_is_a_rejection() -> None:
    answers = {"/instances/here": httpx.Response(200, json={"ID": "here"}), "/instances/gone": httpx.Response(404)}
    async with _client(lambda request: answers.get(request.url.path, httpx.Response(401))) as orthanc:
        assert await orthanc.has_instance("here") is True
        assert await orthanc.has_instance("gone") is False
        with pytest.raises(OrthancRejectedError, match="HTTP 401"):
            await orthanc.has_instance("forbidden")
        with pytest.raises(OrthancRejectedError, match="refused a SEG: HTTP 401"):
            await orthanc.upload(b"DICM", "a SEG")


async def test_routes_go_to_the_configured_url_with_credentials() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ID": "x", "Status": "Success"})

    async with _client(handler, orthanc_username="u", orthanc_password="p") as orthanc:
        await orthanc.upload(b"DICM", "x")
        await orthanc.client.get("/system")  # relative routes work on the public client too
    assert [(r.method, str(r.url)) for r in seen] == [
        ("POST", "http://orthanc.test:8042/instances"),
        ("GET", "http://orthanc.test:8042/system"),
    ]
    assert all(r.headers["authorization"] == "Basic " + base64.b64encode(b"u:p").decode() for r in seen)


async def test_store_bytes_waits_through_an_outage_then_stores() -> None:
    answers = iter([httpx.Response(503), httpx.Response(503), httpx.Response(200, json={"ID": "seg-id"})])
    async with _client(lambda request: next(answers)) as orthanc:
        assert await orthanc.store_bytes(b"DICM", "a SEG") == "seg-id"


async def test_a_rejection_is_tried_sink_error_attempts_times_then_raised() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(400, text="not DICOM")

    async with _client(handler, sink_error_attempts=2) as orthanc:
        with pytest.raises(OrthancRejectedError, match="not DICOM"):
            await orthanc.store_bytes(b"junk", "junk")
    assert calls == 2


async def test_series_files_in_instance_order() -> None:
    files = {"/instances/i1/file": b"one", "/instances/i2/file": b"two"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/series/"):
            return httpx.Response(200, json={"Instances": ["i1", "i2"]})
        return httpx.Response(200, content=files[request.url.path])

    async with _client(handler) as orthanc:
        assert await orthanc.series_instances("1.2", "1.2.3", "PID", expected=2, wait_s=1) == [b"one", b"two"]


def test_httpcore_finds_sniffio_instead_of_failing_to_import_it_on_every_request() -> None:
    """httpcore asks ``import sniffio`` inside each request; without the package every
    Orthanc upload paid for a failed import (a sys.path walk)."""
    import importlib.util

    assert importlib.util.find_spec("sniffio") is not None
