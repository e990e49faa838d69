"""The subject read model: ``subject_facets`` documents and ``subject_sets``, their format and reading.

In the core because the cohort query (core), the API and the sinks that keep the model
(:mod:`consumers.subject_facets`) all need the same facet names, id encoding and set
format; the writing side stays with the sinks.

Why: the views are keyed by *source* identifiers (DESIGN decision 4), so a question about
subjects ("PT imaging, a completed baseline, creatinine ≥ 2.5, a diagnosis I1*") used to
mean one broad ``find`` per criterion, every source key resolved through the registry,
and the sets intersected in Python: 50,000 ids through the driver for a broad criterion.
The local MongoDB-wire server pays about 5–20 µs per index key a query visits, so even
an indexed count of a broad facet (50,000 keys) takes about a second there. This module
turns the registry's join around once, at write time, into two collections:

``subject_facets`` (``_id`` = subject id), one document per registered subject
    - the summary row of the subject list and of the export (``identifiers``,
      ``sources``, ``modalities``, ``sex``, ``age_years``, ``study_count``,
      ``series_count``, ``questionnaire_count``, ``has_ehr``), the same values
      :func:`api.subject_store.summaries_from_views` computes from the views;
    - ``facets``: one short string per filterable fact (:func:`modality_facet`,
      :func:`sex_facet`, :func:`source_facet`, :func:`questionnaires_facet`,
      :func:`questionnaire_facet` for instrument/event/status/project,
      :func:`diagnosis_facet` for every prefix of every diagnosis code up to
      :data:`DIAGNOSIS_PREFIX_MAX` characters, and :data:`ALL_SUBJECTS`);
    - ``labs``: the latest numeric value per lab code and source
      (``{c: code, s: source, v: value}``), and ``dx_codes`` (``source|code``).

``subject_sets``: per facet, the **sorted set of its subjects** — and per lab code (any
source, and per source) the subjects with their latest values — as packed arrays. A
subject id is ``S`` + 15 upper-case hex digits, so it *is* a 60-bit integer whose order
is the id's order: a set is a sorted ``uint64`` array (8 bytes a subject, a lab set adds
a ``float64`` value per subject), cut into 16 shard documents by the id's first hex
digit (``_id`` = ``<set>#<digit>``) so that a write rewrites one small document and two
agents rarely touch the same one. A cohort query reads the sets of its criteria (one
indexed ``find``), filters lab values and intersects in memory (numpy), and the count of
each criterion is the length of its set: no count runs over the index, no subject id
travels that is not in the answer. A filtered page of the list walks the intersection
in subject-id order from the cursor.

Both are maintained idempotently (DESIGN decision 4). After a batch, a sink calls
:func:`refresh_subject_facets` with the identifier keys it wrote and the subject ids a
merge created or removed; the documents of those subjects are *recomputed* from the
views and replaced where they differ (a subject without identifiers any more loses its
document), then every set whose membership changed is rewritten from those documents:
the shard's array with these subjects' entries replaced, written only if its version is
still the one read (compare-and-set). Agents that refresh the same subject at once (the
DICOM and EHR agents of one subject) each write what they read: so both steps repeat
until a fresh read equals what is stored, and the last writer leaves the documents and
the sets as the views are after every writer's update.

Only plain find/update/bulk_write/index calls: MongoDB 7 and the local server alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from bson.binary import Binary

__all__ = [
    "ALL_SUBJECTS",
    "ANY",
    "DIAGNOSIS_PREFIX_MAX",
    "FACETS",
    "FACET_INDEXES",
    "SETS",
    "SUBJECT_ID_PATTERN",
    "SUMMARY_FIELDS",
    "SubjectSet",
    "decode_ids",
    "diagnosis_facet",
    "encode_id",
    "facets_of",
    "has_values",
    "lab_entries",
    "lab_set",
    "memberships",
    "modality_facet",
    "questionnaire_facet",
    "questionnaires_facet",
    "read_sets",
    "set_documents",
    "sex_facet",
    "shard_of",
    "source_facet",
    "subject_facet_doc",
]

FACETS = "subject_facets"
SETS = "subject_sets"

#: Indexes of the read model (in :attr:`MongoSink.INDEXES` form): the shards of sets by
#: set name, and subject documents by identifier (to find those a merge left behind).
FACET_INDEXES: dict[str, list[str | list[str]]] = {SETS: ["set"], FACETS: ["identifiers"]}

#: Diagnosis prefixes are facets up to this many characters (ICD-10 ``E11.65`` has 6);
#: a longer prefix is answered by its first characters' set plus a regex on ``dx_codes``.
DIAGNOSIS_PREFIX_MAX = 8

#: "Any" in a facet position (project, event, EHR source) the criterion leaves open.
ANY = "*"

#: The facet every subject carries: its set is the list of all subjects.
ALL_SUBJECTS = "subjects"

#: The summary row's fields, as :func:`api.subject_store.subject_summaries` answers them.
SUMMARY_FIELDS = (
    "identifiers",
    "sources",
    "modalities",
    "sex",
    "age_years",
    "study_count",
    "series_count",
    "questionnaire_count",
    "has_ehr",
)

SUBJECT_ID_PATTERN = re.compile(r"^S[0-9A-F]{15}$")


# --- facets (pure) ---------------------------------------------------------------------


def modality_facet(modality: str) -> str:
    """The subject has imaging of this DICOM modality."""
    return f"modality:{modality}"


def sex_facet(sex: str) -> str:
    """A source (DICOM PatientSex or EHR gender, normalised) gives this sex."""
    return f"sex:{sex}"


def source_facet(kind: str) -> str:
    """The subject has an identifier of this kind (``dicom``, ``redcap``, ``ehr``)."""
    return f"source:{kind}"


def questionnaires_facet(present: bool) -> str:
    """The subject has (or lacks) any REDCap questionnaire."""
    return f"questionnaires:{'yes' if present else 'no'}"


def questionnaire_facet(
    instrument: str, status: str, event_name: str | None = None, project_id: str | None = None
) -> str:
    """An instrument in a completion status; None for event or project means any."""
    project = ANY if project_id is None else project_id
    event = ANY if event_name is None else event_name
    return f"questionnaire:{project}|{instrument}|{event}|{status}"


def diagnosis_facet(prefix: str, source: str | None = None) -> str:
    """A diagnosis code starting with ``prefix`` (at most :data:`DIAGNOSIS_PREFIX_MAX`
    characters), from one EHR source or any."""
    return f"diagnosis:{ANY if source is None else source}|{prefix}"


def lab_set(code: str, source: str | None = None) -> str:
    """The set of subjects with a latest value of lab ``code`` (the views' safe key),
    from one EHR source or any, with the values."""
    return f"lab:{ANY if source is None else source}|{code}"


def _questionnaire_facets(doc: Mapping[str, Any]) -> set[str]:
    instrument, status = doc.get("instrument"), doc.get("completion_status")
    if instrument is None or status is None:
        return set()
    event, project = doc.get("event_name"), doc.get("project_id")
    found = set()
    for p in {None, project}:
        for e in {None, event}:
            found.add(
                questionnaire_facet(
                    str(instrument), str(status), None if e is None else str(e), None if p is None else str(p)
                )
            )
    return found


def _diagnosis_facets(source: str, code: str) -> set[str]:
    found = set()
    for length in range(1, min(len(code), DIAGNOSIS_PREFIX_MAX) + 1):
        found.add(diagnosis_facet(code[:length]))
        found.add(diagnosis_facet(code[:length], source))
    return found


def _lab_value(entry: Any) -> float | None:
    value = entry.get("value") if isinstance(entry, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN is no value
        return None
    return float(value)


def subject_facet_doc(
    subject_id: str,
    members: Sequence[Mapping[str, Any]],
    patients: Mapping[str, Mapping[str, Any]],
    questionnaires: Sequence[Mapping[str, Any]],
    ehr_subjects: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """The read-model document of one subject.

    ``members`` are its registry documents (``_id`` = identifier key, ``kind``,
    ``value``); ``patients`` the ``patients`` view by PatientID, ``questionnaires`` the
    questionnaire documents of its REDCap keys, ``ehr_subjects`` the EHR summaries by key
    (documents of other subjects may be in the mappings: only the members' are read).
    Sex and age come from DICOM when the subject has imaging, else from the EHR, as in
    the subject list.
    """
    keys = sorted(str(m["_id"]) for m in members)
    kinds = sorted({str(m["kind"]) for m in members})
    imaging = [
        patients[str(m["value"])]
        for m in sorted(members, key=lambda m: str(m["_id"]))
        if m["kind"] == "dicom" and str(m["value"]) in patients
    ]
    ehr_keys = {str(m["_id"]) for m in members if m["kind"] == "ehr"}
    ehr_of = [(k, ehr_subjects[k]) for k in keys if k in ehr_keys and k in ehr_subjects]
    redcap = {str(m["_id"]) for m in members if m["kind"] == "redcap"}
    own_questionnaires = [q for q in questionnaires if q.get("subject_key") in redcap]
    sexes = [d.get("sex_normalised") for d in [*imaging, *(d for _, d in ehr_of)]]
    ages = [d.get("age_years") for d in [*imaging, *(d for _, d in ehr_of)]]
    modalities = sorted({str(m) for p in imaging for m in p.get("modalities") or []})

    facets: set[str] = {ALL_SUBJECTS} | {source_facet(k) for k in kinds}
    facets |= {modality_facet(m) for m in modalities}
    facets |= {sex_facet(str(s)) for s in sexes if s}
    facets.add(questionnaires_facet(bool(own_questionnaires)))
    for q in own_questionnaires:
        facets |= _questionnaire_facets(q)
    labs: list[dict[str, Any]] = []
    dx_codes: set[str] = set()
    for key, doc in ehr_of:
        source = str(doc.get("source") or key.partition(":")[2].partition("|")[0])
        for code in doc.get("diagnosis_codes") or []:
            if code:
                facets |= _diagnosis_facets(source, str(code))
                dx_codes.add(f"{source}|{code}")
        for code, entry in sorted((doc.get("latest_labs") or {}).items()):
            value = _lab_value(entry)
            if value is not None:
                labs.append({"c": str(code), "s": source, "v": value})
    return {
        "_id": subject_id,
        "identifiers": keys,
        "sources": kinds,
        "modalities": modalities,
        "sex": next((s for s in sexes if s), None),
        "age_years": next((a for a in ages if a is not None), None),
        "study_count": sum(int(p.get("study_count") or 0) for p in imaging),
        "series_count": sum(int(p.get("series_count") or 0) for p in imaging),
        "questionnaire_count": len(own_questionnaires),
        "has_ehr": bool(ehr_of),
        "facets": sorted(facets),
        "labs": sorted(labs, key=lambda lab: (lab["c"], lab["s"])),
        "dx_codes": sorted(dx_codes),
    }


def facets_of(doc: Mapping[str, Any] | None) -> set[str]:
    """The facets a stored (or computed) document carries; none for a missing one."""
    return set(doc.get("facets") or []) if doc else set()


def lab_entries(doc: Mapping[str, Any] | None) -> dict[str, list[float]]:
    """Lab set name → this subject's values in it (one per EHR source; the any-source
    set holds them all)."""
    found: dict[str, list[float]] = {}
    for lab in (doc.get("labs") or []) if doc else []:
        for name in (lab_set(lab["c"]), lab_set(lab["c"], lab["s"])):
            found.setdefault(name, []).append(float(lab["v"]))
    return {name: sorted(values) for name, values in found.items()}


def memberships(doc: Mapping[str, Any] | None) -> dict[str, list[float]]:
    """Every set this subject is in, with its values there (none for a facet's set)."""
    return {**{f: [] for f in facets_of(doc)}, **lab_entries(doc)}


# --- sets (pure) -----------------------------------------------------------------------


def encode_id(subject_id: str) -> int:
    """The 60-bit integer of a subject id (``S`` + 15 hex digits); same order as the text."""
    if not SUBJECT_ID_PATTERN.match(subject_id):
        raise ValueError(f"not a subject id: {subject_id!r}")
    return int(subject_id[1:], 16)


def decode_ids(values: np.ndarray) -> list[str]:
    """Subject ids of encoded values, in the array's order."""
    return [f"S{int(v):015X}" for v in values.tolist()]


def shard_of(subject_id: str) -> str:
    """The shard of a subject in every set: the first hex digit of its id."""
    return subject_id[1]


@dataclass
class SubjectSet:
    """A set (or one shard of it): sorted encoded ids, and one value each for lab sets.
    A lab set may hold an id more than once (one value per EHR source)."""

    ids: np.ndarray
    values: np.ndarray | None = None

    @classmethod
    def empty(cls, with_values: bool) -> SubjectSet:
        return cls(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.float64) if with_values else None)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> SubjectSet:
        ids = np.frombuffer(bytes(doc["ids"]), dtype="<u8").astype(np.uint64)
        values = (
            None if doc.get("values") is None else np.frombuffer(bytes(doc["values"]), dtype="<f8").astype(np.float64)
        )
        return cls(ids, values)

    @classmethod
    def concat(cls, parts: Sequence[SubjectSet], with_values: bool) -> SubjectSet:
        if not parts:
            return cls.empty(with_values)
        ids = np.concatenate([p.ids for p in parts])
        values = np.concatenate([p.values for p in parts if p.values is not None]) if with_values else None
        return cls(ids, values)

    def replaced(self, touched: Iterable[int], members: Mapping[int, list[float]]) -> SubjectSet:
        """This set with every entry of the ``touched`` ids removed, then ``members``
        (encoded id → its values; ignored for a facet's set) added; sorted by id, value."""
        gone = np.fromiter(set(touched) | set(members), dtype=np.uint64)
        keep = ~np.isin(self.ids, gone)
        ids = [self.ids[keep]]
        values = [self.values[keep]] if self.values is not None else []
        for sid, entries in members.items():
            count = len(entries) if self.values is not None else 1
            ids.append(np.full(count, sid, dtype=np.uint64))
            if self.values is not None:
                values.append(np.asarray(entries, dtype=np.float64))
        all_ids = np.concatenate(ids)
        if self.values is None:
            return SubjectSet(np.unique(all_ids))
        all_values = np.concatenate(values)
        order = np.lexsort((all_values, all_ids))
        return SubjectSet(all_ids[order], all_values[order])

    def same_as(self, other: SubjectSet) -> bool:
        if not np.array_equal(self.ids, other.ids):
            return False
        if self.values is None or other.values is None:
            return self.values is None and other.values is None
        return np.array_equal(self.values, other.values)

    def document(self, name: str, shard: str, version: int) -> dict[str, Any]:
        """The shard document (``n``: distinct subjects; ``v``: the version to compare)."""
        return {
            "_id": f"{name}#{shard}",
            "set": name,
            "shard": shard,
            "n": len(self.subject_ids()),
            "ids": Binary(self.ids.astype("<u8").tobytes()),
            "values": None if self.values is None else Binary(self.values.astype("<f8").tobytes()),
            "v": version,
        }

    def subject_ids(self) -> np.ndarray:
        """The distinct encoded ids, sorted."""
        return self.ids if self.values is None else np.unique(self.ids)

    def within(self, low: float | None, high: float | None) -> np.ndarray:
        """Distinct encoded ids with a value in [low, high] (lab sets)."""
        assert self.values is not None
        keep = np.ones(len(self.ids), dtype=bool)
        if low is not None:
            keep &= self.values >= low
        if high is not None:
            keep &= self.values <= high
        return np.unique(self.ids[keep])


def set_documents(name: str, members: Mapping[str, list[float]]) -> list[dict[str, Any]]:
    """The shard documents of a whole set (subject id → its values there), version 1:
    what the sinks would have written (used to fill a database in bulk)."""
    by_shard: dict[str, dict[int, list[float]]] = {}
    for sid, values in members.items():
        by_shard.setdefault(shard_of(sid), {})[encode_id(sid)] = values
    empty = SubjectSet.empty(has_values(name))
    return [empty.replaced((), entries).document(name, shard, 1) for shard, entries in sorted(by_shard.items())]


def has_values(name: str) -> bool:
    return name.startswith("lab:")


async def read_sets(db: Any, names: Iterable[str]) -> dict[str, SubjectSet]:
    """Whole sets by name (one indexed ``find`` for all of them); unknown names are empty."""
    wanted = sorted(set(names))
    shards: dict[str, list[tuple[str, SubjectSet]]] = {name: [] for name in wanted}
    if wanted:
        for doc in await db[SETS].find({"set": {"$in": wanted}}, {"v": 0}).to_list(None):
            shards[str(doc["set"])].append((str(doc["shard"]), SubjectSet.from_doc(doc)))
    return {
        name: SubjectSet.concat([s for _, s in sorted(parts, key=lambda p: p[0])], has_values(name))
        for name, parts in shards.items()
    }
