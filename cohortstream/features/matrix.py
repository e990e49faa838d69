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

__all__ = ["CsvStream", "ParquetStream", "arrow_schema", "csv_chunks", "parquet_chunks", "row_values", "to_arrow"]

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


class ParquetStream:
    """Parquet written batch by batch (one row group each); :meth:`write` and :meth:`close`
    return the bytes produced so far, so a response can stream them."""

    def __init__(self, columns: Sequence[ColumnInfo]) -> None:
        import pyarrow.parquet as pq

        self._columns = columns
        self._sink = _Sink()
        self._writer = pq.ParquetWriter(self._sink, arrow_schema(columns))

    def write(self, batch: Sequence[Mapping[str, Any]]) -> bytes:
        if batch:
            self._writer.write_table(to_arrow(batch, self._columns))
        return self._sink.take()

    def close(self) -> bytes:
        self._writer.close()
        return self._sink.take()


class CsvStream:
    """CSV (or TSV with ``delimiter="\\t"``, ``missing="n/a"`` for BIDS), header first."""

    def __init__(self, columns: Sequence[ColumnInfo], *, delimiter: str = ",", missing: str = "") -> None:
        self._columns = columns
        self._missing = missing
        self._out = io.StringIO()
        self._writer = csv.writer(self._out, delimiter=delimiter, lineterminator="\n")
        self._writer.writerow([c["name"] for c in columns])

    def write(self, batch: Sequence[Mapping[str, Any]]) -> bytes:
        for doc in batch:
            self._writer.writerow([_text(v, self._missing) for v in row_values(doc, self._columns)])
        data = self._out.getvalue().encode("utf-8")
        self._out.seek(0)
        self._out.truncate()
        return data

    def close(self) -> bytes:
        return self.write([])


def _text(value: Any, missing: str) -> str:
    if value is None:
        return missing
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parquet_chunks(batches: Iterable[Sequence[Mapping[str, Any]]], columns: Sequence[ColumnInfo]) -> Iterator[bytes]:
    """Parquet bytes of all batches, as they are written."""
    stream = ParquetStream(columns)
    for batch in batches:
        if data := stream.write(batch):
            yield data
    yield stream.close()


def csv_chunks(
    batches: Iterable[Sequence[Mapping[str, Any]]],
    columns: Sequence[ColumnInfo],
    *,
    delimiter: str = ",",
    missing: str = "",
) -> Iterator[bytes]:
    """CSV bytes of all batches, header first."""
    stream = CsvStream(columns, delimiter=delimiter, missing=missing)
    for batch in batches:
        if data := stream.write(batch):
            yield data
    if data := stream.close():
        yield data
