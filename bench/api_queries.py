"""Latency of the retrieval API on a large synthetic cohort: subject lookup, a cross-modal
cohort query, the statistics endpoint (p50/p95 over N requests each), and the fill time.

Uses the running stack named by ``$COHORTSTREAM_ENV_FILE`` (e.g. ``. /tmp/teststack.sh``)
with a MongoDB database of its own (``bench_api_<random>``), dropped at the end unless
``--keep``. The API is the real application (``create_api``: lifespan, API-key auth with
a researcher key created in that database) behind httpx's ASGI transport, so the figures
are the API's own work plus MongoDB's, without a network socket.

What is inserted, per subject ``n`` (defaults: 50,000 subjects, 10 series each, 100 lab
rows each), documents shaped as the sinks write them, with ``insert_many`` in commands of
``--chunk`` documents (default 1000; one ``insert`` command each, ordered):

- ``subject_identifiers``: 3 (``dicom:B<n>``, a REDCap record, an EHR subject), linked
  into one subject whose id follows the registry's rule;
- ``patients``: 1 (modalities, sex, age, counts); ``studies``: 2; ``series``:
  ``--series-per-subject`` (MR/CT/PT, body part, 20 instances each, Orthanc ids) —
  ``instances`` documents are *not* inserted (500k series × 20 would be 10M);
- ``questionnaires``: 2 (``baseline`` at ``baseline_arm_1`` and ``followup_1_arm_1``,
  mixed completion);
- ``ehr_subjects``: 1 (demographics, diagnosis codes, ``latest_labs`` for 10 lab codes):
  the *summary* of ``--labs-per-subject`` lab rows; the rows themselves
  (``ehr_timeline``) are not inserted, only counted in the ingestion counters;
- ``annotations``: 1 per 5 subjects (on the subject's first series);
- ``statistics``: the counters the sinks would hold for this data (computed while
  generating, same documents as consumers/statistics.py writes);
- ``subject_facets``: 1, the read model the view sinks keep (computed from the documents
  above with the sinks' own :func:`consumers.subject_facets.subject_facet_doc`), and
  ``subject_sets``: the shards of every facet's and lab code's subject set
  (:func:`consumers.subject_facets.set_documents`).

Besides the p50/p95 of each request, the former query paths (per-criterion finds on the
views resolved through the registry, see ``run_cohort_query_on_views`` and
``filtered_subjects``) are timed once each in the same run, with the ratio; and what a
sink pays to refresh the read model of a few subjects on a database this size.

Indexes are those the sinks create (their ``setup()``), made before the inserts.

Run: ``.venv/bin/python -m bench.api_queries [--subjects 50000] [--series-per-subject 10]
[--labs-per-subject 100] [--requests 50] [--query-requests 10] [--chunk 1000] [--keep]
[--no-kafka]`` (``--no-kafka``: do not create the run's topics, for a MongoDB-only run;
the API then starts without its Kafka publisher, which these requests do not use).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics as stats
import time
import uuid
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from api.app import create_api
from api.keys import KeyStore
from api.principals import Role
from api.subject_store import SubjectFilters, page_of_subjects, summaries_from_views
from cohortstream.admin import ensure_topics
from cohortstream.cohort_query import CohortQuery, run_cohort_query_on_views
from cohortstream.events import DicomInstanceReceived
from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.orthanc_ids import orthanc_ids
from cohortstream.settings import Settings
from cohortstream.subject_sets import FACETS, SETS, memberships, set_documents, subject_facet_doc
from cohortstream.subjects import SubjectIdentifier, subject_id_for
from consumers.annotation_views import SuggestionViews
from consumers.dicom_views import DicomViews
from consumers.ehr_views import EhrViews
from consumers.mongo_sink import MongoSink
from consumers.redcap_views import RedcapViews
from consumers.statistics import STATISTICS, age_band, counters_for_annotations, counters_for_dicom, refresh_counters
from consumers.subject_facets import refresh_subject_facets

REDCAP_URL = "https://redcap.bench.example/"
MODALITIES = ("MR", "CT", "PT")
BODY_PARTS = ("BRAIN", "CHEST", "ABDOMEN", "KNEE")
LAB_CODES = ("50912", "50971", "50983", "50902", "50882", "50868", "51221", "51301", "51265", "50931")
DAY0 = datetime(2024, 1, 1, tzinfo=UTC)
STATUSES = ("INCOMPLETE", "UNVERIFIED", "COMPLETE")


def _subject_docs(
    n: int,
    args: argparse.Namespace,
    rng: random.Random,
    tally: Tally[tuple[str, str]],
    sets: dict[str, list[tuple[str, list[float]]]],
) -> dict[str, list[dict[str, Any]]]:
    pid = f"B{n:07d}"
    dicom = SubjectIdentifier.dicom(pid)
    redcap = SubjectIdentifier.redcap(REDCAP_URL, "7", f"R{n}")
    ehr = SubjectIdentifier.ehr("mimic-iv", str(20_000_000 + n))
    sid = subject_id_for([dicom.key, redcap.key, ehr.key])
    sex = "F" if n % 2 else "M"
    age = 18 + n % 70
    day = DAY0 + timedelta(days=n % 90)
    docs: dict[str, list[dict[str, Any]]] = {
        c: []
        for c in (
            "subject_identifiers",
            "patients",
            "studies",
            "series",
            "questionnaires",
            "ehr_subjects",
            "annotations",
        )
    }
    for ident in (dicom, redcap, ehr):
        docs["subject_identifiers"].append(
            {"_id": ident.key, "subject_id": sid, "kind": ident.kind, "scope": ident.scope, "value": ident.value}
        )
    studies = [f"1.2.826.0.1.3680043.8.498.5.{n}.{s}" for s in (1, 2)]
    modalities: set[str] = set()
    for k in range(args.series_per_subject):
        study = studies[k % 2]
        series_uid = f"{study}.{k}"
        modality = MODALITIES[(n + k) % 3] if k else MODALITIES[n % 2]
        part = BODY_PARTS[(n + k) % 4]
        modalities.add(modality)
        ids = orthanc_ids(pid, study, series_uid, f"{series_uid}.1")
        docs["series"].append(
            {
                "_id": series_uid,
                "study_instance_uid": study,
                "patient_id": pid,
                "modality": modality,
                "series_number": k + 1,
                "body_part_examined": part,
                "orthanc_id": ids.series,
                "instance_count": 20,
                "first_received_at": day,
                "last_received_at": day,
            }
        )
        tally[("series_by_modality", modality)] += 1
        tally[("series_by_body_part", part)] += 1
        tally[("dicom_instances_per_day", day.date().isoformat())] += 20
        if k == 0 and n % 5 == 0:
            aid = str(uuid.UUID(int=n))
            status = ("suggested", "accepted", "rejected", "corrected")[n % 4]
            docs["annotations"].append(
                {
                    "_id": aid,
                    "annotation_id": aid,
                    "study_instance_uid": study,
                    "series_instance_uid": series_uid,
                    "model_name": "phantom-sphere-unet",
                    "model_version": "1.0.0",
                    "status": status,
                    "uncertainty": rng.random(),
                    "suggested_at": day,
                    "segments": [],
                }
            )
            tally[("annotations_by_model_status", f"phantom-sphere-unet|{status}")] += 1
    for s, study in enumerate(studies):
        ids = orthanc_ids(pid, study, f"{study}.{s}", f"{study}.{s}.1")
        docs["studies"].append(
            {
                "_id": study,
                "patient_id": pid,
                "study_date": day,
                "orthanc_id": ids.study,
                "viewer_url": f"http://orthanc/app/explorer.html#study?uuid={ids.study}",
                "series": [d["_id"] for d in docs["series"] if d["study_instance_uid"] == study],
                "modalities": sorted({d["modality"] for d in docs["series"] if d["study_instance_uid"] == study}),
            }
        )
    docs["patients"].append(
        {
            "_id": pid,
            "identifiers": {"dicom_patient_id": pid},
            "sex": sex,
            "sex_normalised": sex,
            "age_years": age,
            "orthanc_id": orthanc_ids(pid, studies[0], f"{studies[0]}.0", "x").patient,
            "studies": studies,
            "modalities": sorted(modalities),
            "study_count": 2,
            "series_count": args.series_per_subject,
            "instance_count": 20 * args.series_per_subject,
            "first_study_date": day,
            "last_study_date": day,
        }
    )
    for m in modalities:
        tally[("patients_by_modality", m)] += 1
    tally[("patients_by_sex", sex)] += 1
    tally[("patients_by_age_band", age_band(age))] += 1
    tally[("ehr_subjects_by_age_band", age_band(age - 1))] += 1
    for event in ("baseline_arm_1", "followup_1_arm_1"):
        status = STATUSES[(n + len(event)) % 3]
        docs["questionnaires"].append(
            {
                "_id": f"{REDCAP_URL}|7|R{n}|{event}|baseline|1",
                "redcap_url": REDCAP_URL,
                "project_id": "7",
                "record_id": f"R{n}",
                "subject_key": redcap.key,
                "event_name": event,
                "instrument": "baseline",
                "repeat_instance": 1,
                "completion_status": status,
                "values": {"smoker": n % 2},
                "labels": {},
                "pulled_at": day,
            }
        )
        tally[("questionnaire_completion", f"baseline|{event}|{status}")] += 1
        tally[("redcap_records_per_day", day.date().isoformat())] += 1
    latest = {
        code: {
            "code": code,
            "value": round(rng.uniform(0.3, 3.0), 2),
            "unit": "mg/dL",
            "effective_at": day,
            "source_row_id": f"{n}-{i}",
        }
        for i, code in enumerate(LAB_CODES)
    }
    docs["ehr_subjects"].append(
        {
            "_id": ehr.key,
            "source": "mimic-iv",
            "subject_id": ehr.value,
            "sex_normalised": sex,
            "age_years": age - 1,
            "demographics": {"gender": sex, "anchor_age": str(age - 1)},
            "diagnosis_codes": ["I10"] if n % 3 == 0 else ["E119"],
            "latest_labs": latest,
            "lab_rows_summarized": args.labs_per_subject,
        }
    )
    tally[("ehr_subjects_by_sex", sex)] += 1
    tally[("ehr_records_per_day", day.date().isoformat())] += args.labs_per_subject
    facets = subject_facet_doc(
        sid,
        docs["subject_identifiers"],
        {d["_id"]: d for d in docs["patients"]},
        docs["questionnaires"],
        {d["_id"]: d for d in docs["ehr_subjects"]},
    )
    docs[FACETS] = [facets]
    for name, values in memberships(facets).items():
        sets.setdefault(name, []).append((sid, values))
    return docs


def _counter_docs(tally: Tally[tuple[str, str]]) -> list[dict[str, Any]]:
    label_names = {
        "series_by_modality": ("modality",),
        "patients_by_modality": ("modality",),
        "series_by_body_part": ("body_part",),
        "patients_by_sex": ("sex",),
        "patients_by_age_band": ("band",),
        "ehr_subjects_by_age_band": ("band",),
        "ehr_subjects_by_sex": ("sex",),
        "dicom_instances_per_day": ("day",),
        "redcap_records_per_day": ("day",),
        "ehr_records_per_day": ("day",),
        "questionnaire_completion": ("instrument", "event_name", "status"),
        "annotations_by_model_status": ("model", "status"),
    }
    return [
        {
            "_id": f"{dim}|{key}",
            "dimension": dim,
            "key": key,
            "count": count,
            "labels": dict(zip(label_names[dim], key.split("|"), strict=True)),
        }
        for (dim, key), count in sorted(tally.items())
    ]


async def _fill(db: Any, settings: Settings, args: argparse.Namespace) -> dict[str, int]:
    for sink in (DicomViews(settings), RedcapViews(settings), EhrViews(settings), SuggestionViews(settings)):
        await sink.setup()  # the sinks' indexes (the registry's too)
        await sink.close()
    rng = random.Random(1)
    tally: Tally[tuple[str, str]] = Tally()
    buffers: dict[str, list[dict[str, Any]]] = {}
    inserted: Tally[str] = Tally()

    async def flush(collection: str, force: bool = False) -> None:
        docs = buffers.get(collection, [])
        while docs and (force or len(docs) >= args.chunk):
            batch, docs = docs[: args.chunk], docs[args.chunk :]
            await db[collection].insert_many(batch, ordered=True)
            inserted[collection] += len(batch)
        buffers[collection] = docs

    sets: dict[str, list[tuple[str, list[float]]]] = {}
    for n in range(args.subjects):
        for collection, docs in _subject_docs(n, args, rng, tally, sets).items():
            buffers.setdefault(collection, []).extend(docs)
            await flush(collection)
    for collection in list(buffers):
        await flush(collection, force=True)
    counters = _counter_docs(tally)
    for start in range(0, len(counters), args.chunk):
        await db[STATISTICS].insert_many(counters[start : start + args.chunk])
    inserted[STATISTICS] += len(counters)
    shards = [doc for name, members in sorted(sets.items()) for doc in set_documents(name, dict(members))]
    for start in range(0, len(shards), 100):
        await db[SETS].insert_many(shards[start : start + 100])
    inserted[SETS] += len(shards)
    return dict(inserted)


@asynccontextmanager
async def _api(settings: Settings, db: Any) -> AsyncIterator[httpx.AsyncClient]:
    issued = await KeyStore(db).create("bench", Role.RESEARCHER)
    app = create_api(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", timeout=600, headers={"Authorization": f"Bearer {issued.key}"}
        ) as client:
            yield client


async def _timed(name: str, count: int, call: Callable[[int], Awaitable[httpx.Response]]) -> list[float]:
    times = []
    for i in range(count):
        start = time.perf_counter()
        response = await call(i)
        times.append(time.perf_counter() - start)
        if response.status_code != 200:
            raise SystemExit(f"{name}: HTTP {response.status_code} {response.text[:200]}")
    return times


def _report(name: str, times: list[float], note: str = "") -> float:
    """Print the figures; returns the p50 in seconds."""
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    print(
        f"{name:<34} n={len(times):<4} p50 {stats.median(times) * 1000:>9.1f} ms   p95 {p95 * 1000:>9.1f} ms"
        f"   max {max(times) * 1000:>9.1f} ms {note}"
    )
    return stats.median(times)


def _sample(args: argparse.Namespace) -> Iterator[int]:
    rng = random.Random(2)
    while True:
        yield rng.randrange(args.subjects)


async def _run(args: argparse.Namespace) -> None:
    database = f"bench_api_{uuid.uuid4().hex[:8]}"
    settings = Settings.load(
        os.environ.get("COHORTSTREAM_ENV_FILE"),
        mongo_database=database,
        log_level="WARNING",
        topic_prefix=f"bench-api-{uuid.uuid4().hex[:8]}.",
    )
    if not args.no_kafka:
        await ensure_topics(settings)
    client = mongo_client(settings)
    db = mongo_database(client, settings)
    print(
        f"database {database}: {args.subjects} subjects, {args.subjects * args.series_per_subject} series, "
        f"{args.subjects * args.labs_per_subject} lab rows summarized; insert_many chunk {args.chunk}"
    )
    try:
        start = time.perf_counter()
        inserted = await _fill(db, settings, args)
        fill_s = time.perf_counter() - start
        total = sum(inserted.values())
        print(
            f"fill: {total} documents in {fill_s:.1f} s ({total / fill_s:.0f} docs/s): "
            + ", ".join(f"{c} {n}" for c, n in sorted(inserted.items()))
        )
        # What the sinks pay per batch on a database this size: recomputing the counters
        # one DICOM batch (one modality, body part, sex and day) touches, and one model's.
        sink = MongoSink(settings)
        await sink.setup()
        try:
            event = DicomInstanceReceived(
                calling_aet="BENCH",
                called_aet="COHORTSTREAM",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                sop_instance_uid="1.2.3.4.5.6",
                study_instance_uid="1.2.3.4",
                series_instance_uid="1.2.3.4.5",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                patient_id="B0000000",
                patient_sex="F",
                modality="MR",
                body_part_examined="BRAIN",
                size_bytes=1,
                sha256="0" * 64,
                staged_uri="file:///dev/null",
                received_at=DAY0,
                producer="bench",
            )
            # (Not the per-day counter: this benchmark inserts no ``instances`` documents.)
            dicom_counters = [c for c in counters_for_dicom([event]) if c.dimension != "dicom_instances_per_day"]
            for name, counters in (
                ("one DICOM batch", dicom_counters),
                ("one annotation model", counters_for_annotations(["phantom-sphere-unet"])),
            ):
                start = time.perf_counter()
                await refresh_counters(sink, counters)
                print(f"counter refresh for {name}: {len(counters)} counts in {time.perf_counter() - start:.2f} s")
            # The read model's share of a batch: 10 subjects' documents checked against
            # the views (unchanged); 10 new subjects (documents and every set they join,
            # broad ones included), and the same 10 removed again.
            keys = [f"dicom:B{n:07d}" for n in range(0, args.subjects, max(1, args.subjects // 10))][:10]
            start = time.perf_counter()
            await refresh_subject_facets(sink, keys)
            print(f"subject facets refresh, {len(keys)} subjects unchanged: {time.perf_counter() - start:.2f} s")
            new = [SubjectIdentifier.dicom(f"N{n:07d}") for n in range(10)]
            await db["subject_identifiers"].insert_many(
                [
                    {
                        "_id": i.key,
                        "subject_id": subject_id_for([i.key]),
                        "kind": i.kind,
                        "scope": i.scope,
                        "value": i.value,
                    }
                    for i in new
                ]
            )
            await db["patients"].insert_many(
                [
                    {
                        "_id": i.value,
                        "modalities": ["MR", "PT"],
                        "sex_normalised": "F",
                        "age_years": 50,
                        "study_count": 1,
                        "series_count": 1,
                    }
                    for i in new
                ]
            )
            start = time.perf_counter()
            rewritten = await refresh_subject_facets(sink, [i.key for i in new])
            print(
                f"subject facets refresh, {len(new)} new subjects, {len(rewritten)} sets updated: {time.perf_counter() - start:.2f} s"
            )
            await db["subject_identifiers"].delete_many({"_id": {"$in": [i.key for i in new]}})
            await db["patients"].delete_many({"_id": {"$in": [i.value for i in new]}})
            start = time.perf_counter()
            rewritten = await refresh_subject_facets(sink, subject_ids=[subject_id_for([i.key]) for i in new])
            print(
                f"subject facets refresh, the same {len(new)} subjects removed, {len(rewritten)} sets updated: "
                f"{time.perf_counter() - start:.2f} s"
            )
        finally:
            await sink.close()
        async with _api(settings, db) as api:
            sample = _sample(args)
            lookup_ids = []
            for _ in range(args.requests):
                n = next(sample)
                sid = subject_id_for(
                    [
                        f"dicom:B{n:07d}",
                        SubjectIdentifier.redcap(REDCAP_URL, "7", f"R{n}").key,
                        f"ehr:mimic-iv|{20_000_000 + n}",
                    ]
                )
                lookup_ids.append(sid)
            _report(
                "GET /subjects/{id}",
                await _timed("lookup", args.requests, lambda i: api.get(f"/subjects/{lookup_ids[i]}")),
            )
            _report(
                "GET /subjects/dicom:{PatientID}",
                await _timed(
                    "lookup by identifier", args.requests, lambda i: api.get(f"/subjects/dicom%3AB{next(sample):07d}")
                ),
            )
            listed = _report(
                "GET /subjects?modality=PT&limit=100",
                await _timed(
                    "list",
                    max(1, args.query_requests),
                    lambda i: api.get("/subjects", params={"modality": "PT", "limit": 100}),
                ),
            )
            start = time.perf_counter()
            ids, _ = await page_of_subjects(db, SubjectFilters(modality="PT"), 100, None)
            await summaries_from_views(db, ids)
            former = time.perf_counter() - start
            print(f"  former path (views + registry, once): {former * 1000:.1f} ms, {former / listed:.0f}x the new p50")
            cursor, pages, paged = None, 0, 0
            start = time.perf_counter()
            while pages < 5:
                body = (
                    await api.get(
                        "/subjects", params={"modality": "CT", "limit": 500, **({"cursor": cursor} if cursor else {})}
                    )
                ).json()
                pages, paged, cursor = pages + 1, paged + len(body["items"]), body["next_cursor"]
                if cursor is None:
                    break
            print(
                f"GET /subjects?modality=CT&limit=500, {pages} pages by cursor: {paged} subjects in "
                f"{time.perf_counter() - start:.2f} s"
            )
            _report(
                "GET /subjects?limit=100 (no filter)",
                await _timed("list", args.requests, lambda i: api.get("/subjects", params={"limit": 100})),
            )
            query = {
                "modalities": ["PT"],
                "questionnaires": [{"instrument": "baseline", "event_name": "baseline_arm_1"}],
                "labs": [{"code": "50912", "min": 2.5}],
                "diagnoses": [{"code_prefix": "I1"}],
            }
            answer = (await api.post("/cohorts/query", json=query)).json()
            queried = _report(
                "POST /cohorts/query (4 criteria)",
                await _timed("cohort", args.query_requests, lambda i: api.post("/cohorts/query", json=query)),
                f"-> {answer['count']} subjects, per criterion {answer['per_criterion']}",
            )
            start = time.perf_counter()
            reference = await run_cohort_query_on_views(db, CohortQuery.model_validate(query))
            former = time.perf_counter() - start
            same = (
                "same answer"
                if reference.subject_ids == answer["subject_ids"] and reference.per_criterion == answer["per_criterion"]
                else "DIFFERENT ANSWER"
            )
            print(
                f"  former path (per-criterion finds on the views, once): {former * 1000:.1f} ms, "
                f"{former / queried:.0f}x the new p50, {same} ({reference.count} subjects)"
            )
            if same != "same answer":
                raise SystemExit("the read model's answer differs from the views'")
            start = time.perf_counter()
            _report("GET /statistics first", await _timed("statistics", 1, lambda i: api.get("/statistics")))
            deadline = start + 600
            while (await api.get("/statistics")).json()["multimodal"] is None and time.perf_counter() < deadline:
                await asyncio.sleep(0.2)
            print(f"multimodal figure computed in the background within {time.perf_counter() - start:.1f} s")
            _report(
                "GET /statistics",
                await _timed("statistics", args.requests, lambda i: api.get("/statistics")),
                "(multimodal from the cache)",
            )
            start = time.perf_counter()
            async with api.stream(
                "POST", "/cohorts/export", params={"format": "csv"}, json={"modalities": ["PT"]}
            ) as response:
                lines = 0
                async for chunk in response.aiter_bytes():
                    lines += chunk.count(b"\n")
            took = time.perf_counter() - start
            print(f"POST /cohorts/export csv (PT): {lines - 1} rows in {took:.2f} s ({(lines - 1) / took:.0f} rows/s)")
    finally:
        if not args.keep:
            await client.drop_database(database)
        await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=50_000)
    parser.add_argument("--series-per-subject", type=int, default=10)
    parser.add_argument("--labs-per-subject", type=int, default=100, help="lab rows summarized per subject")
    parser.add_argument("--requests", type=int, default=50, help="requests per lookup/statistics measurement")
    parser.add_argument("--query-requests", type=int, default=10, help="requests per cohort query/filtered list")
    parser.add_argument("--chunk", type=int, default=1000, help="documents per insert_many command")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--no-kafka", action="store_true", help="do not create topics (no Kafka needed)")
    args = parser.parse_args(argv)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
