"""``cohortstream export bids OUTDIR [--cohort QUERY.json] [--subjects ...]``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from cohortstream.settings import Settings

__all__ = ["add_commands"]


def _query(path: str | None) -> Any:
    from cohortstream.cli_subjects import read_cohort_query

    return None if path is None else read_cohort_query(path)


async def _audited_selection(settings: Settings, args: argparse.Namespace, query: Any) -> list[str]:
    """Resolve the subjects to export and record the export in the audit trail, before any
    file is written (no acknowledgement: the command fails and exports nothing)."""
    from cohortstream.cli_audit import audit_cli_export
    from cohortstream.cohort_query import CohortQuery, run_cohort_query
    from cohortstream.mongo import open_database
    from cohortstream.subject_view import resolve_subject_id

    async with open_database(settings) as db:
        if args.subjects:
            ids = sorted({await resolve_subject_id(db, text) for text in args.subjects})
        else:
            ids = (await run_cohort_query(db, query or CohortQuery())).subject_ids
    await audit_cli_export(settings, action="exports.bids", command="cohortstream export bids", subject_ids=ids)
    return ids


def _cmd_bids(settings: Settings, args: argparse.Namespace) -> int:
    from export.bids import export_bids

    # A tqdm bar over the subjects on a terminal (the exporter calls progress(stage, done,
    # total) before each subject, then for "tables" and "done"); --progress prints plain
    # lines instead, e.g. into a log file.
    bar: Any = None
    use_bar = not args.progress and not args.no_progress and sys.stderr.isatty()

    def progress(stage: str, done: int, total: int) -> None:
        nonlocal bar
        if args.progress:
            print(f"{stage}: {done}/{total}", file=sys.stderr)
        elif use_bar:
            if bar is None:
                from tqdm import tqdm

                bar = tqdm(desc="BIDS export", unit=" subjects", total=total, file=sys.stderr, mininterval=0.5)
            if stage != "done":  # "done" counts participants written, not subjects looked at
                bar.total, bar.n = total, done
            else:
                bar.n = bar.total
            bar.set_postfix_str(stage, refresh=True)

    query = _query(args.cohort)
    selected = asyncio.run(_audited_selection(settings, args, query))
    try:
        report = asyncio.run(
            export_bids(
                settings,
                args.outdir,
                query=None if selected else query,
                subjects=selected or None,
                progress=progress,
            )
        )
    finally:
        if bar is not None:
            bar.close()
    summary = report.to_dict()
    print(json.dumps(summary, indent=2, default=str))
    return 0


def add_commands(commands: Any) -> None:
    """Attach ``export`` to the top-level subcommands."""
    p = commands.add_parser("export", help="export the cohort to community formats (BIDS)")
    export = p.add_subparsers(dest="export_command", metavar="FORMAT", required=True)
    b = export.add_parser(
        "bids",
        help="write a BIDS dataset (NIfTI, phenotype/, participants.tsv, derivatives); "
        "re-running into the same OUTDIR writes only what changed",
    )
    b.add_argument("outdir", help="output directory (created; an earlier export there is updated)")
    who = b.add_mutually_exclusive_group()
    who.add_argument("--cohort", metavar="QUERY.json", help="only the subjects of this cohort query")
    who.add_argument(
        "--subjects", nargs="+", metavar="ID", help="subject ids or identifiers (dicom:..., redcap:..., ehr:...)"
    )
    b.add_argument(
        "--progress", action="store_true", help="print progress as plain lines to stderr (instead of the bar)"
    )
    b.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is off anyway when stderr is not a TTY)"
    )
    b.set_defaults(func=_cmd_bids)
