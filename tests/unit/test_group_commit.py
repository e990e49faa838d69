"""Group commit: items from concurrent callers go out together; each caller waits for the
write that carried its item, and learns when it failed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from streams.group_commit import GroupCommit


async def test_an_idle_caller_is_written_at_once_and_callers_during_a_write_share_the_next() -> None:
    writes: list[list[int]] = []
    gate = asyncio.Event()

    async def apply(items: Sequence[int]) -> None:
        writes.append(list(items))
        if len(writes) == 1:
            await gate.wait()  # the first write is slow: the others queue behind it

    commit: GroupCommit[int] = GroupCommit(apply)
    first = asyncio.create_task(commit.submit(0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert writes == [[0]], "an item goes out at once when nothing is being written"
    others = [asyncio.create_task(commit.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    assert not first.done() and not any(task.done() for task in others)
    gate.set()
    await asyncio.gather(first, *others)
    assert writes == [[0], [1, 2, 3, 4, 5]]


async def test_batches_are_bounded() -> None:
    writes: list[list[int]] = []

    async def apply(items: Sequence[int]) -> None:
        writes.append(list(items))

    commit: GroupCommit[int] = GroupCommit(apply, max_batch=2)
    await asyncio.gather(*(commit.submit(i) for i in range(5)))
    assert sorted(i for write in writes for i in write) == [0, 1, 2, 3, 4]
    assert max(len(write) for write in writes) <= 2


async def test_a_failed_write_fails_every_caller_in_it_and_not_the_next() -> None:
    calls = 0

    async def apply(items: Sequence[int]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("view store refused the batch")

    commit: GroupCommit[int] = GroupCommit(apply)
    results = await asyncio.gather(commit.submit(1), commit.submit(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    await commit.submit(3)  # the next write goes through


def test_a_batch_holds_at_least_one_item() -> None:
    async def apply(items: Sequence[int]) -> None:
        return None

    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(apply, max_batch=0)
