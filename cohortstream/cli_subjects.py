"""``cohortstream subjects ...`` and ``cohortstream cohort query``: linkage by hand and
cross-modal cohort questions from the command line (JSON out, for people and scripts)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from cohortstream.errors import CohortStreamError
from cohortstream.settings import Settings

__all__ = ["CohortQueryFileError", "add_commands", "read_cohort_query"]

T = TypeVar("T")


class CohortQueryFileError(CohortStreamError, ValueError):
    """The cohort query file is not valid JSON or not a valid query."""


def _with_database(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from cohortstream.mongo import open_database

    async def run() -> T:
        async with open_database(settings) as db:
            return await work(db)

    return asyncio.run(run())


def _print(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=True, default=str))


def _cmd_link(settings: Settings, args: argparse.Namespace) -> int:
    from cohortstream.subjects import SubjectIdentifier
    from consumers.subject_facets import refresh_subject_facets
    from consumers.subject_registry import SubjectRegistry

    first, second = SubjectIdentifier.parse(args.first), SubjectIdentifier.parse(args.second)

    async def link() -> str:
        registry = SubjectRegistry(settings)
        await registry.setup()
        try:
            subject_id = await registry.link(first, second, args.reason)
            # The merged subject's read model (list, filters, cohort sets) at once, not
            # only when a sink next touches it.
            await refresh_subject_facets(registry, [first.key, second.key], registry.take_merged_subjects())
            return subject_id
        finally:
            await registry.close()

    print(asyncio.run(link()))
    return 0


def _cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    from cohortstream.subject_view import ehr_timeline, subject_view

    async def show(db: Any) -> dict[str, Any]:
        view = await subject_view(db, args.subject)  # the same query as GET /subjects/{subject}
        if args.timeline:
            view["ehr_timeline"] = await ehr_timeline(db, view["subject_id"], limit=args.timeline)
        return view

    _print(_with_database(settings, show))
    return 0


def _cmd_conflicts(settings: Settings, args: argparse.Namespace) -> int:
    async def conflicts(db: Any) -> list[dict[str, Any]]:
        return list(await db["subject_link_conflicts"].find().sort("_id").to_list())

    _print(_with_database(settings, conflicts))
    return 0


def read_cohort_query(path: str) -> Any:
    """The query in ``path`` (``-``: standard input), validated; errors name the field."""
    from cohortstream.cohort_query import CohortQuery

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CohortQueryFileError(f"cohort query file {path}: {exc}") from exc
    try:
        return CohortQuery.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'query'}: {e['msg']}" for e in exc.errors())
        raise CohortQueryFileError(f"cohort query file {path}: {problems}") from exc


def _cmd_query(settings: Settings, args: argparse.Namespace) -> int:
    from cohortstream.cohort_query import run_cohort_query

    query = read_cohort_query(args.file)
    result = _with_database(settings, lambda db: run_cohort_query(db, query))
    _print({"count": result.count, "per_criterion": result.per_criterion, "subject_ids": result.subject_ids})
    return 0


def _cmd_rebuild(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.subject_facets import rebuild_subject_facets
    from consumers.subject_registry import SubjectRegistry

    async def rebuild() -> int:
        registry = SubjectRegistry(settings)  # any connected sink: the registry creates the indexes
        await registry.setup()
        try:
            return await rebuild_subject_facets(registry)
        finally:
            await registry.close()

    print(f"subject read model rebuilt for {asyncio.run(rebuild())} subjects")
    return 0


def add_commands(commands: Any) -> None:
    """Attach ``subjects`` and ``cohort`` to the top-level subcommands."""
    p = commands.add_parser("subjects", help="the subject registry: link identifiers, show a subject, list conflicts")
    subjects = p.add_subparsers(dest="subjects_command", metavar="ACTION", required=True)
    s = subjects.add_parser(
        "link", help="link two identifiers of one subject (dicom:PID, redcap:URL|PID|RECORD, ehr:SOURCE|ID)"
    )
    s.add_argument("first")
    s.add_argument("second")
    s.add_argument("--reason", default="explicit link (cli)", help="kept with the link")
    s.set_defaults(func=_cmd_link)
    s = subjects.add_parser("show", help="everything the views hold about a subject (id or identifier), as JSON")
    s.add_argument("subject", help="subject id (S...) or one of its identifiers")
    s.add_argument("--timeline", type=int, default=0, metavar="N", help="also the first N EHR timeline entries")
    s.set_defaults(func=_cmd_show)
    s = subjects.add_parser("conflicts", help="links that were refused because they clash")
    s.set_defaults(func=_cmd_conflicts)
    s = subjects.add_parser(
        "rebuild-sets",
        help="rebuild the subject read model (subject_facets, subject_sets) from the views: once after upgrading "
        "a database filled before it existed; the view sinks keep it current afterwards",
    )
    s.set_defaults(func=_cmd_rebuild)

    p = commands.add_parser("cohort", help="cross-modal cohort queries over the views")
    cohort = p.add_subparsers(dest="cohort_command", metavar="ACTION", required=True)
    q = cohort.add_parser("query", help="answer a query (JSON file, - for stdin): subject ids and counts")
    q.add_argument("file")
    q.set_defaults(func=_cmd_query)
