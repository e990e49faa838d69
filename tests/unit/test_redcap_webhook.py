"""The trigger endpoint's answers, with the simulator and an in-memory publisher (no Kafka).

The Kafka side (acknowledged before 200) is tested in tests/integration/test_redcap_trigger.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from cohortstream.events import Event, RedcapRecordChanged
from cohortstream.publisher import PublishError
from cohortstream.settings import RedcapProject, Settings
from producers.redcap.api import RedcapApiClient
from producers.redcap.webhook import TRIGGER_PATH, create_trigger_app
from tests.redcap_simulator import RedcapSimulator, cohort_project, running_simulator

TOKEN = "C" * 32


class MemoryPublisher:
    """Stands in for EventPublisher: keeps events, or fails like a Kafka outage."""

    def __init__(self) -> None:
        self.published: list[tuple[Event, str]] = []
        self.fail = False
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def publish(self, event: Event, key: str, topic: str | None = None) -> Any:
        if self.fail:
            raise PublishError("simulated outage")
        self.published.append((event, key))


@pytest.fixture
def sim() -> Iterator[RedcapSimulator]:
    with running_simulator(cohort_project(token=TOKEN)) as simulator:
        yield simulator


@asynccontextmanager
async def make_client(
    sim: RedcapSimulator, publisher: MemoryPublisher, peer: str = "127.0.0.1", **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        redcap_projects=[
            RedcapProject(
                redcap_url="https://redcap.example.org/",
                project_id="42",
                api_token=SecretStr(TOKEN),
                api_url=sim.api_url,
            )
        ],
        sink_retry_attempts=3,
        sink_retry_max_delay_s=0.05,
        **overrides,
    )
    app = create_trigger_app(settings, publisher, lambda p: RedcapApiClient(settings, p, retry_first_delay_s=0.01))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(peer, 50123))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://det.test") as client,
    ):
        yield client


def det(**changes: str) -> dict[str, str]:
    form = {
        "redcap_url": "https://redcap.example.org/",
        "project_url": "https://redcap.example.org/redcap_v14/index.php?pid=42",
        "project_id": "42",
        "username": "jdoe",
        "record": "1001",
        "instrument": "baseline",
        "redcap_event_name": "followup_1_arm_1",
        "baseline_complete": "2",
    }
    form.update(changes)
    return {k: v for k, v in form.items() if v != "<drop>"}


async def test_a_trigger_publishes_the_typed_record(sim: RedcapSimulator) -> None:
    publisher = MemoryPublisher()
    async with make_client(sim, publisher) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        response = await client.post(TRIGGER_PATH, data=det())
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "published", "published": 1}
    [(event, key)] = publisher.published
    assert isinstance(event, RedcapRecordChanged)
    assert key == "42/1001"
    assert (event.event_name, event.instrument, event.values["symptoms"]) == ("followup_1_arm_1", "baseline", ["-1"])
    assert publisher.started and publisher.stopped


async def test_missing_fields_get_400_naming_them(sim: RedcapSimulator) -> None:
    publisher = MemoryPublisher()
    async with make_client(sim, publisher) as client:
        response = await client.post(TRIGGER_PATH, data=det(record="<drop>", instrument="<drop>"))
    assert response.status_code == 400
    body = response.json()
    assert body["missing"] == ["instrument", "record"] and "record" in body["error"]
    assert publisher.published == []


async def test_a_json_body_is_not_a_trigger(sim: RedcapSimulator) -> None:
    async with make_client(sim, MemoryPublisher()) as client:
        response = await client.post(TRIGGER_PATH, json=det())
    assert response.status_code == 400


@pytest.mark.parametrize("change", [{"project_id": "43"}, {"redcap_url": "https://other.example.org/"}])
async def test_unconfigured_project_gets_403(sim: RedcapSimulator, change: dict[str, str]) -> None:
    async with make_client(sim, MemoryPublisher()) as client:
        response = await client.post(TRIGGER_PATH, data=det(**change))
    assert response.status_code == 403 and response.json() == {"error": "forbidden"}
    assert sim.requests == []  # nothing was pulled


async def test_secret_and_network_checks(sim: RedcapSimulator) -> None:
    async with make_client(sim, MemoryPublisher(), redcap_trigger_secret=SecretStr("s3cret")) as client:
        assert (await client.post(TRIGGER_PATH, data=det())).status_code == 403
        assert (await client.post(f"{TRIGGER_PATH}?secret=nope", data=det())).status_code == 403
        assert (await client.post(f"{TRIGGER_PATH}?secret=s3cret", data=det())).status_code == 200
    async with make_client(sim, MemoryPublisher(), redcap_allowed_networks=["10.0.0.0/8"]) as client:
        # TestClient's peer is "testclient", never in a network: refused before parsing.
        assert (await client.post(TRIGGER_PATH, data={})).status_code == 403


async def test_redcap_outage_gets_503_and_publishes_nothing(sim: RedcapSimulator) -> None:
    publisher = MemoryPublisher()
    sim.fail_next(100, status=503)
    async with make_client(sim, publisher) as client:
        response = await client.post(TRIGGER_PATH, data=det())
    assert response.status_code == 503 and "error" in response.json()
    assert publisher.published == []


async def test_transient_errors_are_retried_within_one_trigger(sim: RedcapSimulator) -> None:
    publisher = MemoryPublisher()
    sim.fail_next(2, status=502)
    async with make_client(sim, publisher) as client:
        assert (await client.post(TRIGGER_PATH, data=det())).status_code == 200
    assert len(publisher.published) == 1


async def test_unknown_instrument_gets_502(sim: RedcapSimulator) -> None:
    async with make_client(sim, MemoryPublisher()) as client:
        response = await client.post(TRIGGER_PATH, data=det(instrument="nosuchform"))
    assert response.status_code == 502
    assert "Traceback" not in response.text


async def test_kafka_outage_gets_503(sim: RedcapSimulator) -> None:
    publisher = MemoryPublisher()
    publisher.fail = True
    async with make_client(sim, publisher) as client:
        response = await client.post(TRIGGER_PATH, data=det())
    assert response.status_code == 503 and response.json() == {"error": "event store unavailable"}


async def test_no_row_for_the_form_is_answered_200_with_nothing_published(sim: RedcapSimulator) -> None:
    publisher = MemoryPublisher()
    async with make_client(sim, publisher) as client:
        response = await client.post(TRIGGER_PATH, data=det(record="gone"))
    assert response.status_code == 200 and response.json()["published"] == 0
    assert publisher.published == []


async def test_metadata_is_read_once_for_many_triggers(sim: RedcapSimulator) -> None:
    async with make_client(sim, MemoryPublisher()) as client:
        for _ in range(3):
            assert (await client.post(TRIGGER_PATH, data=det())).status_code == 200
    assert len(sim.requests_for("metadata")) == 1
    assert len(sim.requests_for("record")) == 3
