"""Keeping the subject read model current: the view sinks' side of
:mod:`cohortstream.subject_sets` (its format, facet names and reading live there).

After a batch, a sink calls :func:`refresh_subject_facets` with the identifier keys it
wrote and the subject ids a merge created or removed; the documents of those subjects
are *recomputed* from the views and replaced where they differ (a subject without
identifiers any more loses its document), then every set whose membership changed is
rewritten (compare-and-set on the shard's version, so agents refreshing the same subject
at once converge). :func:`rebuild_subject_facets` builds everything from the views.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from pymongo import ReplaceOne, UpdateOne

from cohortstream.mongo import find_all
from cohortstream.subject_sets import (
    FACETS,
    SETS,
    SUBJECT_ID_PATTERN,
    SubjectSet,
    encode_id,
    has_values,
    memberships,
    shard_of,
    subject_facet_doc,
)
from consumers.mongo_sink import MongoSink, chunks, together

__all__ = ["rebuild_subject_facets", "refresh_subject_facets"]

log = logging.getLogger(__name__)

_REGISTRY = "subject_identifiers"
_IN_CHUNK = 1000
_MAX_ROUNDS = 6
_PATIENT_FIELDS = {"modalities": 1, "sex_normalised": 1, "age_years": 1, "study_count": 1, "series_count": 1}
_QUESTIONNAIRE_FIELDS = {"subject_key": 1, "instrument": 1, "event_name": 1, "completion_status": 1, "project_id": 1}
_EHR_FIELDS = {"source": 1, "sex_normalised": 1, "age_years": 1, "diagnosis_codes": 1, "latest_labs": 1}


# --- I/O, through the sink's retries -------------------------------------------------


async def _find_in(
    sink: MongoSink, collection: str, field: str, values: Iterable[str], projection: dict[str, int] | None
) -> list[dict[str, Any]]:
    wanted = sorted(set(values))
    docs: list[dict[str, Any]] = []
    for chunk in chunks(wanted, _IN_CHUNK):
        docs += await sink.retry(
            partial(find_all, sink.db[collection], {field: {"$in": chunk}}, projection),
            f"read {collection} for subject facets",
        )
    return docs


async def _compute(sink: MongoSink, subject_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """Subject id → its document as the views say now (None: no identifier left)."""
    registry = await _find_in(sink, _REGISTRY, "subject_id", subject_ids, {"subject_id": 1, "kind": 1, "value": 1})
    members: dict[str, list[dict[str, Any]]] = {}
    for doc in registry:
        members.setdefault(str(doc["subject_id"]), []).append(doc)
    dicom = [str(d["value"]) for d in registry if d["kind"] == "dicom"]
    redcap = [str(d["_id"]) for d in registry if d["kind"] == "redcap"]
    ehr = [str(d["_id"]) for d in registry if d["kind"] == "ehr"]
    patient_docs, questionnaires, ehr_list = await together(
        _find_in(sink, "patients", "_id", dicom, _PATIENT_FIELDS),
        _find_in(sink, "questionnaires", "subject_key", redcap, _QUESTIONNAIRE_FIELDS),
        _find_in(sink, "ehr_subjects", "_id", ehr, _EHR_FIELDS),
    )
    patients = {str(d["_id"]): d for d in patient_docs}
    ehr_docs = {str(d["_id"]): d for d in ehr_list}
    return {
        sid: subject_facet_doc(sid, members[sid], patients, questionnaires, ehr_docs) if sid in members else None
        for sid in subject_ids
    }


async def refresh_subject_facets(
    sink: MongoSink, keys: Iterable[str] = (), subject_ids: Iterable[str] = ()
) -> set[str]:
    """Recompute the documents of the subjects of these identifier keys, of these
    subject ids (those a merge created or removed) and of any subject whose document
    still holds one of their identifiers, then the sets whose membership changed.
    Idempotent; returns the names of the sets that were checked."""
    identifiers = set(keys)
    found = {str(d["subject_id"]) for d in await _find_in(sink, _REGISTRY, "_id", identifiers, {"subject_id": 1})}
    found |= {str(s) for s in subject_ids}
    # Documents that still name one of these subjects' identifiers under another id are
    # subjects a merge removed (even one whose report was lost in a crash): refreshed too,
    # they become tombstones.
    identifiers |= {str(d["_id"]) for d in await _find_in(sink, _REGISTRY, "subject_id", found, {"_id": 1})}
    found |= {str(d["_id"]) for d in await _find_in(sink, FACETS, "identifiers", identifiers, {"_id": 1})}
    wanted = sorted(found)
    touched: dict[str, set[str]] = {}
    for chunk in chunks(wanted, _IN_CHUNK):
        for name, subjects in (await _refresh_documents(sink, chunk)).items():
            touched.setdefault(name, set()).update(subjects)
    if touched:
        await _refresh_sets(sink, touched)
        done = sorted({sid for sids in touched.values() for sid in sids})
        for chunk in chunks(done, _IN_CHUNK):
            await sink.retry(
                partial(sink.db[FACETS].delete_many, {"_id": {"$in": chunk}, "deleted": True}), "drop vanished subjects"
            )
            await sink.retry(
                partial(
                    sink.db[FACETS].update_many,
                    {"_id": {"$in": chunk}, "pending": {"$exists": True}},
                    {"$unset": {"pending": ""}},
                ),
                "mark subject sets done",
            )
    return set(touched)


async def _refresh_documents(sink: MongoSink, subject_ids: Sequence[str]) -> dict[str, set[str]]:
    """Replace the documents that differ from the views; set name → subjects whose
    membership in it may have changed.

    A changed document is written with ``pending`` (the sets it joined or left) until
    its sets are updated, and a vanished subject's document becomes a ``deleted``
    tombstone until then: a refresh that finds them (an agent stopped in between, or
    still at work) checks those sets again, so a crash between the two steps is repaired
    when the batch is applied again."""
    touched: dict[str, set[str]] = {}
    for _ in range(_MAX_ROUNDS):
        computed, stored_docs = await together(
            _compute(sink, subject_ids), _find_in(sink, FACETS, "_id", subject_ids, None)
        )
        stored = {str(d["_id"]): d for d in stored_docs}
        operations: list[Any] = []
        for sid in subject_ids:
            new, doc = computed[sid], stored.get(sid)
            for name in (doc or {}).get("pending") or []:
                touched.setdefault(str(name), set()).add(sid)
            old = None if doc is None or doc.get("deleted") else {k: v for k, v in doc.items() if k != "pending"}
            if new == old:
                continue
            before, after = memberships(old), memberships(new)
            moved = sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))
            for name in moved:
                touched.setdefault(name, set()).add(sid)
            pending = sorted({*moved, *((doc or {}).get("pending") or [])})
            replacement = {"_id": sid, "deleted": True} if new is None else dict(new)
            operations.append(ReplaceOne({"_id": sid}, {**replacement, "pending": pending}, upsert=True))
        if not operations:
            return touched
        for ops in chunks(operations):
            await sink.retry(partial(sink.db[FACETS].bulk_write, ops, ordered=False), "update subject facets")
    log.warning(
        "subject facets still changing after %d rounds (concurrent writers); the next batch settles them", _MAX_ROUNDS
    )
    return touched


async def _refresh_sets(sink: MongoSink, touched: Mapping[str, set[str]]) -> None:
    """Make the shards of the touched sets hold exactly what the stored documents of the
    touched subjects say, by compare-and-set on each shard's version."""
    subjects = sorted({sid for sids in touched.values() for sid in sids if SUBJECT_ID_PATTERN.match(sid)})
    for _ in range(_MAX_ROUNDS):
        docs = {
            str(d["_id"]): d
            for d in await _find_in(sink, FACETS, "_id", subjects, {"facets": 1, "labs": 1, "deleted": 1})
            if not d.get("deleted")
        }
        member = {sid: memberships(docs.get(sid)) for sid in subjects}
        shards: dict[str, tuple[set[int], dict[int, list[float]]]] = {}  # shard _id → (touched, members)
        for name, sids in touched.items():
            for sid in sids:
                if not SUBJECT_ID_PATTERN.match(sid):
                    continue
                ids, members = shards.setdefault(f"{name}#{shard_of(sid)}", (set(), {}))
                ids.add(encode_id(sid))
                if name in member[sid]:
                    members[encode_id(sid)] = member[sid][name]
        current = {str(d["_id"]): d for d in await _find_in(sink, SETS, "_id", shards, None)}
        missing = [shard_id for shard_id, (_, members) in sorted(shards.items()) if shard_id not in current and members]
        if missing:  # created empty first (idempotent), then filled like any other: no upsert races
            await sink.bulk_write(SETS, [_empty_shard(shard_id) for shard_id in missing], "create subject set shards")
            current.update({str(d["_id"]): d for d in await _find_in(sink, SETS, "_id", missing, None)})
        operations: list[UpdateOne] = []
        for shard_id, (ids, members) in sorted(shards.items()):
            doc = current.get(shard_id)
            if doc is None:  # no such shard and nobody to add: nothing to remove either
                continue
            name, _, shard = shard_id.rpartition("#")
            before = SubjectSet.from_doc(doc)
            after = before.replaced(ids, members)
            if after.same_as(before):
                continue
            version = int(doc["v"])
            fields = after.document(name, shard, version + 1)
            del fields["_id"]
            operations.append(UpdateOne({"_id": shard_id, "v": version}, {"$set": fields}))
        if not operations:
            return
        # Compare-and-set: a shard another agent rewrote meanwhile is not matched, and the
        # next round reads it again.
        for ops in chunks(operations, 100):
            await sink.retry(partial(sink.db[SETS].bulk_write, ops, ordered=False), "update subject sets")
    log.warning(
        "subject sets still changing after %d rounds (concurrent writers); the next batch settles them", _MAX_ROUNDS
    )


def _empty_shard(shard_id: str) -> UpdateOne:
    name, _, shard = shard_id.rpartition("#")
    fields = SubjectSet.empty(has_values(name)).document(name, shard, 0)
    del fields["_id"]
    return UpdateOne({"_id": shard_id}, {"$setOnInsert": fields}, upsert=True)


async def rebuild_subject_facets(sink: MongoSink) -> int:
    """Build the read model from the views for every registered subject (a database
    filled before it existed), and drop documents of vanished subjects. Returns the
    number of subjects."""
    subject_ids = sorted(
        {str(s) for s in await sink.retry(lambda: sink.db[_REGISTRY].distinct("subject_id"), "list subjects")}
    )
    stale = [
        str(d["_id"])
        for d in await sink.retry(lambda: sink.db[FACETS].find({}, {"_id": 1}).to_list(None), "list subject facets")
    ]
    await refresh_subject_facets(sink, subject_ids=[*subject_ids, *stale])
    return len(subject_ids)
