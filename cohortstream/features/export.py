"""The feature matrix of a cohort (or everyone) from the ``features`` collection: its data
dictionary, and Parquet/CSV bytes streamed batch by batch (two passes: the first collects
what the dictionary needs, the second writes rows), for the CLI, the API and BIDS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pymongo.asynchronous.database import AsyncDatabase

from cohortstream.features.columns import ColumnInfo, DictionaryBuilder
from cohortstream.features.matrix import CsvStream, ParquetStream
from cohortstream.features.spec import FeatureSpec
from cohortstream.features.store import active_spec, document_batches

__all__ = ["MatrixPlan", "dictionary_path", "matrix_plan", "stream_matrix", "write_parquet"]

Document = dict[str, Any]


class MatrixPlan:
    """The spec, the columns and the subjects of one matrix."""

    def __init__(self, spec: FeatureSpec, columns: list[ColumnInfo], subject_ids: list[str] | None, rows: int) -> None:
        self.spec = spec
        self.columns = columns
        self.subject_ids = subject_ids
        self.rows = rows

    def dictionary(self) -> dict[str, Any]:
        """The JSON data dictionary: the spec that made the values, then one entry per column."""
        return {
            "spec": {"name": self.spec.name, "version": self.spec.version, "sha256": self.spec.sha256},
            "rows": self.rows,
            "columns": self.columns,
        }


async def matrix_plan(db: AsyncDatabase[Document], subject_ids: Sequence[str] | None = None) -> MatrixPlan:
    """First pass: the columns (questionnaire fields and lab units come from the documents)."""
    spec = await active_spec(db)
    builder = DictionaryBuilder()
    rows = 0
    async for batch in document_batches(db, subject_ids):
        builder.add(batch)
        rows += len(batch)
    return MatrixPlan(spec, builder.columns(spec), None if subject_ids is None else sorted(set(subject_ids)), rows)


async def stream_matrix(
    db: AsyncDatabase[Document], plan: MatrixPlan, fmt: Literal["parquet", "csv", "tsv"]
) -> AsyncIterator[bytes]:
    """Second pass: the matrix's bytes, one Parquet row group (or CSV chunk) per batch."""
    stream: ParquetStream | CsvStream
    if fmt == "parquet":
        stream = ParquetStream(plan.columns)
    else:
        stream = CsvStream(plan.columns, delimiter="\t" if fmt == "tsv" else ",", missing="n/a" if fmt == "tsv" else "")
    async for batch in document_batches(db, plan.subject_ids):
        if data := stream.write(batch):
            yield data
    if data := stream.close():
        yield data


def dictionary_path(out: Path) -> Path:
    """``cohort.parquet`` → ``cohort.dictionary.json``."""
    return out.with_name(out.stem + ".dictionary.json")


async def write_parquet(db: AsyncDatabase[Document], out: Path, subject_ids: Sequence[str] | None = None) -> MatrixPlan:
    """Write the matrix to ``out`` (Parquet) and its data dictionary next to it."""
    import json

    plan = await matrix_plan(db, subject_ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with partial.open("wb") as handle:
        async for data in stream_matrix(db, plan, "parquet"):
            handle.write(data)
    partial.replace(out)
    dictionary_path(out).write_text(json.dumps(plan.dictionary(), indent=2) + "\n", encoding="utf-8")
    return plan
