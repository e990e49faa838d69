"""The MongoDB views sink against the real MongoDB-wire server (secantusd-rs in the test stack).

Large batches whose statements match existing documents used to hang FerretDB v1, the
former local server (a pooled connection held per matching statement until the command
ended); the sink merges updates per document and sends at most ``WRITE_CHUNK``
statements per command, and these tests keep large batches over existing documents
covered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from cohortstream.events import DicomInstanceReceived
from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.settings import Settings
from consumers.dicom_views import DicomViews
from tests.examples import FIXED_TIME, example_events
from tests.views_snapshot import views_snapshot

INSTANCES = 240  # > 2 × 100: what a replay after a crash hands the views agent in one batch


def _study(count: int) -> list[DicomInstanceReceived]:
    template = example_events()[0]
    assert isinstance(template, DicomInstanceReceived)
    events = []
    for n in range(count):
        series = f"{template.study_instance_uid}.{n % 3 + 1}"
        events.append(
            template.model_copy(
                update={
                    "series_instance_uid": series,
                    "sop_instance_uid": f"{series}.{n}",
                    "instance_number": n,
                    "received_at": FIXED_TIME + timedelta(milliseconds=n),
                }
            )
        )
    return events


@pytest.fixture
async def views(stack_settings: Settings) -> AsyncIterator[DicomViews]:
    sink = DicomViews(stack_settings)
    await sink.setup()
    yield sink
    await sink.close()
    client = mongo_client(stack_settings)
    await client.drop_database(stack_settings.mongo_database)
    await client.close()


async def _snapshot(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    client = mongo_client(settings)
    try:
        db = mongo_database(client, settings)
        return await views_snapshot(db, ("instances", "series", "studies", "patients"))
    finally:
        await client.close()


async def test_large_batch_over_existing_documents_completes_and_replays_identically(
    views: DicomViews, stack_settings: Settings
) -> None:
    events = _study(INSTANCES)
    # The archive agent often confirms instances before the views agent sees them, so
    # every instance document already exists when the batch arrives.
    for event in events:
        await views.record_archived(event)
    await asyncio.wait_for(views.apply(events), timeout=120)
    first = await _snapshot(stack_settings)
    await asyncio.wait_for(views.apply(events), timeout=120)  # the replay after a crash
    assert await _snapshot(stack_settings) == first

    assert len(first["instances"]) == INSTANCES
    assert all(doc["in_orthanc"] and doc["sha256"] == "a" * 64 for doc in first["instances"])
    assert [doc["instance_count"] for doc in first["series"]] == [80, 80, 80]
    (study,) = first["studies"]
    assert study["instance_count"] == INSTANCES and study["series_count"] == 3
    assert sorted(study["series"]) == [doc["_id"] for doc in first["series"]]
    assert study["modalities"] == ["MR"]
    assert study["first_received_at"].replace(tzinfo=FIXED_TIME.tzinfo) == FIXED_TIME
    (patient,) = first["patients"]
    assert patient["studies"] == [study["_id"]] and patient["study_count"] == 1


async def test_batches_cut_differently_give_the_same_views(views: DicomViews, stack_settings: Settings) -> None:
    events = _study(30)
    for start in range(0, len(events), 7):
        await views.apply(events[start : start + 7])
    cut_small = await _snapshot(stack_settings)
    await views.apply(events)
    assert await _snapshot(stack_settings) == cut_small
