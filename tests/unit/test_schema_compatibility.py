"""Every schema version can read data written by the versions before it.

The gate for future schema edits: change ``avro_schemas/<stem>.avsc``, copy it to
``avro_schemas/history/<stem>/v<N+1>.avsc``, and these tests check that the new version
reads everything older versions wrote (so replaying a topic from offset 0 still works).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cohortstream.errors import SchemaCompatibilityError
from cohortstream.schemas import EventSchema, default_registry
from tests.schema_compat import assert_backward_compatible

REGISTRY = default_registry()


def _pairs() -> list[tuple[EventSchema, EventSchema]]:
    """(older, newer) for every version of every schema and every later version."""
    pairs = []
    for name in REGISTRY.names():
        versions = REGISTRY.versions(name)
        for i, old in enumerate(versions):
            for new in versions[i:]:
                pairs.append((old, new))
    return pairs


@pytest.mark.parametrize(
    ("old", "new"), _pairs(), ids=lambda s: f"{s.stem}-v{s.version}" if isinstance(s, EventSchema) else str(s)
)
def test_each_version_reads_data_written_by_every_earlier_version(old: EventSchema, new: EventSchema) -> None:
    # A version always pairs with itself, so a schema's first version is checked too.
    assert_backward_compatible(dict(new.raw), dict(old.raw))


@pytest.mark.parametrize("name", REGISTRY.names())
def test_the_current_schema_file_is_a_released_version(name: str) -> None:
    current = REGISTRY.current(name)
    assert current.released, (
        f"{current.source} changed: copy it to avro_schemas/history/{current.stem}/v{current.version}.avsc"
    )


# --- the checker itself must catch incompatible edits --------------------------------

BASE: dict[str, Any] = {
    "type": "record",
    "name": "Thing",
    "namespace": "org.example",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B", "C"]}},
        {"name": "size", "type": "int"},
    ],
}


def _edit(change: Any) -> dict[str, Any]:
    schema = copy.deepcopy(BASE)
    change(schema)
    return schema


COMPATIBLE = {
    "add-optional-field": lambda s: s["fields"].append({"name": "note", "type": ["null", "string"], "default": None}),
    "add-enum-symbol": lambda s: s["fields"][1]["type"]["symbols"].append("D"),
    "widen-int-to-long": lambda s: s["fields"][2].update(type="long"),
    "drop-field": lambda s: s["fields"].pop(2),
}
INCOMPATIBLE = {
    "add-required-field": (
        lambda s: s["fields"].append({"name": "note", "type": "string"}),
        "note: new field without a default",
    ),
    "remove-enum-symbol": (lambda s: s["fields"][1]["type"].update(symbols=["A", "B"]), "symbols removed"),
    "change-type": (lambda s: s["fields"][0].update(type="int"), "cannot read old data"),
    "narrow-long-to-int": (lambda s: s["fields"][2].update(type="boolean"), "cannot read old data"),
}


@pytest.mark.parametrize("change", COMPATIBLE.values(), ids=COMPATIBLE.keys())
def test_checker_accepts_backward_compatible_edits(change: Any) -> None:
    assert_backward_compatible(_edit(change), BASE)


@pytest.mark.parametrize(("change", "message"), INCOMPATIBLE.values(), ids=INCOMPATIBLE.keys())
def test_checker_refuses_incompatible_edits_naming_the_problem(change: Any, message: str) -> None:
    with pytest.raises(SchemaCompatibilityError, match=message):
        assert_backward_compatible(_edit(change), BASE)
