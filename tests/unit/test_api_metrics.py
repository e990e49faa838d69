"""The metrics exposition without services: offsets and probe results become the
documented series, lag is end minus committed, and request latency is recorded by route
template (never by raw path)."""

from __future__ import annotations

import httpx
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_api
from api.health import DependencyStatus, Readiness
from api.kafka_offsets import (
    GroupOffsets,
    OffsetsReport,
    _group_report,
    consumer_groups,
)
from api.metrics import _Snapshot
from cohortstream.settings import Settings


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_snapshot_exposes_offsets_lag_dependencies_and_dead_letters() -> None:
    readiness = Readiness(
        dependencies={
            "kafka": DependencyStatus(True, 0.01),
            "mongodb": DependencyStatus(True, 0.002),
            "orthanc": DependencyStatus(False, 5.0, "ConnectError"),
        },
        offsets=OffsetsReport(
            end={"dicom.instance-received": 7, "dead-letter": 2},
            groups=[GroupOffsets("g", {"dicom.instance-received": 5}, {"dicom.instance-received": 2})],
        ),
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(readiness, dead_letters=2))
    samples = _samples(generate_latest(registry).decode())
    assert samples[("cohortstream_topic_end_offset", (("topic", "dicom.instance-received"),))] == 7
    assert samples[("cohortstream_topic_end_offset", (("topic", "dead-letter"),))] == 2
    assert (
        samples[("cohortstream_consumer_committed_offset", (("group", "g"), ("topic", "dicom.instance-received")))] == 5
    )
    assert samples[("cohortstream_consumer_lag", (("group", "g"), ("topic", "dicom.instance-received")))] == 2
    assert samples[("cohortstream_dependency_up", (("dependency", "orthanc"),))] == 0
    assert samples[("cohortstream_dependency_up", (("dependency", "kafka"),))] == 1
    assert samples[("cohortstream_dead_letters_stored", ())] == 2


def test_lag_is_end_minus_committed_and_uncommitted_partitions_count_whole() -> None:
    names = {"p.t": "t", "p.u": "u"}
    ends = {TopicPartition("p.t", 0): 10, TopicPartition("p.t", 1): 4, TopicPartition("p.u", 0): 3}
    committed = {TopicPartition("p.t", 0): OffsetAndMetadata(8, "")}
    report = _group_report("g", committed, ends, names)
    assert report.committed == {"t": 8} and report.lag == {"t": 2 + 4}, (
        "topics the group never committed on are left out"
    )


def test_the_reported_groups_are_the_worker_and_the_annotator() -> None:
    groups = consumer_groups(Settings(app_id="x"))
    assert groups[0] == "x" and groups[-1] == "x-annotator"
    assert "x-ehr-views" in groups and "x-dicom-archive" in groups


async def test_request_latency_is_recorded_by_route_template() -> None:
    app = create_api(Settings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        await client.get("/healthz")
        await client.get("/annotations/some-id")  # 401, but timed under its template
        await client.get("/no/such/path/1234")
    samples = _samples(generate_latest(app.state.metrics_registry).decode())
    count = "cohortstream_api_request_duration_seconds_count"
    assert samples[(count, (("method", "GET"), ("route", "/healthz"), ("status", "200")))] == 1
    assert samples[(count, (("method", "GET"), ("route", "/annotations/{annotation_id}"), ("status", "401")))] == 1
    assert samples[(count, (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
