"""The subject registry: one research subject, many identifiers (DESIGN decision 6).

A subject is known to the DICOM archive by its PatientID, to REDCap by a record id in a
project, and to an EHR extract by that source's subject id. The registry holds one
document per identifier (collection ``subject_identifiers``, ``_id`` = the identifier's
key) that names the subject it belongs to. Views stay keyed by their source identifiers;
the registry is what joins them, at query time, so the order in which the sources arrive
does not matter.

Rules:

- A subject holds at most one identifier per *scope*: one DICOM PatientID, one record per
  REDCap project, one subject id per EHR source. Linking two identifiers whose subjects
  already hold different identifiers in the same scope is a conflict: it is refused with
  :class:`SubjectLinkConflict` (and recorded in ``subject_link_conflicts``), never merged.
- The subject id is a function of the set of identifiers (a hash of the smallest key), so
  replaying the same links in any order gives the same ids, and it reveals no identifier.
- No transactions (none are needed, so the deployment's MongoDB runs as a plain single
  node): a merge rewrites the members one by one and then
  checks; concurrent merges that interleave are repaired by re-running the link until
  both identifiers resolve to the same subject.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, ClassVar

from pymongo import UpdateOne

from cohortstream.errors import CohortStreamError
from cohortstream.mongo import find_all
from cohortstream.settings import Settings
from cohortstream.subject_sets import FACET_INDEXES
from cohortstream.subjects import SubjectIdentifier, subject_id_for
from consumers.mongo_sink import IndexSpec, MongoSink

__all__ = ["SubjectAwareSink", "SubjectLinkConflict", "SubjectRegistry"]

log = logging.getLogger(__name__)

_MAX_LINK_ROUNDS = 10


class SubjectLinkConflict(CohortStreamError, ValueError):
    """Two identifiers cannot belong to one subject: their subjects clash in a scope."""


def _document(identifier: SubjectIdentifier, subject_id: str) -> dict[str, Any]:
    return {
        "subject_id": subject_id,
        "kind": identifier.kind,
        "scope": identifier.scope,
        "value": identifier.value,
    }


class SubjectRegistry(MongoSink):
    """Register identifiers, link them into subjects, resolve them.

    Merges change subject ids: the ids a merge removed or created are collected in
    :attr:`merged_subjects` until :meth:`take_merged_subjects`, so the sink that linked
    can refresh what is keyed by subject id (``consumers/subject_facets.py``).
    """

    INDEXES: ClassVar[IndexSpec] = {"subject_identifiers": ["subject_id"], **FACET_INDEXES}

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.merged_subjects: set[str] = set()

    def take_merged_subjects(self) -> set[str]:
        """The subject ids merges removed or created since the last call."""
        taken, self.merged_subjects = self.merged_subjects, set()
        return taken

    async def register(self, identifiers: Sequence[SubjectIdentifier]) -> None:
        """Make sure each identifier belongs to some subject (a new one if unknown)."""
        unique = sorted(set(identifiers))
        operations = [
            UpdateOne(
                {"_id": identifier.key},
                {"$setOnInsert": _document(identifier, subject_id_for([identifier.key]))},
                upsert=True,
            )
            for identifier in unique
        ]
        await self.bulk_write("subject_identifiers", operations, "register subject identifiers")

    async def subject_of(self, identifier: SubjectIdentifier) -> str | None:
        """The subject id of ``identifier``, or None when it was never registered."""
        doc = await self.retry(
            lambda: self.db["subject_identifiers"].find_one({"_id": identifier.key}, {"subject_id": 1}),
            "find subject identifier",
        )
        return None if doc is None else str(doc["subject_id"])

    async def subjects_of(self, keys: Iterable[str]) -> dict[str, str]:
        """Identifier key → subject id, for the keys that are registered."""
        wanted = sorted(set(keys))
        found: dict[str, str] = {}
        for chunk_start in range(0, len(wanted), 1000):
            chunk = wanted[chunk_start : chunk_start + 1000]
            docs = await self.retry(
                partial(find_all, self.db["subject_identifiers"], {"_id": {"$in": chunk}}, {"subject_id": 1}),
                "resolve subject identifiers",
            )
            found.update({str(d["_id"]): str(d["subject_id"]) for d in docs})
        return found

    async def members(self, subject_id: str) -> list[SubjectIdentifier]:
        """Every identifier of a subject, sorted."""
        docs = await self.retry(
            lambda: self.db["subject_identifiers"].find({"subject_id": subject_id}).to_list(None),
            "list subject identifiers",
        )
        return sorted(SubjectIdentifier(d["kind"], d["scope"], d["value"]) for d in docs)

    async def link(self, first: SubjectIdentifier, second: SubjectIdentifier, reason: str) -> str:
        """Put both identifiers in one subject and return its id.

        Raises :class:`SubjectLinkConflict` when their subjects hold different
        identifiers in a common scope (e.g. two DICOM PatientIDs); nothing changes then.
        """
        if first.scope_key == second.scope_key and first != second:
            raise await self._conflict(first, second, reason, f"both are {first.scope_key} identifiers")
        await self.register([first, second])
        for _ in range(_MAX_LINK_ROUNDS):
            subject_a, subject_b = await self.subject_of(first), await self.subject_of(second)
            if subject_a is None or subject_b is None:  # unregistered meanwhile: register again
                await self.register([first, second])
                continue
            if subject_a == subject_b:
                await self._record_link(first, second, reason)
                return subject_a
            members_a, members_b = await self.members(subject_a), await self.members(subject_b)
            clash = _clash(members_a, members_b)
            if clash:
                raise await self._conflict(first, second, reason, clash)
            merged = subject_id_for(m.key for m in members_a + members_b)
            self.merged_subjects.update({subject_a, subject_b, merged})
            for subject in (subject_a, subject_b):
                if subject != merged:
                    await self.retry(
                        partial(
                            self.db["subject_identifiers"].update_many,
                            {"subject_id": subject},
                            {"$set": {"subject_id": merged}},
                        ),
                        "merge subjects",
                    )
            log.info("subjects merged", extra={"subject_id": merged, "reason": reason})
        raise CohortStreamError(f"linking {first} and {second} did not settle after {_MAX_LINK_ROUNDS} rounds")

    async def _record_link(self, first: SubjectIdentifier, second: SubjectIdentifier, reason: str) -> None:
        a, b = sorted((first.key, second.key))
        await self.retry(
            lambda: self.db["subject_links"].update_one(
                {"_id": f"{a} = {b}"}, {"$setOnInsert": {"identifiers": [a, b], "reason": reason}}, upsert=True
            ),
            "record subject link",
        )

    async def _conflict(
        self, first: SubjectIdentifier, second: SubjectIdentifier, reason: str, detail: str
    ) -> SubjectLinkConflict:
        a, b = sorted((first.key, second.key))
        message = f"refused to link {a} and {b} ({reason}): {detail}"
        await self.retry(
            lambda: self.db["subject_link_conflicts"].update_one(
                {"_id": f"{a} = {b}"},
                {
                    "$set": {"identifiers": [a, b], "reason": reason, "detail": detail},
                    "$setOnInsert": {"first_seen_at": datetime.now(UTC)},
                },
                upsert=True,
            ),
            "record subject link conflict",
        )
        log.warning("subject link refused", extra={"reason": reason, "detail": detail})
        return SubjectLinkConflict(message)

    async def conflicts(self) -> list[dict[str, Any]]:
        """The links that were refused, for people to resolve."""
        return list(
            await self.retry(
                lambda: self.db["subject_link_conflicts"].find().sort("_id").to_list(None), "list link conflicts"
            )
        )


def _clash(members_a: Sequence[SubjectIdentifier], members_b: Sequence[SubjectIdentifier]) -> str | None:
    scopes_a = {m.scope_key: m for m in members_a}
    for member in members_b:
        other = scopes_a.get(member.scope_key)
        if other is not None and other != member:
            return f"one subject already has {other} and the other has {member}"
    return None


class SubjectAwareSink(MongoSink):
    """A view builder that also registers (and links) the identifiers it sees."""

    def __init__(self, settings: Settings, registry: SubjectRegistry | None = None) -> None:
        super().__init__(settings)
        self.registry = registry or SubjectRegistry(settings)

    async def setup(self) -> None:
        await super().setup()
        await self.registry.setup()

    async def close(self) -> None:
        await self.registry.close()
        await super().close()
