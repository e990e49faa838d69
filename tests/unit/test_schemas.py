"""The schema files themselves: documented, namespaced, mirrored by a typed model."""

from __future__ import annotations

import types
import typing
from typing import Any, Union, get_args, get_origin

import pytest

from cohortstream.errors import SchemaError
from cohortstream.events import event_models
from cohortstream.schemas import EventSchema, SchemaRegistry, default_registry

REGISTRY = default_registry()
CURRENT = [REGISTRY.current(name) for name in REGISTRY.names()]
REQUIRED_EVENTS = {
    "DicomInstanceReceived",
    "DicomSeriesCompleted",
    "RedcapRecordChanged",
    "EhrRecord",
    "AnnotationRequested",
    "AnnotationSuggested",
    "AnnotationReviewed",
    "DeadLetter",
}


def _records(schema: Any) -> list[dict[str, Any]]:
    """Every record definition inside ``schema``, nested ones included."""
    found: list[dict[str, Any]] = []
    if isinstance(schema, list):
        for branch in schema:
            found += _records(branch)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            found.append(schema)
            for field in schema["fields"]:
                found += _records(field["type"])
        for key in ("items", "values"):
            if key in schema:
                found += _records(schema[key])
    return found


def test_the_issue_s_events_all_exist() -> None:
    assert {name.rsplit(".", 1)[1] for name in REGISTRY.names()} >= REQUIRED_EVENTS


@pytest.mark.parametrize("schema", CURRENT, ids=lambda s: s.stem)
def test_every_schema_has_a_namespace_and_a_doc_on_every_field(schema: EventSchema) -> None:
    assert schema.raw["namespace"] == "org.cohortstream.events"
    assert schema.raw.get("doc")
    for record in _records(schema.raw):
        assert record.get("doc"), f"{schema.source}: record {record['name']} has no doc"
        for field in record["fields"]:
            assert field.get("doc"), f"{schema.source}: field {record['name']}.{field['name']} has no doc"


def _nullable(annotation: Any) -> bool:
    if get_origin(annotation) in (Union, types.UnionType):
        return type(None) in get_args(annotation)
    return annotation is None or annotation is type(None)


@pytest.mark.parametrize("schema", CURRENT, ids=lambda s: s.stem)
def test_every_schema_has_a_typed_model_with_the_same_fields(schema: EventSchema) -> None:
    model = event_models()[schema.name]
    fields = {f["name"]: f for f in schema.raw["fields"]}
    assert list(model.model_fields) == list(fields), f"{model.__name__} fields differ from {schema.source}"
    for name, field in fields.items():
        schema_nullable = isinstance(field["type"], list) and "null" in field["type"]
        annotation = typing.get_type_hints(model)[name]
        assert _nullable(annotation) == schema_nullable, f"{model.__name__}.{name}: nullability differs"


def test_a_schema_file_that_is_not_avro_is_refused_naming_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "broken.avsc").write_text('{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}')
    with pytest.raises(SchemaError, match="broken.avsc"):
        SchemaRegistry.from_directory(tmp_path)
    (tmp_path / "broken.avsc").write_text("{not json")
    with pytest.raises(SchemaError, match="broken.avsc.*cannot read"):
        SchemaRegistry.from_directory(tmp_path)
