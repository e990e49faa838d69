"""The single-object codec: exact bytes, every failure named, round trips for any event."""

from __future__ import annotations

import fastavro.schema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohortstream.codec import HEADER_SIZE, EventCodec
from cohortstream.errors import (
    BadMarkerError,
    EventDecodeError,
    EventEncodeError,
    TrailingBytesError,
    TruncatedMessageError,
    UnknownFingerprintError,
)
from cohortstream.events import AnnotationRequested, Event
from cohortstream.schemas import crc64_avro, default_registry
from tests.avro_strategies import from_avro
from tests.examples import FIXED_ID, FIXED_TIME, example_events

CODEC = EventCodec()
REGISTRY = default_registry()
NAMES = REGISTRY.names()


def test_crc64_avro_matches_the_specification_and_fastavro() -> None:
    # The Avro specification's test vector: the fingerprint of the schema "null".
    assert crc64_avro(b'"null"') == 7195948357588979594
    for schema in REGISTRY:
        expected = fastavro.schema.fingerprint(schema.canonical_form, "CRC-64-AVRO")
        assert schema.fingerprint_bytes.hex() == expected


def test_encoding_of_one_event_is_pinned_byte_for_byte() -> None:
    event = AnnotationRequested(
        event_id=FIXED_ID,
        emitted_at=FIXED_TIME,
        producer="t",
        request_id=FIXED_ID,
        study_instance_uid="1.2",
        series_instance_uid="1.2.3",
        series_revision=1,
        model_name=None,
        requested_by="x",
        reason="MANUAL",
    )
    expected = bytes.fromhex(
        # marker, fingerprint of AnnotationRequested v1 (little-endian)
        "c301"
        "d44a7f993f01f03a"
        # event_id: string of 36 bytes (zigzag 72 = 0x48)
        "48"
        + b"12345678-1234-5678-1234-567812345678".hex()
        # emitted_at: 2026-11-25T12:30:15.250Z = 1795609815250 ms, zigzag varint
        + "a4a3fbaac268"
        # producer "t"
        + "0274"
        # request_id
        + "48"
        + b"12345678-1234-5678-1234-567812345678".hex()
        # study "1.2", series "1.2.3", revision 1
        + "06312e32"
        + "0a312e322e33"
        + "02"
        # model_name: union branch 0 (null); requested_by "x"; reason: enum index 1 (MANUAL)
        + "00"
        + "0278"
        + "02"
    )
    assert CODEC.encode_event(event) == expected
    assert CODEC.decode_event(expected) == event


@pytest.mark.parametrize("event", example_events(), ids=lambda e: type(e).__name__)
def test_every_typed_event_round_trips(event: Event) -> None:
    data = CODEC.encode_event(event)
    assert data[:2] == b"\xc3\x01"
    assert data[2:HEADER_SIZE] == REGISTRY.current(event.avro_name).fingerprint_bytes
    assert CODEC.decode_event(data) == event


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_valid_record_round_trips(name: str, data: st.DataObject) -> None:
    record = data.draw(from_avro(REGISTRY.current(name).raw))
    decoded = CODEC.decode(CODEC.encode(name, record))
    assert decoded.name == name
    assert decoded.record == record


def _sample() -> bytes:
    return CODEC.encode_event(example_events()[0])


@pytest.mark.parametrize(
    ("mangle", "error", "words"),
    [
        (lambda b: b"", BadMarkerError, "marker"),
        (lambda b: b"\x00\x01" + b[2:], BadMarkerError, "marker"),
        (lambda b: b'{"json": true}', BadMarkerError, "marker"),
        (lambda b: b[:1], TruncatedMessageError, "header"),
        (lambda b: b[:7], TruncatedMessageError, "header"),
        (lambda b: b[:HEADER_SIZE], TruncatedMessageError, "ends early"),
        (lambda b: b[:-3], TruncatedMessageError, "ends early"),
        (lambda b: b[:2] + bytes(8) + b[HEADER_SIZE:], UnknownFingerprintError, "0x0000000000000000"),
        (lambda b: b + b"\x00", TrailingBytesError, "1 bytes left"),
    ],
    ids=[
        "empty",
        "wrong-marker",
        "json",
        "half-marker",
        "short-header",
        "no-body",
        "cut-body",
        "unknown-fingerprint",
        "trailing",
    ],
)
def test_bad_messages_raise_the_projects_error_naming_the_reason(mangle, error, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=words) as info:
        CODEC.decode(mangle(_sample()))
    assert isinstance(info.value, EventDecodeError)
    assert isinstance(info.value, ValueError)


def test_encoding_refuses_records_that_do_not_match_naming_the_field() -> None:
    name = AnnotationRequested.avro_name
    good = example_events()[4].to_avro()
    with pytest.raises(EventEncodeError, match="missing field.*producer"):
        CODEC.encode(name, {k: v for k, v in good.items() if k != "producer"})
    with pytest.raises(EventEncodeError, match="unknown field.*colour"):
        CODEC.encode(name, {**good, "colour": "red"})
    with pytest.raises(EventEncodeError, match="'series_revision'.*expected int"):
        CODEC.encode(name, {**good, "series_revision": "1"})
    with pytest.raises(EventEncodeError, match="'reason'.*one of SERIES_COMPLETED"):
        CODEC.encode(name, {**good, "reason": "BECAUSE"})
    with pytest.raises(Exception, match="unknown event schema"):
        CODEC.encode("org.example.Nope", good)
