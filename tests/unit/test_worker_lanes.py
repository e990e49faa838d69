"""Every agent of the worker runs in exactly one lane, each lane in its own consumer group."""

from __future__ import annotations

import pytest

from cohortstream.lanes import LANES, lane_app_id, lane_groups
from cohortstream.settings import Settings
from streams.worker import build_lane_app, build_worker_app


def _agent_names(app: object) -> set[str]:
    return {agent.name.rsplit(".", 1)[-1] for agent in app.agents.values()}  # type: ignore[attr-defined]


def test_lanes_partition_the_agents_of_the_worker(tmp_path: object) -> None:
    settings = Settings(app_id="lanes-test", data_dir=tmp_path)  # type: ignore[arg-type]
    every_agent = _agent_names(build_worker_app(settings))
    in_lanes = [agent for agents in LANES.values() for agent in agents]
    assert sorted(in_lanes) == sorted(every_agent), "each agent in one lane, none forgotten"
    for lane, agents in LANES.items():
        assert _agent_names(build_lane_app(settings, lane)) == set(agents)


def test_each_lane_has_its_own_consumer_group() -> None:
    settings = Settings(app_id="cs")
    groups = lane_groups(settings)
    assert len(groups) == len(LANES) and all(group.startswith("cs-") for group in groups)
    assert groups[lane_app_id(settings, "ehr-views")] == ("ehr-views",)
    with pytest.raises(KeyError, match="unknown worker lane"):
        lane_app_id(settings, "nope")


def test_lane_metrics_ports_must_not_take_the_annotators() -> None:
    """Found by `make up`: lanes on 9464.. took the annotator's 9465, and one lane
    restarted for ever on 'address already in use'."""
    from cohortstream.errors import ConfigurationError
    from streams.supervisor import check_metrics_ports

    with pytest.raises(ConfigurationError, match="COHORTSTREAM_ANNOTATOR_METRICS_PORT=9465"):
        check_metrics_ports(Settings(worker_metrics_port=9464, annotator_metrics_port=9465), len(LANES))
    check_metrics_ports(Settings(worker_metrics_port=9470, annotator_metrics_port=9465), len(LANES))
    check_metrics_ports(Settings(worker_metrics_port=0, annotator_metrics_port=9465), len(LANES))
