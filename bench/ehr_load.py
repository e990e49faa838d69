"""EHR loader throughput into the real Kafka: rows/s for a ~50k-row labevents file.

Compares, in one run on the same generated file:
- ``parse``: parsing and validation alone, events discarded (the ceiling);
- ``publish_many``: the loader as ``cohortstream ehr load`` runs it (batches, acks awaited
  per batch);
- ``publish``: one ``EventPublisher.publish`` (await ack) per row, over the first
  ``--sequential`` rows: the naive alternative.

Uses the running stack named by ``$COHORTSTREAM_ENV_FILE`` (e.g. ``. /tmp/teststack.sh``)
with a topic prefix of its own (``bench-ehr-<random>.``), so no other topic is touched.

Run: ``.venv/bin/python -m bench.ehr_load [--rows 50000] [--batch-size 1000] [--sequential 2000]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from cohortstream.admin import ensure_topics
from cohortstream.events import EhrRecord, Event
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings
from cohortstream.synthetic_ehr import write_mimic
from producers.ehr.loader import load_extract
from producers.ehr.mimic import Lookups, parse_table, read_labitems


class _Discard:
    async def publish_many(self, items: Sequence[tuple[Event, str]]) -> None:
        return None


async def _run(args: argparse.Namespace) -> None:
    settings = Settings.load(
        os.environ.get("COHORTSTREAM_ENV_FILE"), topic_prefix=f"bench-ehr-{uuid.uuid4().hex[:8]}.", log_level="WARNING"
    )
    await ensure_topics(settings)
    with tempfile.TemporaryDirectory() as tmp:
        # ~78 lab rows per subject with the default panel mix.
        extract = write_mimic(Path(tmp), seed=1, n_subjects=max(1, args.rows // 78), labs_per_admission=(40, 40))
        labevents = extract.files["labevents"]
        root = Path(tmp) / "only-labs"
        root.mkdir()
        for table in ("labevents", "d_labitems"):
            (root / extract.files[table].name).symlink_to(extract.files[table])
        rows = extract.rows["labevents"]
        print(f"file: labevents.csv, {rows} rows, {labevents.stat().st_size / 1e6:.1f} MB")

        start = time.perf_counter()
        await load_extract(root, _Discard(), batch_size=args.batch_size)
        parse_s = time.perf_counter() - start
        print(f"parse only          {rows / parse_s:>9.0f} rows/s  ({parse_s:.2f} s)")

        async with EventPublisher(settings) as publisher:
            start = time.perf_counter()
            report = await load_extract(root, publisher, batch_size=args.batch_size)
            load_s = time.perf_counter() - start
            published = report.totals().published
            print(
                f"publish_many        {rows / load_s:>9.0f} rows/s  ({load_s:.2f} s, {published} events acked, "
                f"batch {args.batch_size})"
            )

            items, _ = read_labitems(extract.files["d_labitems"], "d_labitems.csv")
            records = [
                r
                for r in parse_table("labevents", labevents, "labevents.csv", lookups=Lookups(labitems=items))
                if isinstance(r, EhrRecord)
            ][: args.sequential]
            start = time.perf_counter()
            for record in records:
                await publisher.publish(record, key=f"{record.source}/{record.subject_id}")
            sequential_s = time.perf_counter() - start
            print(f"publish per row     {len(records) / sequential_s:>9.0f} rows/s  ({len(records)} rows)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ehr_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--sequential", type=int, default=2000)
    asyncio.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
