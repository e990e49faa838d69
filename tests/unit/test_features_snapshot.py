"""The snapshot of a feature input document (the compacted topic ``features.inputs``):
round trip of every field the computation reads, pinned schema versions, refusal of
corrupt messages, and the same documents from a snapshot as from the input documents."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cohortstream.codec import HEADER_SIZE
from cohortstream.errors import EventDecodeError
from cohortstream.features.snapshot import SCHEMA_NAME, decode_snapshot, encode_snapshot, snapshot_registry
from cohortstream.features.spec import FeatureSpec
from cohortstream.features.store import lab_code_counts
from consumers.features.rebuild import build_documents

T0 = datetime(2150, 1, 1, 8, 30, 0, 123000, tzinfo=UTC)
SPEC = FeatureSpec.model_validate(
    {"name": "t", "version": 1, "labs": {"codes": ["50912", "51222"]}, "diagnoses": {"prefixes": ["I10"]}}
)


def _ehr() -> dict[str, Any]:
    return {
        "_id": "ehr:mimic-iv|1",
        "demographics": {"sex": "F", "age": 61},
        "labs": {
            "r2": ["50912", T0 + timedelta(days=2), 1.25, "mg/dL"],
            "r1": ["50912", T0, 0.9, "mg/dL"],
            "r10": ["51222", T0, 13.0, None],
            "r3": ["99999", T0 + timedelta(days=1), math.nan, "x"],
            "été": ["51222", T0 + timedelta(hours=1), 12.5, "g/dL"],
        },
        "diagnoses": {"d1": "I10.1"},
        "last_event_at": T0 + timedelta(days=3),
        "pending": True,
        "seq": 4,
    }


def _dicom() -> dict[str, Any]:
    return {
        "_id": "dicom:P1",
        "series": {"1_2_3": {"uid": "1.2.3", "study": "1.2", "modality": "MR"}},
        "demographics": {"sex": "F", "age": None},
        "last_event_at": T0,
    }


def test_a_snapshot_round_trips_the_document() -> None:
    doc = _ehr()
    back = decode_snapshot(encode_snapshot(doc))
    assert back["_id"] == doc["_id"] and back["last_event_at"] == doc["last_event_at"]
    assert back["demographics"] == doc["demographics"] and back["diagnoses"] == doc["diagnoses"]
    assert "pending" not in back and "seq" not in back and "labs" not in back
    columns = back["lab_columns"]
    assert columns.rows() == ["r1", "r10", "été", "r3", "r2"]  # time, then row id as text
    assert [columns.codes[c] for c in columns.code] == ["50912", "51222", "51222", "99999", "50912"]
    assert columns.value.tolist()[:3] == [0.9, 13.0, 12.5] and math.isnan(columns.value[3])
    assert [columns.units[u] if u >= 0 else None for u in columns.unit] == ["mg/dL", None, "g/dL", "x", "mg/dL"]
    # Every row of every code, not only the spec's: a changed spec is recomputed in full.
    assert lab_code_counts([back]) == lab_code_counts([doc]) == {"50912": 2, "51222": 2, "99999": 1}
    dicom = decode_snapshot(encode_snapshot(_dicom()))
    assert dicom["series"] == _dicom()["series"] and len(dicom["lab_columns"]) == 0


def test_documents_from_snapshots_equal_documents_from_the_input_documents() -> None:
    inputs = {d["_id"]: d for d in (_ehr(), _dicom())}
    snapshots = {k: decode_snapshot(encode_snapshot(d)) for k, d in inputs.items()}
    registry = {"ehr:mimic-iv|1": "S1", "dicom:P1": "S1"}
    assert build_documents(SPEC, snapshots, registry) == build_documents(SPEC, inputs, registry)


def test_the_schema_is_a_released_version() -> None:
    registry = snapshot_registry()
    current = registry.current(SCHEMA_NAME)
    assert current.released, f"copy {current.source} to history/{current.stem}/v{current.version}.avsc"
    assert encode_snapshot(_ehr())[2:HEADER_SIZE] == current.fingerprint_bytes


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b[:-3],  # truncated
        lambda b: b"\x00\x01" + b[2:],  # not single-object encoding
        lambda b: b[:2] + b"\xff" * 8 + b[HEADER_SIZE:],  # unknown writer schema
    ],
)
def test_a_corrupt_snapshot_is_refused(corrupt: Any) -> None:
    with pytest.raises(EventDecodeError):
        decode_snapshot(corrupt(encode_snapshot(_ehr())))
