"""The REDCap API client against the simulator (a real HTTP server on loopback)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from cohortstream.settings import RedcapProject, Settings
from producers.redcap.api import RedcapApiClient
from producers.redcap.errors import RedcapPermanentApiError, RedcapTransientApiError
from tests.redcap_simulator import (
    NO_PERMISSION,
    RedcapSimulator,
    cohort_project,
    running_simulator,
)


@pytest.fixture
def sim() -> Iterator[RedcapSimulator]:
    with running_simulator(cohort_project(token="A" * 32)) as simulator:
        yield simulator


def client_for(sim: RedcapSimulator, token: str = "A" * 32, **settings: object) -> RedcapApiClient:
    s = Settings(**{"sink_retry_attempts": 3, "sink_retry_max_delay_s": 0.05, "redcap_api_timeout_s": 2.0, **settings})  # type: ignore[arg-type]
    project = RedcapProject(
        redcap_url="https://redcap.example.org/", project_id="42", api_token=SecretStr(token), api_url=sim.api_url
    )
    return RedcapApiClient(s, project, retry_first_delay_s=0.01)


async def test_records_are_exported_restricted_by_the_real_parameters(sim: RedcapSimulator) -> None:
    async with client_for(sim) as client:
        rows = await client.export_records(records=["1001"], forms=["medication"], events=["baseline_arm_1"])
    instances = sorted(r["redcap_repeat_instance"] for r in rows)
    assert instances == ["", "1", "2"]
    assert all(r["record_id"] == "1001" for r in rows)
    [request] = sim.requests_for("record")
    assert (
        request["records"] == ["1001"]
        and request["forms"] == ["medication"]
        and request["events"] == ["baseline_arm_1"]
    )
    assert request["type"] == "flat" and request["format"] == "json" and request["rawOrLabel"] == "raw"
    assert "token" not in request


async def test_record_ids_are_listed_once_each(sim: RedcapSimulator) -> None:
    async with client_for(sim) as client:
        assert await client.export_record_ids("record_id") == ["1001", "MUC-07"]
    assert sim.requests_for("record")[0]["fields"] == ["record_id"]


async def test_the_dictionary_is_cached_for_its_ttl(sim: RedcapSimulator) -> None:
    now = [0.0]
    s = Settings(redcap_metadata_ttl_s=60)
    project = RedcapProject(
        redcap_url="https://r.example/", project_id="42", api_token=SecretStr("A" * 32), api_url=sim.api_url
    )
    async with RedcapApiClient(s, project, clock=lambda: now[0]) as client:
        first = await client.data_dictionary()
        now[0] = 59
        assert await client.data_dictionary() is first
        assert len(sim.requests_for("metadata")) == 1
        now[0] = 61
        assert await client.data_dictionary() is not first
        assert len(sim.requests_for("metadata")) == 2
    assert first.forms == ("demographics", "baseline", "medication")


async def test_wrong_token_is_a_permanent_error_naming_redcaps_message(sim: RedcapSimulator) -> None:
    async with client_for(sim, token="B" * 32) as client:
        with pytest.raises(RedcapPermanentApiError, match=NO_PERMISSION) as info:
            await client.export_metadata()
    assert info.value.status == 403 and not info.value.transient
    assert len(sim.requests) == 1  # not retried


async def test_unknown_form_is_a_permanent_error_not_retried(sim: RedcapSimulator) -> None:
    async with client_for(sim) as client:
        with pytest.raises(RedcapPermanentApiError, match="'nosuchform'"):
            await client.export_records(forms=["nosuchform"])
    assert len(sim.requests) == 1


async def test_unknown_parameter_is_rejected_by_the_simulator(sim: RedcapSimulator) -> None:
    async with client_for(sim) as client:
        with pytest.raises(RedcapPermanentApiError, match="filterLogic"):
            await client._post("record", {"filterLogic": "[age] > 30"})


async def test_transient_503_is_retried_then_succeeds(sim: RedcapSimulator) -> None:
    sim.fail_next(2, status=503)
    async with client_for(sim) as client:
        rows = await client.export_records(records=["MUC-07"])
    assert [r["record_id"] for r in rows] == ["MUC-07"]
    assert len(sim.requests) == 1  # the simulator logs only requests it answered for real


async def test_dropped_connection_and_timeout_are_retried(sim: RedcapSimulator) -> None:
    sim.drop_next(1)
    sim.delay_next(1, 0.5)
    async with client_for(sim, redcap_api_timeout_s=0.2) as client:
        rows = await client.export_records(records=["MUC-07"])
    assert len(rows) == 1


async def test_persistent_5xx_fails_after_the_bounded_attempts(sim: RedcapSimulator) -> None:
    sim.fail_next(10, status=500)
    async with client_for(sim) as client:
        with pytest.raises(RedcapTransientApiError, match="HTTP 500") as info:
            await client.export_metadata()
    assert info.value.transient and info.value.status == 500
    # three attempts used, seven faults left
    assert sim._faults[0].count == 7


async def test_unreachable_server_is_transient() -> None:
    with running_simulator() as sim:
        url = sim.api_url
    s = Settings(sink_retry_attempts=2, sink_retry_max_delay_s=0.01)
    project = RedcapProject(redcap_url="https://r.example/", project_id="1", api_token=SecretStr("A" * 32), api_url=url)
    async with RedcapApiClient(s, project, retry_first_delay_s=0.01) as client:
        with pytest.raises(RedcapTransientApiError, match="unreachable"):
            await client.export_metadata()
