"""Compare views as sets: a replay must rebuild the same documents.

Arrays in the views are sets (``$addToSet``): their order is the order in which batches
happened to be cut, which differs between a live run and a replay. A snapshot sorts the
documents by ``_id`` and every array by a canonical form of its items, so it compares
contents, not arrival order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = ["canonical", "views_snapshot"]


def canonical(value: Any) -> Any:
    """``value`` with every list sorted (recursively), dict keys kept."""
    if isinstance(value, dict):
        return {key: canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        items = [canonical(item) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True, default=str))
    return value


async def views_snapshot(db: Any, collections: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Every document of ``collections``, by ``_id``, arrays as sets."""
    return {
        name: [canonical(doc) for doc in await db[name].find({}).sort("_id", 1).to_list(None)] for name in collections
    }
