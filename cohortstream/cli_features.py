"""``cohortstream features rebuild`` and ``cohortstream features export OUT.parquet [--cohort QUERY.json]``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from cohortstream.settings import Settings

__all__ = ["add_commands"]


def _cmd_rebuild(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.features.rebuild import RebuildSource, rebuild_features

    source: RebuildSource = "inputs" if args.from_inputs else "events" if args.from_events else "snapshot"
    report = asyncio.run(rebuild_features(settings, source=source))
    print(json.dumps(report.to_dict(), indent=2))
    print(f"features rebuilt from {_SOURCES[report.source]}", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


_SOURCES = {
    "snapshot": "the features lane's snapshot topic (features.inputs)",
    "events": "the source events (every topic from offset 0)",
    "inputs": "the view store's feature_inputs documents",
}


async def _export(settings: Settings, out: Path, cohort: str | None) -> dict[str, Any]:
    from cohortstream.cli_audit import audit_cli_export
    from cohortstream.features.export import dictionary_path, write_parquet
    from cohortstream.mongo import mongo_client, mongo_database

    client = mongo_client(settings)
    try:
        db = mongo_database(client, settings)
        subject_ids = None
        if cohort is not None:
            from cohortstream.cli_subjects import read_cohort_query
            from cohortstream.cohort_query import run_cohort_query

            subject_ids = (await run_cohort_query(db, read_cohort_query(cohort))).subject_ids
        # Recorded in the audit trail (acknowledged) before anything is written.
        exported = (
            subject_ids if subject_ids is not None else [d["_id"] async for d in db.features.find({}, {"_id": 1})]
        )
        await audit_cli_export(
            settings, action="exports.features", command="cohortstream features export", subject_ids=list(exported)
        )
        plan = await write_parquet(db, out, subject_ids)
        return {
            "parquet": str(out),
            "dictionary": str(dictionary_path(out)),
            "rows": plan.rows,
            "columns": len(plan.columns),
            "spec": plan.dictionary()["spec"],
        }
    finally:
        await client.close()


def _cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(_export(settings, Path(args.out), args.cohort)), indent=2))
    return 0


def add_commands(commands: Any) -> None:
    """Attach ``features`` to the top-level subcommands."""
    p = commands.add_parser("features", help="per-subject feature vectors: rebuild them by replay, export the matrix")
    features = p.add_subparsers(dest="features_command", metavar="ACTION", required=True)
    r = features.add_parser(
        "rebuild",
        help="recompute every subject's feature document with the current spec by replay: of the features lane's "
        "snapshot topic (every input row of every identifier; the source events when it is missing or empty)",
    )
    source = r.add_mutually_exclusive_group()
    source.add_argument(
        "--from-events",
        action="store_true",
        help="replay the source events from offset 0 instead of the snapshot (slow: one Avro event per row; "
        "independent of the features lane)",
    )
    source.add_argument(
        "--from-inputs",
        action="store_true",
        help="recompute from the input documents the features lane folded in the view store "
        "(as complete as the lane is)",
    )
    r.set_defaults(func=_cmd_rebuild)
    e = features.add_parser(
        "export", help="write the feature matrix as Parquet, with OUT's name + .dictionary.json (the columns)"
    )
    e.add_argument("out", metavar="OUT.parquet", help="the Parquet file to write")
    e.add_argument("--cohort", metavar="QUERY.json", help="only the subjects of this cohort query (- : stdin)")
    e.set_defaults(func=_cmd_export)
