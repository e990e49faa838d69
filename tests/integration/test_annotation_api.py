"""The review API and its MONAI Label subset against the real stack: the MongoDB-wire server holds the
views (``annotations`` documents are inserted directly: the API is under test, not the
worker), reviews are read back from Kafka, corrected SEGs and on-demand suggestions are
looked up in Orthanc.

The application runs in-process with its real lifespan (MongoDB, the ``acks=all``
publisher, the Orthanc archive) behind httpx's ASGI transport. Every wait is bounded.
"""

from __future__ import annotations

import copy
import io
import json
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import httpx
import pydicom
import pytest

from api.app import create_api
from api.auth import Role
from api.keys import KeyStore
from api.seg_upload import SEGMENTATION_STORAGE
from cohortstream.admin import ensure_topics
from cohortstream.events import AnnotationReviewed, AnnotationSuggested, ReviewDecision
from cohortstream.mongo import open_database
from cohortstream.orthanc import OrthancClient
from cohortstream.settings import Settings
from tests.annotation_api_data import dataset_bytes, phantom_with_seg
from tests.kafka_probe import read_topic

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def settings(stack_settings: Settings) -> Settings:
    settings = stack_settings.model_copy(update={"annotation_device": "cpu", "orthanc_timeout_s": 30.0})
    await ensure_topics(settings)
    return settings


async def create_key(settings: Settings, role: Role = Role.ADMIN, name: str = "test-admin") -> str:
    """A new API key in the test's database, as ``cohortstream api-keys create`` makes one."""
    async with open_database(settings) as db:
        return (await KeyStore(db).create(name, role)).key


@asynccontextmanager
async def api_client(settings: Settings, key: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The API with its lifespan run (connections opened and closed), over ASGI, sending
    ``key`` (default: a new admin key) as bearer token."""
    key = key if key is not None else await create_key(settings)
    app = create_api(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", timeout=300, headers={"Authorization": f"Bearer {key}"}
        ) as client:
            yield client


@pytest.fixture
async def api(settings: Settings, db: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings) as client:
        yield client


def annotation(
    *,
    status: str = "suggested",
    uncertainty: float | None = 0.5,
    model: str = "phantom-sphere-unet",
    study: str = "1.2.826.0.1.1",
    series: str | None = None,
    minutes: int = 0,
    **more: Any,
) -> dict[str, Any]:
    """An ``annotations`` document as the views agent writes it."""
    annotation_id = str(uuid.uuid4())
    series = series or f"1.2.826.0.1.1.{uuid.uuid4().int % 10**12}"
    at = T0 + timedelta(minutes=minutes)
    seg_uid = f"2.25.{uuid.uuid4().int}"
    doc = {
        "_id": annotation_id,
        "annotation_id": annotation_id,
        "study_instance_uid": study,
        "series_instance_uid": series,
        "model_name": model,
        "model_version": "1.0.0",
        "seg_sop_instance_uid": seg_uid,
        "seg_series_instance_uid": f"2.25.{uuid.uuid4().int}",
        "segments": [
            {
                "segment_number": 1,
                "label": "Sphere",
                "property_category": "SCT:49755003:x",
                "property_type": "SCT:4147007:Mass",
                "voxel_count": 10,
                "volume_ml": 0.01,
            }
        ],
        "uncertainty": uncertainty,
        "device": "cpu",
        "inference_s": 0.2,
        "status": "suggested",
        "suggested_at": at,
        "reviewed_at": None,
        "reviewer": None,
        "reason": None,
        "corrected_seg_sop_instance_uid": None,
        "history": [
            {
                "event_id": str(uuid.uuid4()),
                "status": "suggested",
                "at": at,
                "by": model,
                "reason": None,
                "seg_sop_instance_uid": seg_uid,
            }
        ],
    }
    if status != "suggested":
        doc.update(status=status, reviewed_at=at + timedelta(minutes=1), reviewer="first.reader")
        doc["history"].append(
            {
                "event_id": str(uuid.uuid4()),
                "status": status,
                "at": at + timedelta(minutes=1),
                "by": "first.reader",
                "reason": None,
                "seg_sop_instance_uid": None,
            }
        )
    doc.update(more)
    return doc


async def page_through(api: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(50):
        response = await api.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= body["limit"]
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


async def test_list_filters_and_pages_by_id_and_by_uncertainty(api: httpx.AsyncClient, db: Any) -> None:
    docs = [
        annotation(uncertainty=0.9),
        annotation(uncertainty=0.5),
        annotation(uncertainty=0.5),
        annotation(uncertainty=None),
        annotation(uncertainty=0.1, model="other-model"),
        annotation(uncertainty=0.5, status="accepted", study="1.2.826.0.1.2"),
        annotation(uncertainty=None),
        annotation(uncertainty=0.0, status="rejected"),
    ]
    await db["annotations"].insert_many(copy.deepcopy(docs))

    by_id = await page_through(api, "/annotations", limit=3)
    assert [d["annotation_id"] for d in by_id] == sorted(d["_id"] for d in docs)
    assert all("history" not in d and "_id" not in d for d in by_id)
    assert by_id[0]["suggested_at"].startswith("2024-05-01T12:00:00")

    by_uncertainty = await page_through(api, "/annotations", sort="uncertainty", limit=2)
    expected = sorted(docs, key=lambda d: (d["uncertainty"] is None, -(d["uncertainty"] or 0), d["_id"]))
    assert [d["annotation_id"] for d in by_uncertainty] == [d["_id"] for d in expected]

    accepted = await page_through(api, "/annotations", status="accepted")
    assert [d["annotation_id"] for d in accepted] == [docs[5]["_id"]]
    other = await page_through(api, "/annotations", model="other-model")
    assert [d["annotation_id"] for d in other] == [docs[4]["_id"]]
    in_study = await page_through(api, "/annotations", study="1.2.826.0.1.2")
    assert [d["annotation_id"] for d in in_study] == [docs[5]["_id"]]
    of_series = await page_through(api, "/annotations", series=docs[1]["series_instance_uid"])
    assert [d["annotation_id"] for d in of_series] == [docs[1]["_id"]]

    response = await api.get("/annotations", params={"limit": 501})
    assert response.status_code == 422 and response.json()["field"] == "limit"


async def test_queue_is_pending_suggestions_least_certain_first(api: httpx.AsyncClient, db: Any) -> None:
    docs = [annotation(uncertainty=u) for u in (0.2, 0.8, None, 0.8, 0.5)]
    docs += [annotation(uncertainty=0.99, status="accepted"), annotation(uncertainty=0.95, status="corrected")]
    await db["annotations"].insert_many(copy.deepcopy(docs))

    queue = await page_through(api, "/annotations/queue", limit=2)
    pending = sorted(docs[:5], key=lambda d: (d["uncertainty"] is None, -(d["uncertainty"] or 0), d["_id"]))
    assert [d["annotation_id"] for d in queue] == [d["_id"] for d in pending]
    assert {d["status"] for d in queue} == {"suggested"}
    assert [d["uncertainty"] for d in queue][:2] == [0.8, 0.8] and queue[-1]["uncertainty"] is None


async def test_one_annotation_with_its_history_and_404s(api: httpx.AsyncClient, db: Any) -> None:
    doc = annotation(status="rejected")
    await db["annotations"].insert_one(copy.deepcopy(doc))

    response = await api.get(f"/annotations/{doc['_id']}")
    assert response.status_code == 200
    body = response.json()
    assert body["annotation_id"] == doc["_id"] and body["status"] == "rejected"
    assert [h["status"] for h in body["history"]] == ["suggested", "rejected"]

    for unknown in (str(uuid.uuid4()), "not-a-uuid"):
        response = await api.get(f"/annotations/{unknown}")
        assert response.status_code == 404
        assert response.json()["field"] == "annotation_id"
        response = await api.post(f"/annotations/{unknown}/accept", json={"reviewer": "r"})
        assert response.status_code == 404


async def test_accept_and_reject_publish_reviews_and_leave_the_view_to_the_agent(
    api: httpx.AsyncClient, db: Any, settings: Settings
) -> None:
    first, second = annotation(), annotation(status="accepted")
    await db["annotations"].insert_many(copy.deepcopy([first, second]))

    accepted = await api.post(
        f"/annotations/{first['_id']}/accept", json={"reviewer": "dr.a", "expected_status": "suggested"}
    )
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["annotation_id"] == first["_id"] and accepted.json()["decision"] == "ACCEPTED"

    missing = await api.post(f"/annotations/{first['_id']}/reject", json={"reviewer": "dr.b"})
    assert missing.status_code == 422 and missing.json()["field"] == "reason"

    # Re-reviewing is allowed (appended to history by the agent) ...
    rejected = await api.post(
        f"/annotations/{second['_id']}/reject", json={"reviewer": "dr.b", "reason": "leaks into fat"}
    )
    assert rejected.status_code == 202, rejected.text
    # ... unless the client asked for a status the annotation no longer has.
    conflict = await api.post(
        f"/annotations/{second['_id']}/accept", json={"reviewer": "dr.c", "expected_status": "suggested"}
    )
    assert conflict.status_code == 409 and conflict.json()["field"] == "expected_status"

    reads = await read_topic(settings, "annotation.reviewed", 2, timeout_s=30, drain_s=1.0)
    assert len(reads) == 2, "the refused requests published nothing"
    events = {str(r.event.annotation_id): r for r in reads}
    a, r = events[first["_id"]], events[second["_id"]]
    assert isinstance(a.event, AnnotationReviewed) and isinstance(r.event, AnnotationReviewed)
    assert a.key == first["series_instance_uid"] and r.key == second["series_instance_uid"]
    assert (a.event.decision, a.event.reviewer, a.event.reason) == (ReviewDecision.ACCEPTED, "dr.a", None)
    assert (r.event.decision, r.event.reason) == (ReviewDecision.REJECTED, "leaks into fat")
    assert a.event.producer == "review-api" and a.event.study_instance_uid == first["study_instance_uid"]
    assert str(a.event.event_id) == accepted.json()["event_id"]

    # The API does not write the view: the agent does, from the events.
    assert (await db["annotations"].find_one({"_id": first["_id"]}))["status"] == "suggested"


async def _orthanc_lookup(settings: Settings, sop_instance_uid: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(
        base_url=settings.orthanc_url,
        timeout=30,
        auth=(settings.orthanc_username, settings.orthanc_password.get_secret_value()),
    ) as orthanc:
        response = await orthanc.post("/tools/lookup", content=sop_instance_uid)
        response.raise_for_status()
        return [hit for hit in response.json() if hit["Type"] == "Instance"]


def _upload(data: bytes, **form: str) -> dict[str, Any]:
    return {"files": {"file": ("corrected.dcm", data, "application/dicom")}, "data": form}


async def test_a_corrected_seg_is_checked_stored_in_orthanc_and_published(
    api: httpx.AsyncClient, db: Any, settings: Settings
) -> None:
    phantom = phantom_with_seg(seed=11)
    doc = annotation(study=phantom.study_instance_uid, series=phantom.series_instance_uid)
    other = annotation()
    await db["annotations"].insert_many(copy.deepcopy([doc, other]))

    wrong_series = await api.post(f"/annotations/{other['_id']}/correct", **_upload(phantom.seg_bytes, reviewer="dr.c"))
    assert wrong_series.status_code == 422 and wrong_series.json()["field"] == "file"
    assert other["series_instance_uid"] in wrong_series.json()["error"]
    not_a_seg = await api.post(
        f"/annotations/{doc['_id']}/correct", **_upload(dataset_bytes(phantom.series[0]), reviewer="dr.c")
    )
    assert not_a_seg.status_code == 422 and "not a DICOM Segmentation" in not_a_seg.json()["error"]
    long_reviewer = await api.post(
        f"/annotations/{doc['_id']}/correct", **_upload(phantom.seg_bytes, reviewer="r" * 257)
    )
    assert long_reviewer.status_code == 422 and long_reviewer.json()["field"] == "reviewer"

    response = await api.post(
        f"/annotations/{doc['_id']}/correct", **_upload(phantom.seg_bytes, reviewer="dr.c", reason="trimmed the rim")
    )
    assert response.status_code == 202, response.text
    body = response.json()
    seg_uid = str(phantom.seg.SOPInstanceUID)
    assert body["decision"] == "CORRECTED" and body["corrected_seg_sop_instance_uid"] == seg_uid

    hits = await _orthanc_lookup(settings, seg_uid)
    assert [hit["ID"] for hit in hits] == [body["orthanc_id"]]

    reads = await read_topic(settings, "annotation.reviewed", 1, timeout_s=30, drain_s=1.0)
    assert len(reads) == 1
    event = reads[0].event
    assert isinstance(event, AnnotationReviewed) and reads[0].key == phantom.series_instance_uid
    assert (event.decision, event.corrected_seg_sop_instance_uid, event.reviewer, event.reason) == (
        ReviewDecision.CORRECTED,
        seg_uid,
        "dr.c",
        "trimmed the rim",
    )


async def test_per_frame_references_are_resolved_through_the_instances_view(
    api: httpx.AsyncClient, db: Any, settings: Settings
) -> None:
    phantom = phantom_with_seg(seed=12)
    seg = copy.deepcopy(phantom.seg)
    del seg.ReferencedSeriesSequence
    data = dataset_bytes(seg)
    doc = annotation(study=phantom.study_instance_uid, series=phantom.series_instance_uid)
    await db["annotations"].insert_one(copy.deepcopy(doc))

    unknown = await api.post(f"/annotations/{doc['_id']}/correct", **_upload(data, reviewer="dr.d"))
    assert unknown.status_code == 422, "instances the views do not know cannot prove the reference"

    await db["instances"].insert_many(
        [{"_id": str(ds.SOPInstanceUID), "series_instance_uid": phantom.series_instance_uid} for ds in phantom.series]
    )
    response = await api.post(f"/annotations/{doc['_id']}/correct", **_upload(data, reviewer="dr.d"))
    assert response.status_code == 202, response.text
    assert await _orthanc_lookup(settings, str(seg.SOPInstanceUID))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_reviews_answer_503_while_kafka_is_unreachable(settings: Settings, db: Any) -> None:
    doc = annotation()
    await db["annotations"].insert_one(copy.deepcopy(doc))
    down = settings.model_copy(
        update={"kafka_bootstrap": f"127.0.0.1:{_closed_port()}", "kafka_request_timeout_s": 2.0}
    )
    async with api_client(down) as api:
        listed = await api.get("/annotations")
        assert listed.status_code == 200 and len(listed.json()["items"]) == 1, "reads do not need Kafka"
        response = await api.post(f"/annotations/{doc['_id']}/accept", json={"reviewer": "dr.e"})
        assert response.status_code == 503
        assert set(response.json()) == {"error", "field"}


# --- MONAI Label subset -----------------------------------------------------------------


def _series_doc(
    uid: str, *, study: str = "1.2.826.0.1.1", modality: str = "MR", patient_id: str = "P1"
) -> dict[str, Any]:
    return {
        "_id": uid,
        "study_instance_uid": study,
        "patient_id": patient_id,
        "modality": modality,
        "body_part_examined": "PHANTOM",
        "instance_count": 3,
        "orthanc_id": "x",
    }


async def test_monailabel_info_datastore_and_active_learning(api: httpx.AsyncClient, db: Any) -> None:
    empty = await api.post("/activelearning/uncertainty", json={"client_id": "ohif"})
    assert empty.status_code == 200 and empty.json() == {}

    series = [f"1.2.826.0.1.9.{i}" for i in range(4)]
    await db["series"].insert_many(
        [_series_doc(uid) for uid in series] + [_series_doc("1.2.826.0.1.9.99", modality="SEG")]
    )
    docs = [
        annotation(series=series[0], uncertainty=0.3),
        annotation(series=series[1], uncertainty=0.7),
        annotation(series=series[2], uncertainty=0.9, status="accepted"),
        annotation(series=series[3], uncertainty=0.95, status="corrected", corrected_seg_sop_instance_uid="2.25.7"),
    ]
    await db["annotations"].insert_many(copy.deepcopy(docs))

    info = (await api.get("/info/")).json()
    assert info["name"] == "cohortstream" and info["labels"] == ["Sphere", "Brain"]
    assert info["models"]["deepbet-brain"]["labels"] == {"Brain": 1}
    assert info["models"]["phantom-sphere-unet"] == {
        "type": "segmentation",
        "labels": {"Sphere": 1},
        "dimension": 3,
        "description": info["models"]["phantom-sphere-unet"]["description"],
        "config": {},
    }
    assert set(info["strategies"]) == {"uncertainty", "random", "first"}
    assert info["trainers"] == {} and info["scoring"] == {}
    assert info["datastore"] == {"total": 4, "completed": 2, "label_tags": {"original": 4, "final": 2}}
    assert (await api.get("/info")).json() == info, "MONAI Label clients call /info/, people /info"

    stats = await api.get("/datastore/", params={"output": "stats"})
    assert stats.json() == info["datastore"]
    everything = (await api.get("/datastore/", params={"output": "all"})).json()
    assert sorted(everything["objects"]) == series
    labels = everything["objects"][series[3]]["labels"]
    assert labels["final"]["info"]["seg_sop_instance_uid"] == "2.25.7"
    assert labels["original"]["info"]["annotation_id"] == docs[3]["_id"]
    assert everything["objects"][series[0]]["labels"].keys() == {"original"}
    assert "patient_id" not in everything["objects"][series[0]]["image"]["info"]

    nxt = (await api.post("/activelearning/uncertainty", json={"client_id": "ohif"})).json()
    assert (nxt["id"], nxt["weight"], nxt["annotation_id"]) == (series[1], 0.7, docs[1]["_id"])
    # What OHIF's Next Sample dialog reads (the study is not in this test's Orthanc: no date).
    assert {
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "StudyDate",
        "StudyTime",
        "PatientID",
        "RetrieveURL",
    } <= set(nxt)
    assert (nxt["SeriesInstanceUID"], nxt["Modality"]) == (series[1], "MR")
    assert nxt["RetrieveURL"] == f"http://api/proxy/dicom/wado/studies/{nxt['StudyInstanceUID']}/series/{series[1]}"
    assert (await api.get("/train/")).json()["status"] == "NOT_RUNNING"
    first = (await api.post("/activelearning/first")).json()
    assert first["id"] == series[0]
    drawn = {(await api.post("/activelearning/random")).json()["id"] for _ in range(12)}
    assert drawn <= {series[0], series[1]} and drawn


async def test_monailabel_infer_runs_the_model_on_a_series_in_orthanc(
    api: httpx.AsyncClient, db: Any, settings: Settings
) -> None:
    from consumers.annotation.phantoms import phantom_series

    datasets, _ = phantom_series(21, (24, 48, 48), patient_id="PHANTOM-API-21")
    archive = OrthancClient(settings)
    await archive.setup()
    try:
        for ds in datasets:
            await archive.store_bytes(dataset_bytes(ds), "phantom slice")
    finally:
        await archive.close()
    series_uid = str(datasets[0].SeriesInstanceUID)
    await db["series"].insert_one(
        _series_doc(series_uid, study=str(datasets[0].StudyInstanceUID), patient_id="PHANTOM-API-21")
    )

    unknown = await api.post("/infer/phantom-sphere-unet", params={"image": "1.2.3.4.404", "output": "json"})
    assert unknown.status_code == 404 and unknown.json()["field"] == "image"

    response = await api.post(
        "/infer/phantom-sphere-unet",
        params={"image": series_uid, "output": "json"},
        data={"params": '{"client_id": "ohif"}'},
    )
    assert response.status_code == 200, response.text
    params = response.json()
    assert params["label_names"] == {"Sphere": 1} and set(params["latencies"]) == {"infer", "total"}
    assert 0 <= params["uncertainty"] <= 1 and params["model"] == "phantom-sphere-unet"
    assert await _orthanc_lookup(settings, params["seg_sop_instance_uid"])

    nrrd = await api.post("/infer/phantom-sphere-unet", params={"image": series_uid, "output": "image"})
    assert nrrd.status_code == 200 and nrrd.content.startswith(b"NRRD0004\n"), nrrd.text[:200]
    head, _, voxels = nrrd.content.partition(b"\n\n")
    assert b"sizes: 48 48 24\n" in head and b"type: uint8\n" in head and len(voxels) == 24 * 48 * 48
    assert set(voxels) == {0, 1}, "label values of the Sphere segment"
    viewer = await api.post(
        "/infer/phantom-sphere-unet", params={"image": series_uid}, data={"params": '{"result_extension": ".nrrd"}'}
    )
    assert viewer.headers["content-type"].startswith("multipart/form-data") and b"NRRD0004" in viewer.content

    seg_file = await api.post("/infer/phantom-sphere-unet", params={"image": series_uid, "output": "dicom_seg"})
    assert seg_file.status_code == 200 and seg_file.headers["content-type"] == "application/dicom"
    seg = pydicom.dcmread(io.BytesIO(seg_file.content))
    assert seg.SOPClassUID == SEGMENTATION_STORAGE
    assert str(seg.SOPInstanceUID) == params["seg_sop_instance_uid"], "same series and model, same SEG"

    both = await api.post("/infer/phantom-sphere-unet", params={"image": series_uid})
    assert both.headers["content-type"].startswith("multipart/form-data")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + both.headers["content-type"].encode() + b"\r\n\r\n" + both.content
    )
    parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
    assert set(parts) == {"params", "image"}
    in_part = pydicom.dcmread(io.BytesIO(parts["image"].get_content()))
    assert str(in_part.SOPInstanceUID) == params["seg_sop_instance_uid"]
    assert json.loads(parts["params"].get_content())["annotation_id"] == params["annotation_id"]

    reads = await read_topic(settings, "annotation.suggested", 5, timeout_s=30)
    suggested = [r.event for r in reads]
    assert all(isinstance(e, AnnotationSuggested) and e.series_instance_uid == series_uid for e in suggested)
    assert {str(e.annotation_id) for e in suggested} == {params["annotation_id"]}
    assert {r.key for r in reads} == {series_uid}
