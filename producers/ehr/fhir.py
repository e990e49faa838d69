"""FHIR R4 bundles (JSON) → EhrRecord / BadRow / Skipped.

Maps Patient, Encounter, Observation and Condition; any other resource type is
:class:`~producers.ehr.rows.Skipped` (counted, not an error: bundles from Synthea or an
EHR export carry many types we do not model yet). Subject references are resolved inside
the bundle: ``Patient/<id>``, absolute ``.../Patient/<id>`` and ``urn:uuid:`` full URLs
(transaction bundles) all become the Patient's logical id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cohortstream.events import EhrRecord, EhrRecordType
from producers.ehr.rows import (
    PRODUCER,
    BadRow,
    EhrFileError,
    RowError,
    Skipped,
    deterministic_event_id,
    open_text,
    parse_fhir_datetime,
)

__all__ = ["DEFAULT_SOURCE", "MAPPED_TYPES", "parse_bundle", "parse_bundle_data"]

DEFAULT_SOURCE = "fhir"
MAPPED_TYPES = ("Patient", "Encounter", "Observation", "Condition")

Resource = dict[str, Any]


def _first_coding(concept: Any) -> dict[str, Any] | None:
    if isinstance(concept, dict):
        for coding in concept.get("coding") or []:
            if isinstance(coding, dict) and coding.get("code"):
                return coding
    return None


def _concept_code(concept: Any) -> str | None:
    coding = _first_coding(concept)
    return str(coding["code"]) if coding else None


def _concept_text(concept: Any) -> str | None:
    if not isinstance(concept, dict):
        return None
    coding = _first_coding(concept)
    return (
        concept.get("text") or (coding.get("display") if coding else None) or (coding.get("code") if coding else None)
    )


def _code_fields(concept: Any) -> dict[str, Any]:
    """code_system, code, display from the first coding; the other codings as attributes."""
    coding = _first_coding(concept)
    if coding is None:
        return {}
    return {
        "code_system": coding.get("system"),
        "code": str(coding["code"]),
        "display": coding.get("display") or (concept.get("text") if isinstance(concept, dict) else None),
    }


def _other_codings(concept: Any) -> dict[str, str]:
    first = _first_coding(concept)
    out: dict[str, str] = {}
    if isinstance(concept, dict):
        for coding in concept.get("coding") or []:
            if isinstance(coding, dict) and coding is not first and coding.get("system") and coding.get("code"):
                out[f"coding|{coding['system']}"] = str(coding["code"])
    return out


def _reference_id(reference: Any, resource_type: str) -> str | None:
    """``Type/id`` or ``https://host/fhir/Type/id[/_history/n]`` → id."""
    if not isinstance(reference, str):
        return None
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return parts[-1]
    return None


class _Bundle:
    """Reference resolution within one bundle."""

    def __init__(self, entries: list[Any]) -> None:
        self.by_full_url: dict[str, tuple[str, str]] = {}
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            resource = entry.get("resource")
            url = entry.get("fullUrl")
            if isinstance(resource, dict) and isinstance(url, str) and resource.get("id"):
                self.by_full_url[url] = (str(resource.get("resourceType")), str(resource["id"]))

    def patient_id(self, reference_holder: Any, field: str) -> str:
        if not isinstance(reference_holder, dict) or not reference_holder.get("reference"):
            raise RowError(f"{field}: missing subject reference", "MissingField")
        reference = reference_holder["reference"]
        if reference in self.by_full_url:
            resource_type, bundled_id = self.by_full_url[reference]
            if resource_type != "Patient":
                raise RowError(f"{field}: reference is to a {resource_type}, not a Patient", "UnknownReference")
            return bundled_id
        if isinstance(reference, str) and reference.startswith("urn:"):
            raise RowError(f"{field}: {reference} is not an entry of this bundle", "UnknownReference")
        logical_id = _reference_id(reference, "Patient")
        if logical_id is None:
            raise RowError(f"{field}: not a Patient reference", "UnknownReference")
        return logical_id

    def reference_id(self, holder: Any, resource_type: str) -> str | None:
        if not isinstance(holder, dict):
            return None
        reference = holder.get("reference")
        if reference in self.by_full_url:
            return self.by_full_url[reference][1]
        return _reference_id(reference, resource_type)


def _time(resource: Resource, *fields: str) -> Any:
    for name in fields:
        value = resource.get(name)
        if isinstance(value, dict):  # Period
            value = value.get("start")
        if value:
            return parse_fhir_datetime(value, f"{resource['resourceType']}.{name}")
    return None


def _compact(values: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if v is not None and v != ""}


def _patient(resource: Resource, bundle: _Bundle) -> dict[str, Any]:
    attrs: dict[str, Any] = {"gender": resource.get("gender")}
    if resource.get("birthDate"):
        parse_fhir_datetime(resource["birthDate"], "Patient.birthDate")
        attrs["birth_date"] = resource["birthDate"]
    if resource.get("deceasedDateTime"):
        parse_fhir_datetime(resource["deceasedDateTime"], "Patient.deceasedDateTime")
        attrs["deceased_at"] = resource["deceasedDateTime"]
    for identifier in resource.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") and identifier.get("value"):
            attrs[f"identifier|{identifier['system']}"] = identifier["value"]
    return {"subject_id": str(resource["id"]), "record_type": EhrRecordType.PATIENT, "attributes": _compact(attrs)}


def _encounter(resource: Resource, bundle: _Bundle) -> dict[str, Any]:
    encounter_class: Any = resource.get("class")
    if isinstance(encounter_class, list):  # R5 shape: list of CodeableConcept
        encounter_class = (_first_coding(encounter_class[0]) or {}) if encounter_class else {}
    types = resource.get("type") or [None]
    raw_period = resource.get("period")
    period: dict[str, Any] = raw_period if isinstance(raw_period, dict) else {}
    if period.get("end"):
        parse_fhir_datetime(period["end"], "Encounter.period.end")
    return {
        "subject_id": bundle.patient_id(resource.get("subject"), "Encounter.subject"),
        "record_type": EhrRecordType.ENCOUNTER,
        "effective_at": _time(resource, "period"),
        **_code_fields(types[0]),
        "attributes": _compact(
            {
                "status": resource.get("status"),
                "class": encounter_class.get("code") if isinstance(encounter_class, dict) else None,
                "period_end": period.get("end"),
                **_other_codings(types[0]),
            }
        ),
    }


def _observation_value(resource: Resource) -> dict[str, Any]:
    if "valueQuantity" in resource:
        quantity = resource["valueQuantity"]
        value = quantity.get("value") if isinstance(quantity, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RowError("Observation.valueQuantity.value: not a number")
        return {"value_number": float(value), "unit": quantity.get("unit") or quantity.get("code")}
    if "valueString" in resource:
        return {"value_text": str(resource["valueString"])}
    if "valueCodeableConcept" in resource:
        return {"value_text": _concept_text(resource["valueCodeableConcept"])}
    if "valueInteger" in resource:
        return {"value_number": float(resource["valueInteger"])}
    if "valueBoolean" in resource:
        return {"value_text": str(resource["valueBoolean"]).lower()}
    return {}


def _observation(resource: Resource, bundle: _Bundle) -> dict[str, Any]:
    code = _code_fields(resource.get("code"))
    if not code:
        raise RowError("Observation.code: missing coding", "MissingField")
    ranges = resource.get("referenceRange") or [{}]
    first_range = ranges[0] if isinstance(ranges[0], dict) else {}
    categories = resource.get("category") or [None]
    return {
        "subject_id": bundle.patient_id(resource.get("subject"), "Observation.subject"),
        "record_type": EhrRecordType.OBSERVATION,
        "effective_at": _time(resource, "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued"),
        **code,
        **_observation_value(resource),
        "attributes": _compact(
            {
                "status": resource.get("status"),
                "category": _concept_code(categories[0]),
                "encounter": bundle.reference_id(resource.get("encounter"), "Encounter"),
                "interpretation": _concept_code((resource.get("interpretation") or [None])[0]),
                "ref_range_lower": (first_range.get("low") or {}).get("value"),
                "ref_range_upper": (first_range.get("high") or {}).get("value"),
                **_other_codings(resource.get("code")),
            }
        ),
    }


def _condition(resource: Resource, bundle: _Bundle) -> dict[str, Any]:
    code = _code_fields(resource.get("code"))
    if not code:
        raise RowError("Condition.code: missing coding", "MissingField")
    return {
        "subject_id": bundle.patient_id(resource.get("subject"), "Condition.subject"),
        "record_type": EhrRecordType.CONDITION,
        "effective_at": _time(resource, "onsetDateTime", "onsetPeriod", "recordedDate"),
        **code,
        "attributes": _compact(
            {
                "clinical_status": _concept_code(resource.get("clinicalStatus")),
                "verification_status": _concept_code(resource.get("verificationStatus")),
                "category": _concept_code((resource.get("category") or [None])[0]),
                "encounter": bundle.reference_id(resource.get("encounter"), "Encounter"),
                "abatement": resource.get("abatementDateTime"),
                **_other_codings(resource.get("code")),
            }
        ),
    }


_MAPPERS = {"Patient": _patient, "Encounter": _encounter, "Observation": _observation, "Condition": _condition}


def _raw(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def _shape_error(kind: Any, exc: Exception) -> RowError:
    """A resource whose JSON has an unexpected shape (a string where an object belongs…).
    The reason names the field for pydantic errors and never echoes the value."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return RowError(f"{kind}: field {where}: {first['msg']}", "MalformedResource")
    return RowError(f"{kind}: unexpected JSON shape ({type(exc).__name__})", "MalformedResource")


def parse_bundle_data(data: Any, rel: str, source: str = DEFAULT_SOURCE) -> Iterator[EhrRecord | BadRow | Skipped]:
    """Map the entries of a parsed Bundle (or a single bare resource) to outcomes."""
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise EhrFileError(f"{rel}: not a FHIR resource (no resourceType)")
    entries: list[Any] = (data.get("entry") or []) if data["resourceType"] == "Bundle" else [{"resource": data}]
    if not isinstance(entries, list):
        raise EhrFileError(f"{rel}: Bundle.entry is not a list")
    bundle = _Bundle(entries)
    for index, entry in enumerate(entries):
        location = f"{rel}#entry[{index}]"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        try:
            if not isinstance(resource, dict) or not isinstance(kind, str):
                raise RowError("entry has no resource with a resourceType", "MalformedResource")
            if kind not in _MAPPERS:
                yield Skipped(location, kind)
                continue
            if not isinstance(resource.get("id"), str) or not resource["id"]:
                raise RowError(f"{kind}.id: missing", "MissingField")
            row_id = f"{kind}/{resource['id']}"
            fields = _MAPPERS[kind](resource, bundle)
            yield EhrRecord(
                event_id=deterministic_event_id(source, kind, row_id),
                producer=PRODUCER,
                source=source,
                source_file=rel,
                source_row_id=row_id,
                **fields,
            )
        except (ValidationError, AttributeError, TypeError, ValueError) as exc:
            error = exc if isinstance(exc, RowError) else _shape_error(kind, exc)
            key = None
            if isinstance(resource, dict) and kind == "Patient" and resource.get("id"):
                key = f"{source}/{resource['id']}"
            yield BadRow(
                source=source,
                source_file=rel,
                location=location,
                kind=kind if isinstance(kind, str) else "?",
                error_type=error.error_type,
                reason=error.reason,
                raw=_raw(entry),
                key=key,
            )


def parse_bundle(path: Path, rel: str, source: str = DEFAULT_SOURCE) -> Iterator[EhrRecord | BadRow | Skipped]:
    """Read one FHIR JSON file (a Bundle or a single resource) and map its entries."""
    try:
        with open_text(path) as handle:
            data = json.load(handle)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EhrFileError(f"{rel}: cannot read as FHIR JSON: {type(exc).__name__}: {exc}") from exc
    yield from parse_bundle_data(data, rel, source)
