"""Access control, readiness and metrics of the API against the real stack.

Keys are made in the test's own database (as ``cohortstream api-keys create`` does);
every endpoint but ``/healthz`` and ``/readyz`` refuses a request without one,
researchers cannot review, revoked keys stop working, and the stored documents hold no
secret. Readiness and metrics read the test's own topics and consumer group.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_api
from api.auth import Role
from api.keys import KeyStore
from cohortstream.admin import ensure_topics
from cohortstream.cli import main
from cohortstream.events import AnnotationReviewed
from cohortstream.settings import Settings
from tests.integration.test_annotation_api import annotation, create_key
from tests.kafka_probe import read_topic
from tests.polling import eventually

OPEN = {"/healthz", "/readyz"}


@pytest.fixture
async def settings(stack_settings: Settings) -> Settings:
    # No key cache, so a revocation shows at the next request.
    settings = stack_settings.model_copy(update={"api_key_cache_ttl_s": 0.0})
    await ensure_topics(settings)
    return settings


@pytest.fixture
async def app_client(settings: Settings, db: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The API with its lifespan, sending no key unless a request does."""
    app = create_api(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=120) as client,
    ):
        client.app = app  # type: ignore[attr-defined]
        yield client


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "field"} and "Traceback" not in body["error"], body
    return body


async def test_every_endpoint_but_health_and_readiness_needs_a_key(app_client: httpx.AsyncClient) -> None:
    spec = app_client.app.openapi()  # type: ignore[attr-defined]
    checked = 0
    for path, operations in spec["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        for method in operations:
            response = await app_client.request(method.upper(), concrete)
            if path in OPEN:
                assert response.status_code in (200, 503), (path, response.status_code)
                continue
            body = _error(response, 401)
            assert response.headers["WWW-Authenticate"] == "Bearer", path
            assert body["field"] == "Authorization"
            checked += 1
    assert checked >= 9, "the annotation and MONAI Label endpoints and /metrics are listed"


async def test_researchers_read_admins_review_and_the_reviewer_defaults_to_the_key(
    app_client: httpx.AsyncClient, settings: Settings, db: Any
) -> None:
    doc = annotation()
    await db["annotations"].insert_one(dict(doc))
    researcher = await create_key(settings, Role.RESEARCHER, "reader")
    admin = await create_key(settings, Role.ADMIN, "dr.admin")

    listed = await app_client.get("/annotations", headers=_bearer(researcher))
    assert listed.status_code == 200 and [i["annotation_id"] for i in listed.json()["items"]] == [str(doc["_id"])]
    assert (await app_client.get("/datastore/", headers={"X-API-Key": researcher})).status_code == 200
    for path, body in (("accept", {}), ("reject", {"reason": "no"})):
        _error(await app_client.post(f"/annotations/{doc['_id']}/{path}", json=body, headers=_bearer(researcher)), 403)
    _error(await app_client.post("/activelearning/first", json={}, headers=_bearer(researcher)), 403)
    _error(
        await app_client.post("/infer/phantom-sphere-unet", params={"image": "1.2.3"}, headers=_bearer(researcher)), 403
    )

    accepted = await app_client.post(f"/annotations/{doc['_id']}/accept", json={}, headers=_bearer(admin))
    assert accepted.status_code == 202, accepted.text
    assert (await app_client.post("/activelearning/first", json={}, headers=_bearer(admin))).status_code == 200
    reads = await read_topic(settings, "annotation.reviewed", 1, timeout_s=30)
    event = reads[0].event
    assert isinstance(event, AnnotationReviewed) and event.reviewer == "dr.admin"


async def test_a_revoked_key_is_refused_and_no_secret_is_stored(
    app_client: httpx.AsyncClient, settings: Settings, db: Any
) -> None:
    key = await create_key(settings, Role.RESEARCHER, "soon revoked")
    key_id = key.split("_")[1]
    assert (await app_client.get("/annotations", headers=_bearer(key))).status_code == 200
    assert await KeyStore(db).revoke(key_id) is True
    assert await KeyStore(db).revoke(key_id) is False
    _error(await app_client.get("/annotations", headers=_bearer(key)), 401)
    _error(await app_client.get("/annotations", headers=_bearer(key[:-1] + ("A" if key[-1] != "A" else "B"))), 401)

    stored = [d async for d in db["api_keys"].find({})]
    assert {d["_id"] for d in stored} == {key_id}
    secret = key.split("_", 2)[2]
    assert secret not in json.dumps(stored, default=str) and key not in json.dumps(stored, default=str)
    assert stored[0]["hash"].startswith("pbkdf2_sha256$") and stored[0]["revoked_at"] is not None


async def _consume_some(settings: Settings, topic: str, produced: int, committed: int) -> None:
    """Write ``produced`` messages to ``topic`` and commit ``committed`` of them as the worker's group."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for i in range(produced):
            await producer.send_and_wait(settings.topic(topic), f"m{i}".encode(), key=b"k", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=settings.app_id, enable_auto_commit=False
    )
    partition = TopicPartition(settings.topic(topic), 0)
    consumer.assign([partition])
    await consumer.start()
    try:
        await consumer.commit({partition: committed})
    finally:
        await consumer.stop()


async def test_readiness_reports_every_dependency_and_the_lag_of_a_group(
    app_client: httpx.AsyncClient, settings: Settings
) -> None:
    await _consume_some(settings, "dead-letter", produced=5, committed=3)

    async def ready() -> dict[str, Any] | None:
        response = await app_client.get("/readyz")
        body = response.json()
        lag = body["consumer_lag"].get(settings.app_id, {})
        return body if response.status_code == 200 and lag.get("dead-letter") == 2 else None

    body = await eventually(ready, timeout_s=30, what="readiness with the group's lag")
    assert set(body["dependencies"]) == {"kafka", "mongodb", "orthanc"}
    for status in body["dependencies"].values():
        assert status["status"] == "up" and status["latency_ms"] >= 0
    assert f"{settings.app_id}-annotator" in body["consumer_lag"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_readiness_is_503_when_a_dependency_is_down(settings: Settings, db: Any) -> None:
    down = settings.model_copy(
        update={"orthanc_url": f"http://127.0.0.1:{_closed_port()}", "api_readiness_timeout_s": 3.0}
    )
    app = create_api(down)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):
        response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready" and body["dependencies"]["orthanc"]["status"] == "down"
    assert body["dependencies"]["kafka"]["status"] == "up" and "Traceback" not in json.dumps(body)


async def test_metrics_parse_and_carry_the_topic_series(app_client: httpx.AsyncClient, settings: Settings) -> None:
    _error(await app_client.get("/metrics"), 401)
    await _consume_some(settings, "ehr.record", produced=4, committed=1)
    key = await create_key(settings, Role.RESEARCHER, "prometheus")

    async def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        response = await app_client.get("/metrics", headers=_bearer(key))
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }
        lag = samples.get(("cohortstream_consumer_lag", (("group", settings.app_id), ("topic", "ehr.record"))))
        return samples if lag == 3 else None

    samples = await eventually(scraped, timeout_s=30, what="the group's lag in the metrics")
    assert samples[("cohortstream_topic_end_offset", (("topic", "ehr.record"),))] == 4
    assert (
        samples[("cohortstream_consumer_committed_offset", (("group", settings.app_id), ("topic", "ehr.record")))] == 1
    )
    assert samples[("cohortstream_topic_end_offset", (("topic", "dead-letter"),))] == 0
    assert samples[("cohortstream_dead_letters_stored", ())] == 0
    for dependency in ("kafka", "mongodb", "orthanc"):
        assert samples[("cohortstream_dependency_up", (("dependency", dependency),))] == 1
    assert any(
        name == "cohortstream_api_request_duration_seconds_count" and ("route", "/metrics") in labels
        for name, labels in samples
    )


# --- the CLI -----------------------------------------------------------------------------


def test_cli_creates_a_key_once_lists_without_secrets_and_revokes(
    cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["api-keys", "create", "--name", "ci robot", "--role", "admin"]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert re.fullmatch(r"cs_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key) and "shown only this once" in err
    key_id = key.split("_")[1]

    assert main(["api-keys", "list"]) == 0
    out, _ = capsys.readouterr()
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(k["key_id"], k["name"], k["role"], k["revoked_at"]) for k in listed] == [
        (key_id, "ci robot", "admin", None)
    ]
    assert key.split("_", 2)[2] not in out

    assert main(["api-keys", "revoke", key_id]) == 0
    assert main(["api-keys", "revoke", "0" * 12]) == 1, "an unknown key id is an error"
    assert main(["api-keys", "revoke", "not-an-id"]) == 1
    out, err = capsys.readouterr()
    assert f"revoked {key_id}" in out and "no API key" in err and "12 hex digits" in err
    with pytest.raises(SystemExit):
        main(["api-keys", "create", "--name", "x", "--role", "superuser"])
