"""Reading and writing what the feature collections hold (shared by the sink, the rebuild,
the API and the exports).

- ``features``: one document per subject (:func:`~cohortstream.features.compute.feature_document`).
- ``feature_specs``: ``_id: "active"``, the spec as given and as resolved (lab codes fixed),
  so readers build the data dictionary the documents were computed with.
- ``feature_inputs``: what the stream folded (``consumers/features/fold.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pymongo.asynchronous.database import AsyncDatabase

from cohortstream.errors import CohortStreamError
from cohortstream.features.spec import FeatureSpec

__all__ = [
    "FeaturesNotBuiltError",
    "active_spec",
    "document_batches",
    "feature_document_of",
    "most_frequent_codes",
    "resolve_lab_codes",
    "save_active_spec",
]

Document = dict[str, Any]


class FeaturesNotBuiltError(CohortStreamError, LookupError):
    """No feature spec is active yet: no worker's features lane ran and no rebuild was made."""


def most_frequent_codes(counts: Mapping[str, int], n: int) -> list[str]:
    """The ``n`` codes with the most rows (ties: in text order)."""
    return [code for code, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def lab_code_counts(documents: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """Rows per lab code over input documents (``labs`` maps or snapshot ``lab_columns``)."""
    counts: Counter[str] = Counter()
    for doc in documents:
        columns = doc.get("lab_columns")
        if columns is not None:
            for code, n in zip(
                columns.codes, np.bincount(columns.code, minlength=len(columns.codes)).tolist(), strict=True
            ):
                counts[code] += n
            continue
        for code, *_ in (doc.get("labs") or {}).values():
            counts[code] += 1
    return counts


async def resolve_lab_codes(db: AsyncDatabase[Document], spec: FeatureSpec) -> list[str] | None:
    """The code list ``most_frequent`` stands for, counted over the stored inputs (None when the
    spec lists its codes). A rebuild counts over the replayed events instead."""
    if spec.labs is None or spec.labs.most_frequent is None:
        return None
    docs = await db.feature_inputs.find({"_id": {"$regex": "^ehr:"}}, {"labs": 1}).to_list()
    return most_frequent_codes(lab_code_counts(docs), spec.labs.most_frequent)


async def save_active_spec(db: AsyncDatabase[Document], given: FeatureSpec, resolved: FeatureSpec) -> None:
    await db.feature_specs.replace_one(
        {"_id": "active"},
        {
            "given": given.model_dump(mode="json"),
            "resolved": resolved.model_dump(mode="json"),
            "sha256": resolved.sha256,
        },
        upsert=True,
    )


async def active_spec(db: AsyncDatabase[Document]) -> FeatureSpec:
    """The resolved spec the stored documents were computed with."""
    doc = await db.feature_specs.find_one({"_id": "active"})
    if doc is None:
        raise FeaturesNotBuiltError(
            "no feature spec is active: start the worker (its features lane) or run `cohortstream features rebuild`"
        )
    return FeatureSpec.model_validate(doc["resolved"])


async def feature_document_of(db: AsyncDatabase[Document], subject_id: str) -> Document | None:
    return await db.features.find_one({"_id": subject_id})


async def document_batches(
    db: AsyncDatabase[Document], subject_ids: Sequence[str] | None = None, *, batch_size: int = 1000
) -> AsyncIterator[list[Document]]:
    """Feature documents in subject id order, in batches (only ``subject_ids`` when given)."""
    if subject_ids is not None:
        ids = sorted(set(subject_ids))
        for start in range(0, len(ids), batch_size):
            chunk = await db.features.find({"_id": {"$in": ids[start : start + batch_size]}}).sort("_id", 1).to_list()
            if chunk:
                yield chunk
        return
    last: str | None = None
    while True:
        query: Document = {} if last is None else {"_id": {"$gt": last}}
        chunk = await db.features.find(query).sort("_id", 1).limit(batch_size).to_list()
        if not chunk:
            return
        yield chunk
        last = chunk[-1]["_id"]
