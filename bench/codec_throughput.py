"""How much does our codec cost over bare fastavro? Prints events/s and ratios.

Compares, on the same DicomInstanceReceived event in one run:
- ``typed``: EventCodec.encode_event / decode_event (pydantic model <-> Avro, with
  strict validation and the single-object header) — what agents and producers use;
- ``records``: EventCodec.encode / decode on plain dicts (validation + header);
- ``fastavro``: bare fastavro schemaless_writer / schemaless_reader, the floor.

Run: ``.venv/bin/python -m bench.codec_throughput [--seconds 2]``
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable

import fastavro

from cohortstream.codec import HEADER_SIZE, EventCodec
from tests.examples import example_events


def _rate(operation: Callable[[], object], seconds: float) -> float:
    count = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(100):
            operation()
        count += 100
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args(argv)

    codec = EventCodec()
    event = example_events()[0]
    schema = codec.registry.current(event.avro_name).parsed
    record = event.to_avro()
    message = codec.encode_event(event)
    body = message[HEADER_SIZE:]

    def bare_write() -> bytes:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema, record)
        return buffer.getvalue()

    def bare_read() -> object:
        return fastavro.schemaless_reader(io.BytesIO(body), schema, schema)

    rates = {
        ("encode", "typed"): _rate(lambda: codec.encode_event(event), args.seconds),
        ("encode", "records"): _rate(lambda: codec.encode(event.avro_name, record), args.seconds),
        ("encode", "fastavro"): _rate(bare_write, args.seconds),
        ("decode", "typed"): _rate(lambda: codec.decode_event(message), args.seconds),
        ("decode", "records"): _rate(lambda: codec.decode(message), args.seconds),
        ("decode", "fastavro"): _rate(bare_read, args.seconds),
    }
    print(f"event: {type(event).__name__}, {len(message)} bytes encoded")
    print(f"{'op':<7} {'path':<9} {'events/s':>12} {'vs fastavro':>12}")
    for (op, path), rate in rates.items():
        print(f"{op:<7} {path:<9} {rate:>12,.0f} {rate / rates[(op, 'fastavro')]:>11.2f}x")


if __name__ == "__main__":
    main()
