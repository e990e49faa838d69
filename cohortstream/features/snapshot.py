"""The snapshot of a feature input document: the value of the compacted ``features.inputs`` topic.

Why a snapshot topic: a rebuild by replay of the source events decodes one Avro event per
lab row, about 50,000 rows/s in Python, i.e. 100 s for 50,000 subjects of 100 rows. The
features lane already folds those events into one input document per identifier; it
publishes each document it reads for a recomputation here, keyed by the document's id,
so the topic (compacted: Kafka keeps the latest value of each key) holds the whole
folded state, every lab code included, in one message per identifier. The rows travel
as columns (:class:`~.labs.LabColumns`: a few ``bytes`` fields of little-endian arrays),
so reading them back costs one ``numpy.frombuffer`` per column, not one object per row.

Contract: ``cohortstream/features/schemas/feature_inputs.avsc`` (Avro, single-object
encoding, versions kept under ``history/`` like the events'). Not in ``avro_schemas/``:
that directory holds the events, each with a typed model; this is folded state.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from datetime import UTC
from functools import cache
from importlib import resources
from typing import Any

import bson
import fastavro
import numpy as np
from bson.codec_options import CodecOptions

from cohortstream.codec import HEADER_SIZE, EventCodec
from cohortstream.errors import EventDecodeError
from cohortstream.features.labs import LabColumns
from cohortstream.schemas import SchemaRegistry
from cohortstream.topics import FEATURE_INPUTS_TOPIC

__all__ = ["SCHEMA_NAME", "TOPIC", "decode_snapshot", "encode_snapshot", "snapshot_registry"]

TOPIC = FEATURE_INPUTS_TOPIC
"""Logical name of the compacted snapshot topic (``Settings.topic`` adds the prefix)."""

SCHEMA_NAME = "org.cohortstream.features.FeatureInputs"

_NOT_OTHER = frozenset({"_id", "labs", "lab_columns", "last_event_at", "pending", "seq"})
_BSON_OPTIONS: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, tzinfo=UTC)


@cache
def snapshot_registry() -> SchemaRegistry:
    """Every version of the snapshot schema (loaded once)."""
    return SchemaRegistry.from_directory(resources.files("cohortstream.features").joinpath("schemas"))


@cache
def _codec() -> EventCodec:
    return EventCodec(snapshot_registry())


def encode_snapshot(doc: Mapping[str, Any]) -> bytes:
    """Single-object-encoded snapshot of an input document (as read from the view store)."""
    columns = doc.get("lab_columns")
    if columns is None:
        columns = LabColumns.from_rows(doc.get("labs") or {})
    assert isinstance(columns, LabColumns)
    record = {
        "doc_id": str(doc["_id"]),
        "last_event_at": doc.get("last_event_at"),
        "lab_codes": list(columns.codes),
        "lab_units": list(columns.units),
        "lab_code": columns.code.astype("<i4").tobytes(),
        "lab_at": columns.at_us.astype("<i8").tobytes(),
        "lab_value": columns.value.astype("<f8").tobytes(),
        "lab_unit": columns.unit.astype("<i4").tobytes(),
        "lab_row_lengths": columns.row_lengths,
        "lab_row_text": columns.row_text,
        "other": bson.encode({k: v for k, v in doc.items() if k not in _NOT_OTHER}),
    }
    return _codec().encode(SCHEMA_NAME, record)


def decode_snapshot(data: bytes) -> dict[str, Any]:
    """The input document of a snapshot, its rows as ``lab_columns`` (no ``labs`` map).

    Raises :class:`~cohortstream.errors.EventDecodeError` (or a subclass) for a message
    that is not a valid snapshot."""
    codec = _codec()
    writer = codec.writer_schema(data)
    current = codec.registry.current(writer.name)
    if writer.fingerprint == current.fingerprint:
        # The usual case: no schema resolution needed, read with the writer schema alone (faster).
        try:
            record = fastavro.schemaless_reader(io.BytesIO(data[HEADER_SIZE:]), writer.parsed, None)
        except Exception as exc:  # fastavro raises assorted types on corrupt input
            raise EventDecodeError(f"{writer.name} v{writer.version}: corrupt Avro body: {exc}") from exc
    else:
        record = codec.decode(data).record
    if not isinstance(record, dict):
        raise EventDecodeError(f"{writer.name}: body is not a record")
    try:
        doc: dict[str, Any] = bson.decode(record["other"], codec_options=_BSON_OPTIONS)
        rows = len(record["lab_value"]) // 8
        columns = LabColumns(
            codes=tuple(record["lab_codes"]),
            units=tuple(record["lab_units"]),
            code=np.frombuffer(record["lab_code"], dtype="<i4"),
            at_us=np.frombuffer(record["lab_at"], dtype="<i8"),
            value=np.frombuffer(record["lab_value"], dtype="<f8"),
            unit=np.frombuffer(record["lab_unit"], dtype="<i4"),
            row_lengths=record["lab_row_lengths"],
            row_text=record["lab_row_text"],
        )
    except (bson.errors.BSONError, ValueError) as exc:
        raise EventDecodeError(f"{writer.name}: corrupt snapshot of {record.get('doc_id')!r}: {exc}") from exc
    sizes = {len(columns.code), len(columns.at_us), len(columns.unit), len(columns.row_lengths) // 4}
    if sizes != {rows} or len(record["lab_value"]) % 8:
        raise EventDecodeError(f"{writer.name}: the lab columns of {record['doc_id']!r} differ in length")
    if rows and (int(columns.code.max()) >= len(columns.codes) or int(columns.unit.max()) >= len(columns.units)):
        raise EventDecodeError(f"{writer.name}: a lab row of {record['doc_id']!r} names no code or unit")
    doc["_id"] = record["doc_id"]
    doc["last_event_at"] = record["last_event_at"]
    doc["lab_columns"] = columns
    return doc
