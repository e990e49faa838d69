"""The audit trail's producer side: who accessed which subjects, recorded before the data leaves.

Every access path (the API's reads, cohort queries and exports, reviews, the DICOMweb
proxy, the CLI's exports) builds an :class:`~cohortstream.events.AccessAudited` event
here and waits for Kafka's acknowledgement (``acks=all``) *before* it serves anything;
when the broker does not acknowledge, :class:`AuditUnavailableError` is raised and the
caller refuses (the API answers 503, the CLI exits non-zero without exporting). The
``audit-trail`` agent keeps the events in an append-only collection
(:mod:`consumers.audit_trail`); :func:`find_audit_events` is the read side that
``GET /audit`` and ``cohortstream audit`` share.

What an event may hold is deliberately narrow: the caller's key id and name (never a
secret), a stable action name and route template (never the concrete URL, which can
carry an identifier such as ``dicom:P-0001``), a sha256 of the request body or query,
registry subject ids (never PatientIDs, record ids or names) and the source address.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cohortstream.errors import CohortStreamError
from cohortstream.events import AccessAudited, AuditOutcome
from cohortstream.mongo import AsyncDatabase
from cohortstream.publisher import EventPublisher, PublishError
from cohortstream.settings import Settings
from cohortstream.subjects import SubjectIdentifier

__all__ = [
    "AUDIT_COLLECTION",
    "NOT_AUDITED_STATUSES",
    "Actor",
    "AuditUnavailableError",
    "access_event",
    "cli_actor",
    "find_audit_events",
    "outcome_of_status",
    "publish_audit",
    "sha256_hex",
    "subjects_of_series",
    "subjects_of_studies",
]

log = logging.getLogger(__name__)

AUDIT_COLLECTION = "audit_trail"
"""The append-only collection the ``audit-trail`` agent keeps (:mod:`consumers.audit_trail`)."""


class AuditUnavailableError(CohortStreamError):
    """The audit event was not acknowledged: the access must be refused (API: 503)."""


@dataclass(frozen=True)
class Actor:
    """Who accesses: an API key (id, name, role) or a command-line user."""

    actor_id: str
    name: str
    role: str | None = None
    source_address: str | None = None


def cli_actor() -> Actor:
    """The command line's actor: ``cli:<operating-system user>`` from ``local:<host>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's anonymous uid)
        user = "unknown"
    return Actor(actor_id=f"cli:{user}", name=user, source_address=f"local:{socket.gethostname()}")


def sha256_hex(data: bytes | None) -> str | None:
    """sha256 of ``data`` as hex; None for no data (so an empty query records no hash)."""
    return hashlib.sha256(data).hexdigest() if data else None


NOT_AUDITED_STATUSES = frozenset({401, 403, 429})
"""Refused before any data was looked at (credential, role, rate limit): logged by the
auth layer, not audited, so a flood of bad keys never floods the trail (or needs Kafka)."""


def outcome_of_status(status: int) -> AuditOutcome:
    """The audit outcome of an HTTP status."""
    if status < 400:
        return AuditOutcome.SUCCESS
    if status == 404:
        return AuditOutcome.NOT_FOUND
    if status < 500:
        return AuditOutcome.INVALID
    return AuditOutcome.FAILED


def access_event(
    settings: Settings,
    actor: Actor,
    *,
    producer: str,
    action: str,
    endpoint: str,
    outcome: AuditOutcome,
    subject_ids: Iterable[str] | None,
    query_sha256: str | None = None,
    status: int | None = None,
) -> AccessAudited:
    """The event of one access. ``subject_ids`` None: not known before serving (a search);
    more than ``audit_max_subject_ids`` are counted, the first ones listed."""
    ids = sorted(set(subject_ids)) if subject_ids is not None else []
    listed = ids[: settings.audit_max_subject_ids]
    return AccessAudited(
        producer=producer,
        actor_id=actor.actor_id,
        actor_name=actor.name,
        actor_role=actor.role,
        action=action,
        endpoint=endpoint,
        query_sha256=query_sha256,
        subject_ids=listed,
        subject_count=len(ids) if subject_ids is not None else None,
        subject_ids_truncated=len(listed) < len(ids),
        outcome=outcome,
        status=status,
        source_address=actor.source_address,
    )


async def publish_audit(publisher: EventPublisher, event: AccessAudited) -> None:
    """Publish ``event`` and wait for the broker; :class:`AuditUnavailableError` otherwise."""
    try:
        await publisher.publish(event, key=event.actor_id)
    except PublishError as exc:
        log.error(
            "audit event not recorded; the access is refused",
            extra={"action": event.action, "actor_id": event.actor_id, "error": str(exc)},
        )
        raise AuditUnavailableError(f"the audit trail is unavailable: {exc}") from exc
    log.info(
        "access audited",
        extra={
            "action": event.action,
            "actor_id": event.actor_id,
            "outcome": event.outcome.value,
            "subject_count": event.subject_count,
        },
    )


async def _subjects_of_patients(db: AsyncDatabase, patient_ids: Iterable[str]) -> list[str]:
    keys = sorted({SubjectIdentifier.dicom(pid).key for pid in patient_ids})
    if not keys:
        return []
    docs = await db["subject_identifiers"].find({"_id": {"$in": keys}}, {"subject_id": 1}).to_list()
    return sorted({str(d["subject_id"]) for d in docs})


async def subjects_of_studies(db: AsyncDatabase, study_uids: Sequence[str]) -> list[str]:
    """The subject ids of DICOM studies (through the studies view and the registry)."""
    if not study_uids:
        return []
    docs = await db["studies"].find({"_id": {"$in": list(study_uids)}}, {"patient_id": 1}).to_list()
    return await _subjects_of_patients(db, (str(d["patient_id"]) for d in docs if d.get("patient_id")))


async def subjects_of_series(db: AsyncDatabase, series_uids: Sequence[str]) -> list[str]:
    """The subject ids of DICOM series (through the series view and the registry)."""
    if not series_uids:
        return []
    docs = await db["series"].find({"_id": {"$in": list(series_uids)}}, {"patient_id": 1}).to_list()
    return await _subjects_of_patients(db, (str(d["patient_id"]) for d in docs if d.get("patient_id")))


async def find_audit_events(
    db: AsyncDatabase,
    *,
    subject_id: str | None = None,
    actor_id: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Audit documents matching every filter given, newest first (one indexed find)."""
    query: dict[str, Any] = {}
    if subject_id is not None:
        query["subject_ids"] = subject_id
    if actor_id is not None:
        query["actor_id"] = actor_id
    if since is not None:
        query["at"] = {"$gte": since}
    docs = await db[AUDIT_COLLECTION].find(query).sort("at", -1).limit(limit).to_list()
    return [{**{k: v for k, v in d.items() if k != "_id"}, "event_id": d["_id"]} for d in docs]
