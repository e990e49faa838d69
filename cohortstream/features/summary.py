"""What the dashboard shows of the features: block coverage (share of subjects with each
block) and the distribution of chosen columns (a histogram of a numeric column, counts
of a coded one). One pass over the ``features`` collection, projected to the blocks and
the chosen columns only."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from pymongo.asynchronous.database import AsyncDatabase

from cohortstream.features.columns import BLOCKS

__all__ = ["HISTOGRAM_BINS", "MAX_CHOSEN", "default_choice", "feature_summary"]

HISTOGRAM_BINS = 20
MAX_CHOSEN = 12

Document = dict[str, Any]


def default_choice(columns: Sequence[str]) -> list[str]:
    """Age, the first lab means and the imaging measurements (at most six)."""
    wanted = [c for c in columns if c == "age"]
    wanted += [c for c in columns if c.startswith("lab_") and c.endswith("_mean")][:3]
    wanted += [c for c in columns if c.startswith("img_") and c.endswith("_ml")]
    return wanted[:6]


def _distribution(values: list[Any], missing: int) -> dict[str, Any]:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if numbers and len(numbers) == len(values):
        counts, edges = np.histogram(np.asarray(numbers, dtype=float), bins=HISTOGRAM_BINS)
        return {
            "kind": "numeric",
            "n": len(numbers),
            "missing": missing,
            "edges": [float(e) for e in edges],
            "counts": [int(c) for c in counts],
        }
    return {
        "kind": "categorical",
        "n": len(values),
        "missing": missing,
        "counts": dict(sorted(Counter(str(v) for v in values).items())),
    }


async def feature_summary(db: AsyncDatabase[Document], chosen: Sequence[str] | None = None) -> dict[str, Any]:
    """Coverage of every block, the numeric and coded columns seen, and the chosen columns'
    distributions (``chosen`` None: :func:`default_choice`)."""
    projection: dict[str, Any] = {"blocks": 1, "features": 1}
    subjects = 0
    blocks: Counter[str] = Counter()
    values: dict[str, list[Any]] = {}
    columns: dict[str, None] = {}
    async for doc in db.features.find({}, projection):
        subjects += 1
        blocks.update(doc.get("blocks") or [])
        for name, value in (doc.get("features") or {}).items():
            columns.setdefault(name, None)
            if value is not None and (chosen is None or name in chosen):
                values.setdefault(name, []).append(value)
    names = list(columns)
    picked = list(chosen) if chosen is not None else default_choice(names)
    return {
        "subjects": subjects,
        "coverage": {
            block: {"subjects": blocks[block], "share": (blocks[block] / subjects) if subjects else 0.0}
            for block in BLOCKS
        },
        "columns": names,
        "distributions": {
            name: _distribution(values.get(name, []), subjects - len(values.get(name, []))) for name in picked
        },
    }
