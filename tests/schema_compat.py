"""Backward compatibility of Avro schema versions: can the new reader read old data?

Two checks, both needed: a structural one that names the offending field for the common
mistakes (a new field without default, a removed enum symbol), and a data one that
writes generated data with the old schema and reads it with the new one, which catches
whatever fastavro's schema resolution refuses (type changes, unions).
"""

from __future__ import annotations

import io
from typing import Any

import fastavro
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohortstream.errors import SchemaCompatibilityError
from tests.avro_strategies import from_avro

__all__ = ["assert_backward_compatible"]


def _structural(reader: Any, writer: Any, path: str) -> list[str]:
    problems: list[str] = []
    if isinstance(reader, dict) and isinstance(writer, dict) and reader.get("type") == writer.get("type"):
        if reader["type"] == "record":
            writer_fields = {f["name"]: f for f in writer["fields"]}
            for field in reader["fields"]:
                old = writer_fields.get(field["name"])
                if old is None:
                    aliases = set(field.get("aliases", []))
                    if "default" not in field and not aliases & set(writer_fields):
                        problems.append(f"{path}.{field['name']}: new field without a default")
                else:
                    problems += _structural(field["type"], old["type"], f"{path}.{field['name']}")
        elif reader["type"] == "enum" and "default" not in reader:
            removed = set(writer["symbols"]) - set(reader["symbols"])
            if removed:
                problems.append(f"{path}: enum symbols removed without a default: {sorted(removed)}")
    return problems


def assert_backward_compatible(reader: dict[str, Any], writer: dict[str, Any], examples: int = 80) -> None:
    """Raise SchemaCompatibilityError unless data written with ``writer`` reads with ``reader``."""
    problems = _structural(reader, writer, reader.get("name", "record"))
    if problems:
        raise SchemaCompatibilityError("; ".join(problems))
    parsed_writer = fastavro.parse_schema(writer, named_schemas={})
    parsed_reader = fastavro.parse_schema(reader, named_schemas={})

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def read_old_data(data: st.DataObject) -> None:
        datum = data.draw(from_avro(writer))
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, parsed_writer, datum)
        buffer.seek(0)
        try:
            fastavro.schemaless_reader(buffer, parsed_writer, parsed_reader)
        except Exception as exc:
            raise SchemaCompatibilityError(f"{reader.get('name')}: cannot read old data: {exc}") from exc

    read_old_data()
