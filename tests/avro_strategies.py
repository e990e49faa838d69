"""Hypothesis strategies that generate any datum valid for an Avro schema.

Used by the round-trip property tests and the schema compatibility checks. Values are
generated in the form the codec returns them (UUID objects, UTC datetimes truncated to
milliseconds, dates), so ``decode(encode(x)) == x`` is the exact property.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from hypothesis import strategies as st

__all__ = ["from_avro"]

_TS_MIN = datetime(1900, 1, 1)
_TS_MAX = datetime(2200, 1, 1)


def _timestamp_millis() -> st.SearchStrategy[datetime]:
    return st.datetimes(min_value=_TS_MIN, max_value=_TS_MAX).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000, tzinfo=UTC)
    )


_PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    "bytes": st.binary(max_size=64),
    "string": st.text(max_size=40),
}

_LOGICAL: dict[str, st.SearchStrategy[Any]] = {
    "uuid": st.uuids(),
    "timestamp-millis": _timestamp_millis(),
    "date": st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 1, 1)),
}


def from_avro(schema: Any, named: dict[str, Any] | None = None, namespace: str = "") -> st.SearchStrategy[Any]:
    """A strategy for data valid under the (raw, JSON-loaded) Avro ``schema``."""
    named = {} if named is None else named
    if isinstance(schema, list):
        return st.one_of([from_avro(branch, named, namespace) for branch in schema])
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return _PRIMITIVES[schema]
        full = schema if "." in schema else f"{namespace}.{schema}"
        return st.deferred(lambda: named[full])
    logical = schema.get("logicalType")
    if logical in _LOGICAL:
        return _LOGICAL[logical]
    kind = schema["type"]
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    if kind == "array":
        return st.lists(from_avro(schema["items"], named, namespace), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=12), from_avro(schema["values"], named, namespace), max_size=4)
    namespace = schema.get("namespace", namespace)
    full = schema["name"] if "." in schema["name"] else f"{namespace}.{schema['name']}"
    if kind == "enum":
        strategy: st.SearchStrategy[Any] = st.sampled_from(schema["symbols"])
    elif kind == "fixed":
        strategy = st.binary(min_size=schema["size"], max_size=schema["size"])
    elif kind == "record":
        strategy = st.fixed_dictionaries({f["name"]: from_avro(f["type"], named, namespace) for f in schema["fields"]})
    else:
        raise ValueError(f"unsupported Avro type {kind!r}")
    named[full] = strategy
    return strategy
