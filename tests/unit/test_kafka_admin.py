"""Waiting for the consumer groups' coordinator (cohortstream/admin.py), without a broker:
a stand-in answers ``find_coordinator`` as a new Kafka does while ``__consumer_offsets``
is being created, then as a ready one."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import GroupCoordinatorNotAvailableError, GroupLoadInProgressError, UnknownError

from cohortstream.admin import await_group_coordinators
from cohortstream.errors import CohortStreamError


class CoordinatorAnswers:
    """``find_coordinator`` that raises the queued errors in order, then answers broker 1."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.asked: list[str] = []

    async def find_coordinator(self, group: str) -> int:
        self.asked.append(group)
        if self.errors:
            raise self.errors.pop(0)
        return 1


async def test_waits_while_the_coordinator_is_created_or_loaded() -> None:
    admin = CoordinatorAnswers(GroupCoordinatorNotAvailableError(), GroupLoadInProgressError())
    await await_group_coordinators(admin, ["lane-a", "lane-b"], timeout_s=5, interval_s=0.001)  # type: ignore[arg-type]
    assert admin.asked == ["lane-a", "lane-a", "lane-a", "lane-b"]


async def test_no_coordinator_within_the_timeout_names_the_group() -> None:
    admin: Any = CoordinatorAnswers(*[GroupCoordinatorNotAvailableError() for _ in range(10_000)])
    with pytest.raises(CohortStreamError, match="no group coordinator for consumer group 'lane-a' after 0.05 s"):
        await await_group_coordinators(admin, ["lane-a"], timeout_s=0.05, interval_s=0.001)


async def test_other_kafka_errors_are_not_waited_out() -> None:
    admin: Any = CoordinatorAnswers(UnknownError())
    with pytest.raises(UnknownError):
        await await_group_coordinators(admin, ["lane-a"], timeout_s=5, interval_s=0.001)
    assert admin.asked == ["lane-a"]
