"""``cohortstream features rebuild`` and ``cohortstream features export OUT.parquet [--cohort QUERY.json]``."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from cohortstream.settings import Settings

__all__ = ["add_commands"]


def _cmd_rebuild(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.features.rebuild import rebuild_features

    report = asyncio.run(rebuild_features(settings, from_inputs=args.from_inputs))
    print(json.dumps(report.to_dict(), indent=2))
    return 0


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
        help="recompute every subject's feature document with the current spec by replaying the topics from offset 0",
    )
    r.add_argument(
        "--from-inputs",
        action="store_true",
        help="recompute from the input documents the features lane folded instead of replaying the topics "
        "(faster; as complete as the lane is)",
    )
    r.set_defaults(func=_cmd_rebuild)
    e = features.add_parser(
        "export", help="write the feature matrix as Parquet, with OUT's name + .dictionary.json (the columns)"
    )
    e.add_argument("out", metavar="OUT.parquet", help="the Parquet file to write")
    e.add_argument("--cohort", metavar="QUERY.json", help="only the subjects of this cohort query (- : stdin)")
    e.set_defaults(func=_cmd_export)
