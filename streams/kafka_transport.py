"""faust's aiokafka transport, with one fix and one setting faust does not pass on.

Fetch batching: faust builds its aiokafka consumer with aiokafka's ``fetch_min_bytes=1``
and a fixed ``fetch_max_wait_ms=1500``, so every fetch returned at the first new
message. A lane that keeps up then wakes for each message (a fetch, a hand-over from the
consumer thread, a commit cycle), and the broker serves a fetch over every partition of
the lane each time: in the ingest benchmark such a worker spent about twice the CPU per
instance (lanes and broker) of one working through a backlog. :class:`FetchBatching`
(``consumer_fetch_min_bytes``, ``consumer_fetch_max_wait_s``) lets a fetch wait a
little for more.

The fix: a partition nobody ever committed is read from its beginning after every
rebalance.

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
from dataclasses import dataclass
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

__all__ = ["FetchBatching", "FetchBatchingConsumerThread", "Transport", "UncommittedFromBeginningConsumer"]

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


@dataclass(frozen=True)
class FetchBatching:
    """How long a fetch may wait for how much: aiokafka's ``fetch_min_bytes`` and
    ``fetch_max_wait_ms``."""

    min_bytes: int
    max_wait_ms: int

    def apply(self, consumer: Any) -> None:
        """Set on an aiokafka consumer that has not started: ``start()`` builds its fetcher
        from these two attributes (aiokafka 0.14, as installed here). Raises ``TypeError``
        where they are missing, rather than let another aiokafka ignore the settings
        silently."""
        for attribute in ("_fetch_min_bytes", "_fetch_max_wait_ms"):
            if not hasattr(consumer, attribute):
                raise TypeError(f"{type(consumer).__name__} has no {attribute}: cannot apply {self}")
        consumer._fetch_min_bytes = self.min_bytes
        consumer._fetch_max_wait_ms = self.max_wait_ms


class FetchBatchingConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread, whose aiokafka consumer takes the app's ``fetch_batching``
    (:class:`FetchBatching`; none: faust's own)."""

    def _create_consumer(self, loop: Any) -> Any:
        consumer = super()._create_consumer(loop)
        batching = getattr(self.consumer.app, "fetch_batching", None)
        if batching is not None:
            batching.apply(consumer)
        return consumer


class UncommittedFromBeginningConsumer(faust_aiokafka.Consumer):
    """Seeks to committed offsets, and uncommitted stream partitions to their beginning;
    its consumer thread batches fetches (:class:`FetchBatchingConsumerThread`)."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return FetchBatchingConsumerThread(self, loop=self.loop, beacon=self.beacon)

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
