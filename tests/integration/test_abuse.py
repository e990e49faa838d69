"""Abuse resistance of the HTTP services against the real stack, over real TCP (uvicorn).

Each abuse runs while a well-behaved client polls the same service from another address
(127.0.0.2: loopback answers the whole 127/8), and every one of its requests must succeed
promptly:

* 10,000 bad API keys from one address: the first ``api_auth_failures_per_minute`` get
  401, the rest 429 with ``Retry-After`` (no lookup, no hash); a key verified before keeps
  working from that same address; the block is logged once;
* a 100 MB body to the cohort query (with and without ``Content-Length``), the SEG upload
  and the REDCap trigger: 413 before the body is read;
* slow-loris against the REDCap trigger: many connections that send their headers and
  then trickle the body; each gets 408 when ``api_body_timeout_s`` is up.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from api.auth import Role
from cohortstream.admin import ensure_topics
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings
from producers.redcap.api import RedcapApiClient
from producers.redcap.webhook import TRIGGER_PATH, create_trigger_app
from tests.api_server import running_api, serving
from tests.integration.test_annotation_api import create_key
from tests.net import free_port
from tests.polling import eventually

OTHER_CLIENT = "127.0.0.2"
BODY_TIMEOUT_S = 2.0
MB = 1024 * 1024


@pytest.fixture
async def settings(stack_settings: Settings) -> Settings:
    settings = stack_settings.model_copy(
        update={
            "api_auth_failures_per_minute": 20,
            "api_body_timeout_s": BODY_TIMEOUT_S,
            "api_max_seg_upload_bytes": 16 * MB,
            "api_key_cache_ttl_s": 300.0,
        }
    )
    await ensure_topics(settings)
    return settings


@contextmanager
def running_webhook(settings: Settings) -> Iterator[str]:
    """The REDCap trigger endpoint under uvicorn in its own thread; yields its base URL."""
    app = create_trigger_app(settings, EventPublisher(settings), lambda p: RedcapApiClient(settings, p))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    with serving(config, "test-webhook", start_timeout_s=30):
        yield f"http://127.0.0.1:{port}"


async def _at_least(items: list[float], n: int) -> bool:
    return len(items) >= n


@asynccontextmanager
async def polling(
    request: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]], max_latency_s: float = 2.0
) -> AsyncIterator[list[float]]:
    """A well-behaved client from another address, polling while the block runs; fails if
    one of its requests fails or takes longer than ``max_latency_s``."""
    latencies: list[float] = []
    failures: list[str] = []
    stop = asyncio.Event()
    transport = httpx.AsyncHTTPTransport(local_address=OTHER_CLIENT)

    async def poll() -> None:
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            while not stop.is_set():
                started = time.perf_counter()
                response = await request(client)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                await asyncio.sleep(0.05)

    task = asyncio.create_task(poll())
    try:
        yield latencies
    finally:
        if not task.done():
            await eventually(lambda: _at_least(latencies, 3), timeout_s=30, what="three good requests")
        stop.set()
        await task
    assert not failures, failures
    assert len(latencies) >= 3, "the good client got a word in"
    assert max(latencies) < max_latency_s, f"slowest good request {max(latencies):.2f} s"


async def test_ten_thousand_bad_keys_are_rate_limited_while_others_are_served(
    settings: Settings, db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    good = await create_key(settings, Role.RESEARCHER, "good client")
    same_address = await create_key(settings, Role.RESEARCHER, "neighbour")
    with running_api(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as flood:
            assert (await flood.get("/annotations", headers={"X-API-Key": same_address})).status_code == 200
            async with polling(lambda c: c.get(f"{base}/annotations", headers={"X-API-Key": good})) as latencies:
                statuses: dict[int, int] = {}
                retry_after: set[str] = set()
                queue = iter(range(10_000))

                async def worker() -> None:
                    for n in queue:
                        # Well-formed keys with random ids and secrets, and plain junk.
                        key = f"cs_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}" if n % 2 else f"junk-{n}"
                        response = await flood.get("/annotations", headers={"Authorization": f"Bearer {key}"})
                        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                        if response.status_code == 429:
                            retry_after.add(response.headers["Retry-After"])
                            assert "too many failed API-key attempts" in response.json()["error"]

                started = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(32)))
                flood_s = time.perf_counter() - started
                neighbour = await flood.get("/annotations", headers={"X-API-Key": same_address})
    assert statuses == {401: 20, 429: 9_980}, statuses
    assert retry_after and all(1 <= int(v) <= 60 for v in retry_after)
    assert neighbour.status_code == 200, "a key verified before still works from the flooded address"
    blocks = [r for r in caplog.records if r.getMessage() == "API key attempts rate-limited"]
    assert len(blocks) == 1 and blocks[0].__dict__["source"] == "127.0.0.1"
    refused = [r for r in caplog.records if r.getMessage() == "API key refused"]
    assert len(refused) == 20
    print(f"10,000 bad keys in {flood_s:.1f} s; good client: {len(latencies)} requests, max {max(latencies):.3f} s")


async def test_a_100_mb_body_is_refused_with_413_while_others_are_served(settings: Settings, db: Any) -> None:
    key = await create_key(settings, Role.ADMIN, "uploader")
    body = bytes(100 * MB)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), MB):
            yield body[start : start + MB]

    auth = {"X-API-Key": key}
    with running_api(settings) as base, running_webhook(settings) as webhook:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            assert (await client.get("/annotations", headers=auth)).status_code == 200  # the key is verified
            async with polling(lambda c: c.get(f"{base}/annotations", headers=auth)):
                cases = {
                    "cohort query": await client.post(
                        "/cohorts/query", content=body, headers={**auth, "Content-Type": "application/json"}
                    ),
                    "cohort query, chunked": await client.post(
                        "/cohorts/query", content=chunks(), headers={**auth, "Content-Type": "application/json"}
                    ),
                    "SEG upload": await client.post(
                        "/annotations/x/correct", files={"file": ("seg.dcm", body)}, headers=auth
                    ),
                    "REDCap trigger": await client.post(
                        f"{webhook}{TRIGGER_PATH}",
                        content=body,
                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                    ),
                }
            async with polling(lambda c: c.get(f"{webhook}/healthz")):
                cases["REDCap trigger, second"] = await client.post(
                    f"{webhook}{TRIGGER_PATH}",
                    content=body,
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
    for name, response in cases.items():
        assert response.status_code == 413, (name, response.status_code, response.text[:200])
        assert "larger than" in response.json()["error"], name


def _slow_loris(port: int, seconds: float) -> tuple[bytes, float]:
    """Send a trigger's headers, then one byte of body every 0.2 s; return the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            (
                f"POST {TRIGGER_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 10000\r\n\r\n"
            ).encode()
        )
        started = time.monotonic()
        sock.settimeout(0.2)
        answer = b""
        while time.monotonic() - started < seconds:
            try:
                sock.sendall(b"a")
            except OSError:
                break  # the server closed the connection
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break  # reset after the answer: what was read is the answer
            if not data:
                break
            answer += data
        sock.settimeout(5)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        return answer, time.monotonic() - started


async def test_slow_loris_on_the_trigger_endpoint_gets_408_while_others_are_served(settings: Settings) -> None:
    with running_webhook(settings) as webhook:
        port = int(webhook.rsplit(":", 1)[1])
        loop = asyncio.get_running_loop()
        # Their own threads: in the loop's default executor they would also delay the good
        # client's name lookups (a test artefact, not the server's).
        with ThreadPoolExecutor(max_workers=20) as pool:
            async with polling(lambda c: c.get(f"{webhook}/healthz")):
                answers = await asyncio.gather(
                    *(loop.run_in_executor(pool, _slow_loris, port, BODY_TIMEOUT_S * 5) for _ in range(20))
                )
    for answer, took_s in answers:
        head = answer.split(b"\r\n", 1)[0]
        assert head == b"HTTP/1.1 408 Request Timeout", answer[:300]
        assert b"request body not received within 2 s" in answer
        assert took_s < BODY_TIMEOUT_S * 3, f"cut off after {took_s:.1f} s"
