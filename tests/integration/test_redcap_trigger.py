"""The REDCap edge on the real Kafka of the local stack: the DET endpoint served by uvicorn
on a free port, the REDCap API simulator, real form-encoded triggers posted with httpx,
events read back from the topic with the codec.

Every wait is bounded; nothing sleeps for an effect.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from cohortstream.admin import ensure_topics
from cohortstream.events import RedcapRecordChanged, RedcapTrigger
from cohortstream.publisher import EventPublisher
from cohortstream.settings import RedcapProject, Settings
from producers.redcap.api import RedcapApiClient
from producers.redcap.sync import sync_project
from producers.redcap.webhook import TRIGGER_PATH, create_trigger_app
from tests.kafka_probe import read_topic
from tests.net import free_port
from tests.polling import eventually
from tests.redcap_simulator import RedcapSimulator, cohort_project, running_simulator

TOKEN = "D" * 32
REDCAP_URL = "https://redcap.example.org/"


@pytest.fixture
def sim() -> Iterator[RedcapSimulator]:
    with running_simulator(cohort_project(token=TOKEN)) as simulator:
        yield simulator


@pytest.fixture
async def settings(stack_settings: Settings, sim: RedcapSimulator) -> Settings:
    settings = stack_settings.model_copy(
        update={
            "redcap_projects": [
                RedcapProject(redcap_url=REDCAP_URL, project_id="42", api_token=SecretStr(TOKEN), api_url=sim.api_url)
            ],
            "redcap_trigger_secret": SecretStr("det-secret"),
            "sink_retry_attempts": 4,
            "sink_retry_max_delay_s": 0.2,
        }
    )
    await ensure_topics(settings)
    return settings


@pytest.fixture
async def webhook(settings: Settings) -> AsyncIterator[str]:
    """The app served by uvicorn on 127.0.0.1 and a free port; yields the trigger URL."""
    app = create_trigger_app(
        settings, EventPublisher(settings), lambda p: RedcapApiClient(settings, p, retry_first_delay_s=0.05)
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()  # the server failed to start: raise its error
        return bool(server.started)

    await eventually(started, timeout_s=30, what="the trigger endpoint to listen")
    yield f"http://127.0.0.1:{port}{TRIGGER_PATH}?secret=det-secret"
    server.should_exit = True
    await asyncio.wait_for(task, timeout=30)


async def read_events(
    settings: Settings, expected: int, timeout_s: float = 30
) -> list[tuple[str, RedcapRecordChanged]]:
    """The events on the topic with their keys, once ``expected`` arrived (and no extra)."""
    found = await read_topic(settings, "redcap.record-changed", expected, timeout_s=timeout_s, drain_s=1.0)
    assert all(isinstance(r.event, RedcapRecordChanged) and r.key is not None for r in found)
    return [(str(r.key), r.event) for r in found]  # type: ignore[misc]


def det(**changes: str) -> dict[str, str]:
    form = {
        "redcap_url": REDCAP_URL,
        "project_url": f"{REDCAP_URL}redcap_v14.0.0/index.php?pid=42",
        "project_id": "42",
        "username": "jdoe",
        "record": "1001",
        "instrument": "medication",
        "redcap_event_name": "baseline_arm_1",
        "redcap_repeat_instrument": "medication",
        "redcap_repeat_instance": "2",
        "redcap_data_access_group": "london",
        "medication_complete": "0",
    }
    form.update(changes)
    return form


async def test_trigger_event_is_in_kafka_when_the_endpoint_answers_200(
    settings: Settings, webhook: str, sim: RedcapSimulator
) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(webhook, data=det())
    assert response.status_code == 200, response.text
    # Acknowledged before 200: the event is readable right away, no waiting for a flush.
    [(key, event)] = await read_events(settings, 1, timeout_s=10)
    assert key == "42/1001"
    assert event.trigger is RedcapTrigger.DATA_ENTRY_TRIGGER and event.producer == "redcap-trigger"
    assert (event.redcap_url, event.project_id, event.record_id) == (REDCAP_URL, "42", "1001")
    assert (event.event_name, event.instrument, event.repeat_instrument, event.repeat_instance) == (
        "baseline_arm_1",
        "medication",
        "medication",
        2,
    )
    assert event.data_access_group == "london"
    assert event.values == {"med_name": "atorvastatin", "med_dose_mg": 20.0, "med_start": None, "med_route": "1"}
    assert event.labels == {"med_route": "Oral"}
    [pull] = sim.requests_for("record")
    assert (pull["records"], pull["forms"], pull["events"]) == (["1001"], ["medication"], ["baseline_arm_1"])


async def test_refused_and_invalid_triggers_publish_nothing(
    settings: Settings, webhook: str, sim: RedcapSimulator
) -> None:
    no_secret = webhook.split("?")[0]
    async with httpx.AsyncClient(timeout=60) as client:
        assert (await client.post(no_secret, data=det())).status_code == 403
        assert (await client.post(webhook.replace("det-secret", "guess"), data=det())).status_code == 403
        assert (await client.post(webhook, data=det(project_id="99"))).status_code == 403
        assert (await client.post(webhook, data=det(redcap_url="https://elsewhere.example.org/"))).status_code == 403
        response = await client.post(webhook, data={k: v for k, v in det().items() if k != "record"})
        assert response.status_code == 400 and response.json()["missing"] == ["record"]
        # one accepted trigger as a marker: it must be the only event on the topic
        assert (
            await client.post(
                webhook,
                data=det(
                    record="MUC-07",
                    instrument="demographics",
                    redcap_repeat_instrument="",
                    redcap_repeat_instance="",
                    redcap_data_access_group="",
                    demographics_complete="0",
                ),
            )
        ).status_code == 200
    events = await read_events(settings, 1)
    assert [(k, e.instrument) for k, e in events] == [("42/MUC-07", "demographics")]
    assert len(sim.requests_for("record")) == 1


async def test_redcap_503_then_ok_still_gives_one_event(settings: Settings, webhook: str, sim: RedcapSimulator) -> None:
    sim.fail_next(2, status=503)
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(webhook, data=det(redcap_repeat_instance="1", medication_complete="2"))
    assert response.status_code == 200, response.text
    events = await read_events(settings, 1)
    assert len(events) == 1
    assert events[0][1].values["med_name"] == "metformin"


async def test_persistent_redcap_outage_answers_503(settings: Settings, webhook: str, sim: RedcapSimulator) -> None:
    sim.fail_next(1000, status=503)
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(webhook, data=det())
    assert response.status_code == 503
    assert response.json() == {"error": "REDCap API unavailable"}


async def test_full_sync_twice_publishes_the_same_events(settings: Settings, sim: RedcapSimulator) -> None:
    project = settings.redcap_projects[0]
    async with EventPublisher(settings) as publisher, RedcapApiClient(settings, project) as client:
        first = await sync_project(settings, project, publisher, client, batch_size=1)
        second = await sync_project(settings, project, publisher, client, batch_size=1)
    assert first.records == second.records == 2
    assert first.events == second.events == 6
    # record ids listed once, then one export per record (batch size 1), each time
    assert len(sim.requests_for("record")) == 2 * (1 + 2)
    events = await read_events(settings, 12)
    assert len(events) == 12

    def content(event: RedcapRecordChanged) -> dict[str, Any]:
        return event.model_dump(exclude={"event_id", "emitted_at"})

    runs = [events[:6], events[6:]]
    for run in runs:
        assert all(e.trigger is RedcapTrigger.FULL_SYNC and e.producer == "redcap-sync" for _, e in run)
    assert sorted(map(str, (content(e) for _, e in runs[0]))) == sorted(map(str, (content(e) for _, e in runs[1])))
    assert {k for k, _ in events} == {"42/1001", "42/MUC-07"}
    keys = {(e.record_id, e.event_name, e.instrument, e.repeat_instance) for _, e in events}
    assert len(keys) == 6
