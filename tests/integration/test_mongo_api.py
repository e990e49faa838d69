"""PyMongo's async client against the real MongoDB-wire server of the local stack: the
operations the views rely on, within the subset the local server and MongoDB both serve."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from cohortstream.mongo import AsyncDatabase, mongo_client, mongo_database
from cohortstream.settings import Settings


@pytest.fixture
async def database(stack_settings: Settings) -> AsyncIterator[AsyncDatabase]:
    client = mongo_client(stack_settings)
    yield mongo_database(client, stack_settings)
    await client.drop_database(stack_settings.mongo_database)
    await client.close()


async def _upsert_study(db: AsyncDatabase, series_uid: str) -> None:
    await db.patients.update_one(
        {"_id": "SUBJ-0001"},
        {
            "$setOnInsert": {"first_seen": datetime(2026, 1, 1, tzinfo=UTC)},
            "$set": {"sex": "F"},
            "$addToSet": {"series": series_uid, "modalities": "MR"},
        },
        upsert=True,
    )


async def test_upserts_are_idempotent_and_read_back(database: AsyncDatabase) -> None:
    assert (await database.command("ping"))["ok"] == 1.0
    for _ in range(2):  # replaying the same events changes nothing
        await _upsert_study(database, "1.2.3.1")
    await _upsert_study(database, "1.2.3.2")
    doc = await database.patients.find_one({"_id": "SUBJ-0001"})
    assert doc is not None
    assert doc["series"] == ["1.2.3.1", "1.2.3.2"]
    assert doc["modalities"] == ["MR"]
    assert doc["first_seen"] == datetime(2026, 1, 1, tzinfo=UTC)
    assert await database.patients.count_documents({}) == 1


async def test_counters_and_group_sum(database: AsyncDatabase) -> None:
    for modality, n in [("MR", 3), ("CT", 2)]:
        for _ in range(n):
            await database.counters.update_one({"_id": f"series:{modality}"}, {"$inc": {"n": 1}}, upsert=True)
    counts = {d["_id"]: d["n"] async for d in database.counters.find({})}
    assert counts == {"series:MR": 3, "series:CT": 2}

    await database.series.insert_many([{"modality": m} for m in ["MR", "MR", "CT"]])
    cursor = await database.series.aggregate(  # a coroutine that returns the cursor
        [{"$group": {"_id": "$modality", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]
    )
    grouped = await cursor.to_list()
    assert grouped == [{"_id": "CT", "n": 1}, {"_id": "MR", "n": 2}]
