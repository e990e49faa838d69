"""``phenotype/features.tsv``: the feature matrix (issue 18) of the exported participants,
with a sidecar that describes every column (source, statistic, unit), so the vectors the
stream keeps reach BIDS users as they reach Parquet users.

Rows are keyed by the pseudonymous ``participant_id``; the subject id column of the
matrix is left out (it is stable across exports and would link them). Missing values
are ``n/a``. No table when no feature spec is active yet (nothing was built).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cohortstream.features.columns import DictionaryBuilder
from cohortstream.features.matrix import row_values
from cohortstream.features.store import FeaturesNotBuiltError, active_spec, document_batches
from export.bids.phenotype import PhenotypeTable

__all__ = ["features_table"]


async def features_table(db: Any, participants: Sequence[tuple[str, str]]) -> PhenotypeTable | None:
    """``participants``: (participant label, subject id) of the exported subjects."""
    try:
        spec = await active_spec(db)
    except FeaturesNotBuiltError:
        return None
    label_of = {subject_id: label for label, subject_id in participants}
    documents: list[dict[str, Any]] = []
    async for batch in document_batches(db, list(label_of)):
        documents.extend(batch)
    if not documents:
        return None
    builder = DictionaryBuilder()
    builder.add(documents)
    columns = [c for c in builder.columns(spec) if c["name"] != "subject_id"]
    rows = []
    for doc in sorted(documents, key=lambda d: label_of[d["subject_id"]]):
        row: dict[str, Any] = {"participant_id": f"sub-{label_of[doc['subject_id']]}"}
        row.update(zip((c["name"] for c in columns), row_values(doc, columns), strict=True))
        rows.append(row)
    sidecar: dict[str, Any] = {
        "MeasurementToolMetadata": {
            "Description": f"cohortstream feature vectors, spec {spec.name} version {spec.version} "
            f"(sha256 {spec.sha256[:12]}); one row per participant"
        },
        "participant_id": {"Description": "Pseudonymous participant label, as in participants.tsv."},
    }
    for column in columns:
        entry: dict[str, Any] = {
            "Description": f"{column['description']} ({column['statistic']}; source: {column['source']})"
        }
        if column["unit"]:
            entry["Units"] = column["unit"]
        sidecar[column["name"]] = entry
    return PhenotypeTable("features", ["participant_id", *(c["name"] for c in columns)], rows, sidecar)
