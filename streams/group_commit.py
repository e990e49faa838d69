"""Group commit: concurrent callers' writes applied together, each caller waiting for its own.

The archive agent runs ``archive_concurrency`` actors; each marks its instance archived
in the views once Orthanc holds it, and acknowledges its message only after that write.
One MongoDB round trip per instance made the views the archive's bottleneck under load.
With :class:`GroupCommit`, an actor hands its item over and waits: when no write is
running the item goes out at once (no added latency when idle); items that arrive while
one runs go out together in the next write. A failed write fails every caller in it, so
no caller acknowledges a message whose effect was not applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Apply items from concurrent callers in batches of at most ``max_batch``."""

    def __init__(self, apply: Callable[[Sequence[T]], Awaitable[None]], max_batch: int = 500) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._apply = apply
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        """Return once ``item`` was applied; raise what applying its batch raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            waiting = [(item, future) for item, future in batch if not future.done()]  # a caller may be cancelled
            if not waiting:
                continue
            try:
                await self._apply([item for item, _ in waiting])
            except Exception as exc:
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in waiting:
                    if not future.done():
                        future.set_result(None)
