"""faust's aiokafka transport, with one fix: a partition nobody ever committed is read
from its beginning after every rebalance.

After a rebalance faust drops the records its consumer fetched while the tables were
recovering (its flow control clears the queues), then seeks every stream partition back
to its committed offset so they are read again. aiokafka's ``seek_to_committed`` only
seeks partitions that *have* a committed offset above 0. A partition that its previous
owner never committed (a worker killed with SIGKILL before its first commit) therefore
stayed where the dropped fetch had left it: past records no agent ever processed. Seen in
the two-worker SIGKILL test: the survivor took such partitions over at position 12 of 12
and the series whose 12 instances they held never completed. ``auto_offset_reset =
"earliest"`` says what an uncommitted partition means; this consumer applies it there too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

__all__ = ["Transport", "UncommittedFromBeginningConsumer"]

log = logging.getLogger(__name__)


def _seek_to_first_offset(consumer: Any, partitions: list[Any]) -> None:
    """Seek like aiokafka's ``seek_to_committed`` does (``seek``: the position is set at
    once, no request in between while the partitions are already resumed), to offset 0:
    where retention has removed it, the fetch is out of range and aiokafka resets to the
    earliest offset (``auto_offset_reset``). Neither ``seek_to_beginning`` (its reset
    comes later) nor asking for the beginning offsets first: instances were seen skipped
    when a fetch landed in that gap."""
    for tp in partitions:
        consumer.seek(tp, 0)


class UncommittedFromBeginningConsumer(faust_aiokafka.Consumer):
    """Seeks to committed offsets, and uncommitted stream partitions to their beginning."""

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed: Mapping[Any, int] = await super().seek_to_committed()
        changelogs = self.app.tables.changelog_topics
        uncommitted = [tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs]
        if uncommitted:
            log.info(
                "partitions without a committed offset are read from their beginning",
                extra={"partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in uncommitted)},
            )
            _seek_to_first_offset(self._thread._ensure_consumer(), uncommitted)
        return committed


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport with :class:`UncommittedFromBeginningConsumer`."""

    Consumer = UncommittedFromBeginningConsumer
