"""The schema registry: every Avro event schema this build knows, by name and by fingerprint.

Schemas are files, not code: ``avro_schemas/<stem>.avsc`` is the current version of each
event and ``avro_schemas/history/<stem>/v<N>.avsc`` every released version. A reader
needs the *writer's* schema to decode Avro, and single-object encoding names it by its
CRC-64-AVRO fingerprint, so the registry indexes every version by fingerprint and keeps
the current version of each name as the reader schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from importlib.abc import Traversable
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from cohortstream.errors import SchemaError

__all__ = [
    "CRC64_AVRO_EMPTY",
    "EventSchema",
    "SchemaRegistry",
    "crc64_avro",
    "default_registry",
]

#: The CRC-64-AVRO "empty" value from the Avro specification.
CRC64_AVRO_EMPTY = 0xC15D213AA4D7A795


def _crc64_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (CRC64_AVRO_EMPTY & -(fp & 1))
        table.append(fp)
    return tuple(table)


_CRC64_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """The Rabin CRC-64 fingerprint the Avro specification calls CRC-64-AVRO."""
    fp = CRC64_AVRO_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp


_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.avsc$")


@dataclass(frozen=True)
class EventSchema:
    """One version of one event schema, parsed once."""

    name: str
    """Full Avro name, e.g. ``org.cohortstream.events.DicomInstanceReceived``."""
    stem: str
    """File stem, e.g. ``dicom_instance_received``."""
    version: int
    source: str
    """Where the schema was read from, for error messages."""
    raw: Mapping[str, Any] = field(repr=False)
    parsed: Any = field(repr=False)
    canonical_form: str = field(repr=False)
    fingerprint: int = 0
    released: bool = False
    """True when this exact schema is kept under ``avro_schemas/history/``."""

    @property
    def fingerprint_bytes(self) -> bytes:
        """The fingerprint as it appears in a single-object header (8 bytes, little-endian)."""
        return self.fingerprint.to_bytes(8, "little")


def _parse(raw: Mapping[str, Any], stem: str, version: int, source: str, released: bool) -> EventSchema:
    try:
        # A fresh named-type table per file: two versions of one schema define the
        # same named types (enums, nested records) and must not collide.
        parsed = fastavro.parse_schema(dict(raw), named_schemas={})
        canonical = to_parsing_canonical_form(parsed)
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        raise SchemaError(f"{source}: not a valid Avro schema: {exc}") from exc
    if raw.get("type") != "record" or "namespace" not in raw:
        raise SchemaError(f"{source}: an event schema must be a record with a namespace")
    name = f"{raw['namespace']}.{raw['name']}"
    return EventSchema(
        name=name,
        stem=stem,
        version=version,
        source=source,
        raw=raw,
        parsed=parsed,
        canonical_form=canonical,
        fingerprint=crc64_avro(canonical.encode("utf-8")),
        released=released,
    )


def _load_json(entry: Traversable, source: str) -> Mapping[str, Any]:
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError(f"{source}: cannot read schema: {exc}") from exc
    if not isinstance(data, dict):
        raise SchemaError(f"{source}: top level must be a JSON object")
    return data


class SchemaRegistry:
    """Every known version of every event schema, looked up by name or fingerprint."""

    def __init__(self, schemas: list[EventSchema]) -> None:
        self._by_fingerprint: dict[int, EventSchema] = {}
        self._versions: dict[str, dict[int, EventSchema]] = {}
        for schema in schemas:
            clash = self._by_fingerprint.get(schema.fingerprint)
            if clash is not None and clash.name != schema.name:
                raise SchemaError(
                    f"{schema.source} and {clash.source} have the same fingerprint "
                    f"{schema.fingerprint:#018x} but different names"
                )
            self._by_fingerprint.setdefault(schema.fingerprint, schema)
            versions = self._versions.setdefault(schema.name, {})
            if schema.version in versions and versions[schema.version].fingerprint != schema.fingerprint:
                raise SchemaError(f"{schema.source}: version {schema.version} of {schema.name} is defined twice")
            versions[schema.version] = schema

    @classmethod
    def from_directory(cls, root: Traversable) -> SchemaRegistry:
        """Load ``root/*.avsc`` (current versions) and ``root/history/<stem>/v<N>.avsc``."""
        schemas: list[EventSchema] = []
        history_root = root / "history"
        for entry in sorted(root.iterdir(), key=lambda e: e.name):
            if not entry.name.endswith(".avsc"):
                continue
            stem = entry.name.removesuffix(".avsc")
            source = f"avro_schemas/{entry.name}"
            raw = _load_json(entry, source)
            released: list[EventSchema] = []
            history_dir = history_root / stem
            if history_dir.is_dir():
                for version_file in history_dir.iterdir():
                    match = _VERSION_FILE.match(version_file.name)
                    if match is None:
                        continue
                    v_source = f"avro_schemas/history/{stem}/{version_file.name}"
                    released.append(
                        _parse(_load_json(version_file, v_source), stem, int(match[1]), v_source, released=True)
                    )
            current = _parse(raw, stem, 0, source, released=False)
            same = [s for s in released if s.fingerprint == current.fingerprint]
            # The current file is the released version it equals, or the next,
            # not yet released one (a test insists it is released before merge).
            version = same[0].version if same else max((s.version for s in released), default=0) + 1
            schemas.extend(s for s in released if s.version != version)
            schemas.append(_parse(raw, stem, version, source, released=bool(same)))
        if not schemas:
            raise SchemaError(f"no .avsc schema found in {root}")
        return cls(schemas)

    def names(self) -> list[str]:
        """Full names of all known event schemas, sorted."""
        return sorted(self._versions)

    def current(self, name: str) -> EventSchema:
        """The newest version of ``name``: what producers write and consumers read into."""
        try:
            versions = self._versions[name]
        except KeyError:
            raise SchemaError(f"unknown event schema {name!r}; known: {', '.join(self.names())}") from None
        return versions[max(versions)]

    def versions(self, name: str) -> list[EventSchema]:
        """All known versions of ``name``, oldest first."""
        self.current(name)  # raises a clear error for unknown names
        return [v for _, v in sorted(self._versions[name].items())]

    def by_fingerprint(self, fingerprint: int) -> EventSchema | None:
        """The schema with this CRC-64-AVRO fingerprint, or None."""
        return self._by_fingerprint.get(fingerprint)

    def __iter__(self) -> Iterator[EventSchema]:
        for name in self.names():
            yield from self.versions(name)


@cache
def default_registry() -> SchemaRegistry:
    """The registry of the schemas shipped in the ``avro_schemas`` package (loaded once)."""
    return SchemaRegistry.from_directory(resources.files("avro_schemas"))
