"""The feature matrix: documents → rows → Arrow tables, Parquet, CSV and TSV.

One row per subject, the columns of :func:`~cohortstream.features.columns.data_dictionary`
in its order; a missing block is null (``n/a`` in BIDS TSV). Writers take documents in
chunks so a large cohort never sits in memory twice.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from cohortstream.features.columns import ColumnInfo

__all__ = ["arrow_schema", "csv_chunks", "parquet_chunks", "row_values", "to_arrow"]

_ARROW_TYPES = {"string": "string", "float64": "float64", "Int64": "int64"}


def row_values(document: Mapping[str, Any], columns: Sequence[ColumnInfo]) -> list[Any]:
    """The document's values in column order (None where it has none)."""
    features = document.get("features") or {}
    out: list[Any] = []
    for column in columns:
        name = column["name"]
        value = document.get("subject_id") if name == "subject_id" else features.get(name)
        if value is not None:
            if column["dtype"] == "float64":
                value = float(value)
            elif column["dtype"] == "Int64":
                value = int(value)
            elif column["dtype"] == "string":
                value = str(value)
        out.append(value)
    return out


def arrow_schema(columns: Sequence[ColumnInfo]) -> Any:
    """The Arrow schema; each field's metadata holds its data dictionary entry."""
    import json

    import pyarrow as pa

    fields = []
    for column in columns:
        meta = {k: json.dumps(v) for k, v in column.items() if k != "name"}
        fields.append(pa.field(column["name"], getattr(pa, _ARROW_TYPES[column["dtype"]])(), metadata=meta))
    return pa.schema(fields)


def to_arrow(documents: Iterable[Mapping[str, Any]], columns: Sequence[ColumnInfo]) -> Any:
    """An Arrow table of the documents."""
    import pyarrow as pa

    rows = [row_values(d, columns) for d in documents]
    arrays = [[row[i] for row in rows] for i in range(len(columns))]
    schema = arrow_schema(columns)
    return pa.Table.from_arrays([pa.array(a, type=f.type) for a, f in zip(arrays, schema, strict=True)], schema=schema)


class _Sink(io.RawIOBase):
    """A write-only buffer whose bytes are taken out as they are written (for streaming)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self._chunks = b"".join(self._chunks), []
        return out


def parquet_chunks(batches: Iterable[Sequence[Mapping[str, Any]]], columns: Sequence[ColumnInfo]) -> Iterator[bytes]:
    """Parquet bytes, one row group per batch of documents, yielded as they are written."""
    import pyarrow.parquet as pq

    sink = _Sink()
    schema = arrow_schema(columns)
    with pq.ParquetWriter(sink, schema) as writer:
        for batch in batches:
            writer.write_table(to_arrow(batch, columns))
            if data := sink.take():
                yield data
    if data := sink.take():
        yield data


def _text(value: Any, missing: str) -> str:
    if value is None:
        return missing
    if isinstance(value, float):
        return repr(value)
    return str(value)


def csv_chunks(
    batches: Iterable[Sequence[Mapping[str, Any]]],
    columns: Sequence[ColumnInfo],
    *,
    delimiter: str = ",",
    missing: str = "",
) -> Iterator[bytes]:
    """CSV (or TSV with ``delimiter="\\t"``, ``missing="n/a"`` for BIDS), header first."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow([c["name"] for c in columns])
    for batch in batches:
        for doc in batch:
            writer.writerow([_text(v, missing) for v in row_values(doc, columns)])
        yield out.getvalue().encode("utf-8")
        out.seek(0)
        out.truncate()
    if rest := out.getvalue():
        yield rest.encode("utf-8")
