"""``cohortstream audit [--subject S] [--key K] [--since T]``: read the audit trail, and the
CLI's own audit events.

The query is the one ``GET /audit`` runs (:func:`cohortstream.audit.find_audit_events`),
printed as one JSON object per line, newest first. :func:`audit_cli_export` is how a
CLI export records itself before it writes anything: the actor is ``cli:<os user>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import datetime
from typing import Any

from cohortstream.settings import Settings

__all__ = ["add_commands", "audit_cli_export"]


def _since(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--since: not an ISO 8601 time: {text!r}") from exc
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("--since: give a time zone (e.g. 2024-05-01T00:00:00Z)")
    return value


async def _find(settings: Settings, args: argparse.Namespace) -> list[dict[str, Any]]:
    from cohortstream.audit import find_audit_events
    from cohortstream.mongo import open_database
    from cohortstream.subject_view import SubjectNotFoundError, resolve_subject_id

    async with open_database(settings) as db:
        subject_id = None
        if args.subject is not None:
            try:
                subject_id = await resolve_subject_id(db, args.subject)
            except SubjectNotFoundError:
                subject_id = args.subject  # merged away or unregistered: its trail may still exist
        return await find_audit_events(db, subject_id=subject_id, actor_id=args.key, since=args.since, limit=args.limit)


def _cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    for doc in asyncio.run(_find(settings, args)):
        print(json.dumps(doc, default=str, sort_keys=True))
    return 0


async def audit_cli_export(settings: Settings, *, action: str, command: str, subject_ids: list[str]) -> None:
    """Record that the command-line user exports ``subject_ids``; raises
    :class:`~cohortstream.audit.AuditUnavailableError` when Kafka does not acknowledge."""
    from cohortstream.audit import access_event, cli_actor, publish_audit, sha256_hex
    from cohortstream.events import AuditOutcome
    from cohortstream.publisher import EventPublisher, PublishError

    event = access_event(
        settings,
        cli_actor(),
        producer="cli",
        action=action,
        endpoint=command,
        outcome=AuditOutcome.SUCCESS,
        subject_ids=subject_ids,
        query_sha256=sha256_hex(command.encode("utf-8")),
    )
    publisher = EventPublisher(settings)
    try:
        await publisher.start()
    except PublishError as exc:
        from cohortstream.audit import AuditUnavailableError

        raise AuditUnavailableError(f"the audit trail is unavailable, nothing was exported: {exc}") from exc
    try:
        await publish_audit(publisher, event)
    finally:
        await publisher.stop()


def add_commands(commands: Any) -> None:
    """Attach ``audit`` to the top-level subcommands."""
    p = commands.add_parser("audit", help="who accessed a subject, what a key did (the audit trail, newest first)")
    p.add_argument("--subject", help="a subject id or identifier (dicom:..., redcap:..., ehr:...)")
    p.add_argument("--key", help="an API key id, or cli:<user> for command-line exports")
    p.add_argument("--since", type=_since, help="only accesses at or after this ISO 8601 time (with zone)")
    p.add_argument("--limit", type=int, default=100, help="at most this many records (default 100)")
    p.set_defaults(func=_cmd_audit)
