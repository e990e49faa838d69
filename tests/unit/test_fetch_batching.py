"""Fetch batching (streams/kafka_transport.py) without a broker: the settings reach an
aiokafka consumer that has not started, and an aiokafka without the attributes it sets
is refused loudly instead of ignoring them."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from cohortstream.lanes import ARCHIVE_LANE, LANES
from cohortstream.settings import Settings
from streams.app import create_app
from streams.kafka_transport import FetchBatching
from streams.worker import build_lane_app, build_worker_app


async def test_apply_sets_what_aiokafka_builds_its_fetcher_from() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    FetchBatching(min_bytes=65536, max_wait_ms=100).apply(consumer)
    assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (65536, 100)


def test_a_consumer_without_those_attributes_is_refused() -> None:
    with pytest.raises(TypeError, match="object has no _fetch_min_bytes"):
        FetchBatching(min_bytes=1, max_wait_ms=1).apply(object())


def test_the_app_carries_the_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, consumer_fetch_min_bytes=4096, consumer_fetch_max_wait_s=0.05)
    assert create_app(settings).fetch_batching == FetchBatching(min_bytes=4096, max_wait_ms=50)  # type: ignore[attr-defined]


def test_the_archive_lane_waits_less_than_the_others(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    waits = {lane: build_lane_app(settings, lane).fetch_batching for lane in LANES}  # type: ignore[attr-defined]
    assert waits.pop(ARCHIVE_LANE) == FetchBatching(min_bytes=65536, max_wait_ms=100)
    assert set(waits.values()) == {FetchBatching(min_bytes=65536, max_wait_ms=500)}
    # Tests run every agent in one app, the archive's among them.
    assert build_worker_app(settings).fetch_batching == FetchBatching(65536, 100)  # type: ignore[attr-defined]
