"""``cohortstream orthanc ...``: the Orthanc change feed, its reconciliation and its state.

Instances that reach Orthanc by any route other than our listener (a C-STORE to
Orthanc's own port, STOW-RS, a REST upload, a viewer's save, a C-MOVE) become events
through the feed (``producers/orthanc``)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from cohortstream.settings import Settings

__all__ = ["add_commands"]


def _cmd_feed(settings: Settings, args: argparse.Namespace) -> int:
    from producers.orthanc.feed import serve_feed

    return serve_feed(settings)


def _cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from producers.orthanc.reconcile import reconcile

    report = asyncio.run(reconcile(settings, studies=args.study or (), dry_run=args.dry_run))
    print(report.summary())
    if args.list_missing:
        for uid in report.missing_uids:
            print(f"missing\t{uid}")
    return 0


def _cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from cohortstream.mongo import open_database
    from cohortstream.orthanc import OrthancClient
    from producers.orthanc.checkpoint import CheckpointStore

    async def state() -> dict[str, Any]:
        async with open_database(settings) as db, OrthancClient(settings) as orthanc:
            checkpoint = await CheckpointStore(db).load()
            newest = int((await orthanc.last_change()).get("Last") or 0)
        seq = checkpoint.seq if checkpoint else None
        return {
            "checkpoint_seq": seq,
            "orthanc_last_seq": newest,
            "lag_changes": None if seq is None else max(0, newest - seq),
            "gap": checkpoint.gap if checkpoint else None,
        }

    print(json.dumps(asyncio.run(state()), indent=2, default=str))
    return 0


def add_commands(commands: Any) -> None:
    """Register ``orthanc feed|reconcile|status`` on the CLI's subcommand parser."""
    p = commands.add_parser(
        "orthanc", help="Orthanc as a source: follow its change feed, reconcile, show the feed's state"
    )
    orthanc = p.add_subparsers(dest="orthanc_command", metavar="ACTION", required=True)
    f = orthanc.add_parser(
        "feed",
        help="publish an event for every instance Orthanc stores, by any route (checkpointed; /healthz, /metrics)",
    )
    f.set_defaults(func=_cmd_feed)
    r = orthanc.add_parser(
        "reconcile",
        help="list every instance in Orthanc and publish those the views lack (after a gap in the change feed); safe to rerun",
    )
    r.add_argument("--study", action="append", metavar="UID", help="only this Study Instance UID (repeatable)")
    r.add_argument("--dry-run", action="store_true", help="only count what is missing; publish nothing")
    r.add_argument("--list-missing", action="store_true", help="print the SOP Instance UID of every missing instance")
    r.set_defaults(func=_cmd_reconcile)
    s = orthanc.add_parser("status", help="the feed's checkpoint, Orthanc's last change, the lag and any gap (JSON)")
    s.set_defaults(func=_cmd_status)
