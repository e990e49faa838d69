"""A MONAI Label compatible subset, so OHIF's MONAI Label extension and ``monailabel``
clients (``MONAILabelClient``) can use cohortstream as their server.

Mounted at the root of the API, as a MONAI Label server mounts its routers: give
clients the API's base URL (``http://<api_host>:<api_port>``) as the server URL. Paths,
parameters and answer shapes follow MONAI Label's ``monailabel/endpoints/{info,infer,
activelearning,datastore}.py``; image ids are DICOM SeriesInstanceUIDs, as with MONAI
Label's DICOMweb datastore.

Supported
---------
- ``GET /info/`` (also ``/info``, without a redirect) — ``name``, ``description``, ``version``, ``labels`` (names of every
  model's labels), ``models`` ``{name: {type: "segmentation", labels: {label: number},
  dimension: 3, description, config: {}}}``, ``trainers: {}``, ``strategies``
  ``{name: {description}}``, ``scoring: {}``, ``train_stats: {}``, ``datastore`` (as
  ``GET /datastore/?output=stats``).
- ``POST /infer/{model}?image=<SeriesInstanceUID>&output=image|json|dicom_seg|all``,
  optional multipart field ``params`` (JSON text, accepted and ignored). Runs the
  annotation worker's :func:`~consumers.annotation.worker.suggest_series` on the series as
  Orthanc holds it: the SEG is stored in Orthanc and an ``AnnotationSuggested`` event is
  published, so the result enters the review queue like any automatic suggestion.
  ``json`` answers the result parameters (``label_names``, ``latencies``, plus
  ``annotation_id``, ``seg_sop_instance_uid``, ``uncertainty``, ``segments`` …);
  ``image`` answers the label map as a raw uint8 **NRRD** on the series' grid, slices
  ascending along the normal (what OHIF's MONAI Label panel copies into its labelmap,
  :mod:`consumers.annotation.nrrd`); ``dicom_seg`` answers the DICOM SEG
  (``application/dicom``); ``all`` (and no ``output``) answers ``multipart/form-data``
  with a ``params`` part and an ``image`` part, the SEG, or the NRRD when ``params`` has
  ``"result_extension": ".nrrd"`` (as the viewer sends), as MONAI Label does.
- ``POST /activelearning/{strategy}`` (JSON body such as ``{"client_id": ...}``,
  accepted and ignored): ``uncertainty`` — the series of the pending suggestion with the
  highest uncertainty (answer carries ``weight`` = that uncertainty and its
  ``annotation_id``); ``random`` — a random series without a final label; ``first`` —
  the unlabeled series with the smallest UID. Answer ``{"id": <SeriesInstanceUID>,
  **image info, StudyInstanceUID, SeriesInstanceUID, Modality, StudyDate, StudyTime,
  PatientID, RetrieveURL}`` (the DICOM-named fields OHIF's "Next Sample" shows and opens;
  dates, time and PatientID as Orthanc holds the study, RetrieveURL through
  ``/proxy/dicom/wado``), or ``{}`` when nothing is left, like MONAI Label.
- ``GET /train/`` — ``{"status": "NOT_RUNNING"}``: nothing trains here (the viewer asks).
- ``GET /datastore/?output=stats|all`` — ``stats``: ``{total, completed, label_tags}``;
  ``all``: ``{name, description, images_dir, labels_dir, objects: {image id: {image:
  {ext, info}, labels: {tag: {ext, info}}}}}``. Tags: ``original`` (the latest
  suggestion), ``final`` (the latest accepted or corrected one).

Differs from MONAI Label
------------------------
- No training (``POST /train``), scoring (``/scoring``), sessions, batch inference, model
  download, ``/datastore/label`` uploads, image upload (``PUT /datastore``) or
  ``output=train``: they answer 404 or 422. Corrections are submitted through
  ``POST /annotations/{id}/correct`` (a DICOM SEG), which records who corrected what.
- ``/infer`` takes only ``image`` ids already in the archive (no ``file``/``label``
  upload, no ``session_id``) and reads only ``result_extension`` from ``params`` (no
  interactive clicks: the models are fully automatic); NRRD is the only image format
  (no NIfTI), always uint8 and uncompressed.
- Inference is not instantaneous: the request waits for the model (at most
  ``INFER_TIMEOUT_S``) and may answer 503 when Orthanc or Kafka is unavailable; errors
  are the API's JSON ``{"error", "field"}``, not FastAPI's ``{"detail"}``.
- Authentication is the API's own (:mod:`api.auth`), not MONAI Label's RBAC: ``GET``s
  need a researcher key, ``/infer`` and ``/activelearning`` an annotator or admin key,
  sent as ``Authorization: Bearer <key>`` (MONAI Label clients send a bearer token when
  given one) or, from the OHIF viewer, the ``/login`` session cookie.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import time
import uuid
from concurrent.futures.process import BrokenProcessPool
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import pydicom
from fastapi import APIRouter, Body, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from api.auth import BROWSER_ANNOTATOR, BROWSER_RESEARCHER
from api.datastore import SeriesDatastore
from api.errors import ApiError
from api.services import ApiServices, get_services
from cohortstream import __version__
from cohortstream.orthanc import OrthancRejectedError, OrthancUnavailableError
from cohortstream.publisher import PublishError

if TYPE_CHECKING:
    from consumers.annotation.models import ModelRegistry
    from consumers.annotation.worker import SuggestionResult

__all__ = ["INFER_TIMEOUT_S", "STRATEGIES", "InferOutput", "router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["monailabel"])
Services = Annotated[ApiServices, Depends(get_services)]

#: Longest an ``/infer`` request waits for fetching, inference and storing (seconds).
INFER_TIMEOUT_S = 600.0

STRATEGIES: dict[str, str] = {
    "uncertainty": "The series whose pending suggestion has the highest uncertainty (review it first).",
    "random": "A random series without an accepted or corrected segmentation.",
    "first": "The first series (by SeriesInstanceUID) without an accepted or corrected segmentation.",
}


class InferOutput(StrEnum):
    """MONAI Label's ``output`` of ``/infer``."""

    image = "image"
    json = "json"
    all = "all"
    dicom_seg = "dicom_seg"


class DatastoreOutput(StrEnum):
    """MONAI Label's ``output`` of ``/datastore/`` (``train`` is not supported)."""

    stats = "stats"
    all = "all"
    train = "train"


@functools.cache
def _registry() -> ModelRegistry:
    # Imported on first use: the models pull in torch, which the rest of the API never needs.
    from consumers.annotation.models import default_registry

    return default_registry()


def _models_info() -> dict[str, Any]:
    return {
        spec.name: {
            "type": "segmentation",
            "labels": {seg.label: seg.number for seg in spec.segments},
            "dimension": 3,
            "description": spec.description or f"{spec.name} {spec.version}",
            "config": {},
        }
        for spec in _registry()
    }


@router.get("/info/", summary="MONAI Label app info", dependencies=[BROWSER_RESEARCHER])
@router.get("/info", include_in_schema=False, dependencies=[BROWSER_RESEARCHER])
async def info(services: Services) -> dict[str, Any]:
    """What a MONAI Label client shows: models, labels, strategies, datastore summary."""
    models = await asyncio.to_thread(_models_info)  # the first call imports torch
    labels: list[str] = []
    for model in models.values():
        for label in sorted(model["labels"], key=model["labels"].get):
            if label not in labels:
                labels.append(label)
    return {
        "name": "cohortstream",
        "description": "AI-suggested segmentations of the cohort's DICOM series, reviewed by people.",
        "version": __version__,
        "labels": labels,
        "models": models,
        "trainers": {},
        "strategies": {name: {"description": text} for name, text in STRATEGIES.items()},
        "scoring": {},
        "train_stats": {},
        "datastore": await SeriesDatastore(_db(services)).status(),
    }


def _db(services: ApiServices) -> Any:
    if services.db is None:
        raise RuntimeError("ApiServices.open() was not awaited")
    return services.db


@router.get(
    "/datastore/",
    summary="MONAI Label datastore: stats or every image with its labels",
    dependencies=[BROWSER_RESEARCHER],
)
@router.get("/datastore", include_in_schema=False, dependencies=[BROWSER_RESEARCHER])
async def datastore(services: Services, output: DatastoreOutput | None = None) -> dict[str, Any]:
    """``stats`` (default) or ``all``, in MONAI Label's shapes."""
    if output is DatastoreOutput.train:
        raise ApiError(422, "output=train is not supported: cohortstream does not train models", "output")
    store = SeriesDatastore(_db(services))
    if output is DatastoreOutput.all:
        return {
            "name": "cohortstream",
            "description": "DICOM series in the cohortstream archive",
            "images_dir": "",
            "labels_dir": "",
            "objects": await store.objects(),
        }
    return await store.status()


@router.post(
    "/activelearning/{strategy}",
    summary="MONAI Label active learning: the next series to annotate",
    dependencies=[BROWSER_ANNOTATOR],
)
async def activelearning(
    request: Request, services: Services, strategy: str, params: Annotated[dict[str, Any] | None, Body()] = None
) -> dict[str, Any]:
    """``{"id": SeriesInstanceUID, ...}`` by ``strategy``; ``{}`` when none is left."""
    if strategy not in STRATEGIES:
        raise ApiError(404, f"no strategy {strategy!r}; known: {sorted(STRATEGIES)}", "strategy")
    store = SeriesDatastore(_db(services))
    if strategy == "uncertainty":
        pending = await services.store.highest_uncertainty_pending()
        if pending is None:
            return {}
        series_uid = str(pending["series_instance_uid"])
        info = await store.image_info(series_uid)
        answer = {
            "id": series_uid,
            **info,
            "study_instance_uid": pending.get("study_instance_uid") or info.get("study_instance_uid"),
            "weight": pending.get("uncertainty"),
            "annotation_id": str(pending.get("annotation_id", pending["_id"])),
        }
    else:
        series = await (store.random_unlabeled() if strategy == "random" else store.first_unlabeled())
        if series is None:
            return {}
        answer = {"id": str(series["_id"]), **await store.image_info(str(series["_id"]))}
    return {**answer, **await _dicom_fields(request, services, answer["id"], answer.get("study_instance_uid"))}


async def _dicom_fields(
    request: Request, services: ApiServices, series_uid: str, study_uid: str | None
) -> dict[str, Any]:
    """What OHIF's "Next Sample" dialog shows and opens, in DICOM's names: the study's
    StudyDate, StudyTime and PatientID from Orthanc (the views keep no StudyTime) and a
    RetrieveURL through this API's DICOMweb proxy."""
    fields: dict[str, Any] = {"SeriesInstanceUID": series_uid, "StudyInstanceUID": study_uid}
    view = await services.store.series(series_uid)
    fields["Modality"] = (view or {}).get("modality")
    tags: dict[str, Any] = {}
    if study_uid:
        try:
            found = await services.archive.find("Study", {"StudyInstanceUID": study_uid}, Expand=True)
        except (OrthancUnavailableError, OrthancRejectedError) as exc:
            log.warning(
                "study tags not read from Orthanc", extra={"series_instance_uid": series_uid, "error": str(exc)}
            )
            found = []
        if found:
            tags = {**found[0].get("PatientMainDicomTags", {}), **found[0].get("MainDicomTags", {})}
        fields["RetrieveURL"] = (
            f"{str(request.base_url).rstrip('/')}/proxy/dicom/wado/studies/{study_uid}/series/{series_uid}"
        )
    else:
        fields["RetrieveURL"] = None
    fields["StudyDate"] = tags.get("StudyDate")
    fields["StudyTime"] = tags.get("StudyTime")
    fields["PatientID"] = tags.get("PatientID") or (view or {}).get("patient_id")
    return fields


@router.get("/train/", summary="MONAI Label training status: never running", dependencies=[BROWSER_RESEARCHER])
@router.get("/train", include_in_schema=False, dependencies=[BROWSER_RESEARCHER])
async def train_status() -> dict[str, Any]:
    """cohortstream does not train; the viewer polls this before offering training."""
    return {"status": "NOT_RUNNING", "details": "cohortstream does not train models"}


def _multipart(params: dict[str, Any], filename: str, data: bytes, media_type: str = "application/dicom") -> Response:
    """MONAI Label's ``all`` answer: a ``params`` JSON part and the result file."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\nContent-Type: application/json\r\n\r\n'
        f"{json.dumps(params, default=str)}\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        f"Content-Type: {media_type}\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return Response(body, media_type=f"multipart/form-data; boundary={boundary}")


@router.post(
    "/infer/{model}", summary="MONAI Label inference on a series in the archive", dependencies=[BROWSER_ANNOTATOR]
)
async def infer(
    services: Services,
    model: str,
    image: str = "",
    output: InferOutput | None = None,
    params: Annotated[str, Form()] = "{}",
    file: Annotated[UploadFile | None, File()] = None,
    label: Annotated[UploadFile | None, File()] = None,
) -> Response:
    """Suggest a segmentation of series ``image`` with ``model`` (see the module docstring)."""
    if model not in _registry().names:
        raise ApiError(404, f"no model {model!r}; known: {_registry().names}", "model")
    if file is not None or label is not None:
        raise ApiError(
            422,
            "uploading images or labels is not supported; pass the SeriesInstanceUID as image",
            "file" if file is not None else "label",
        )
    if not image:
        raise ApiError(422, "image: the SeriesInstanceUID to segment is required", "image")
    try:
        options = json.loads(params or "{}")
    except ValueError as exc:
        raise ApiError(422, "params is not JSON", "params") from exc
    extension = str(options.get("result_extension") or "") if isinstance(options, dict) else ""
    as_nrrd = output is InferOutput.image or (output in (None, InferOutput.all) and extension.startswith(".nrrd"))
    series = await services.store.series(image)
    if series is None or not series.get("study_instance_uid") or not series.get("patient_id"):
        raise ApiError(404, f"no series {image} in the archive's views", "image")
    started = time.monotonic()
    result = await _suggest(services, model, image, series)
    event = result.event
    assert event is not None and result.seg_bytes is not None  # _suggest answered 422 otherwise
    try:
        await services.publish(event, key=event.series_instance_uid)
    except PublishError as exc:
        log.error(
            "Kafka did not acknowledge a suggestion made on request",
            extra={"series_instance_uid": image, "error": str(exc)},
        )
        raise ApiError(503, "event store unavailable; the suggestion was not recorded, retry later") from exc
    total_s = time.monotonic() - started
    answer = {
        "label_names": {s.label: s.segment_number for s in event.segments},
        "latencies": {"infer": round(event.inference_s, 3), "total": round(total_s, 3)},
        "annotation_id": str(event.annotation_id),
        "model": event.model_name,
        "model_version": event.model_version,
        "seg_sop_instance_uid": event.seg_sop_instance_uid,
        "uncertainty": event.uncertainty,
        "device": event.device,
        "segments": [s.model_dump(mode="json") for s in event.segments],
    }
    log.info(
        "suggestion made on request",
        extra={"series_instance_uid": image, "model": model, "annotation_id": answer["annotation_id"]},
    )
    if output is InferOutput.json:
        return JSONResponse(answer)
    if as_nrrd:
        nrrd = await _label_nrrd(services, series, image, result.seg_bytes)
        name = f"{event.seg_sop_instance_uid}.nrrd"
        if output is InferOutput.image:
            return Response(
                nrrd,
                media_type="application/octet-stream",
                headers={"Content-Disposition": f'attachment; filename="{name}"'},
            )
        return _multipart(answer, name, nrrd, "application/octet-stream")
    filename = f"{event.seg_sop_instance_uid}.dcm"
    if output is InferOutput.dicom_seg:
        return Response(
            result.seg_bytes,
            media_type="application/dicom",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    return _multipart(answer, filename, result.seg_bytes)


async def _label_nrrd(services: ApiServices, series: dict[str, Any], series_uid: str, seg_bytes: bytes) -> bytes:
    """The SEG as the raw uint8 NRRD the viewer copies (:mod:`consumers.annotation.nrrd`):
    the source instances' headers are read again from Orthanc for their geometry."""
    from consumers.annotation.errors import GeometryError
    from consumers.annotation.nrrd import seg_as_nrrd

    try:
        files = await services.archive.series_instances(
            str(series["study_instance_uid"]), series_uid, str(series["patient_id"])
        )
    except OrthancUnavailableError as exc:
        raise ApiError(503, "DICOM archive unavailable, retry later") from exc

    def convert() -> bytes:
        sources = [pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True) for f in files]
        sources = [ds for ds in sources if str(ds.get("SeriesInstanceUID", "")) == series_uid]
        return seg_as_nrrd(pydicom.dcmread(io.BytesIO(seg_bytes)), sources)

    try:
        return await asyncio.to_thread(convert)
    except GeometryError as exc:
        raise ApiError(422, f"series {series_uid} has no regular grid for an NRRD answer: {exc}", "image") from exc


async def _suggest(services: ApiServices, model: str, series_uid: str, series: dict[str, Any]) -> SuggestionResult:
    from consumers.annotation.applicability import SeriesFacts
    from consumers.annotation.errors import AnnotationError, ModelLoadError
    from consumers.annotation.worker import suggest_series

    try:
        async with asyncio.timeout(INFER_TIMEOUT_S):
            result = await suggest_series(
                services.settings,
                services.archive,
                study_instance_uid=str(series["study_instance_uid"]),
                series_instance_uid=series_uid,
                patient_id=str(series["patient_id"]),
                facts=SeriesFacts.from_view(series),
                model_name=model,
                pool=services.inference_pool(),
            )
    except ModelLoadError as exc:
        log.error("model cannot be loaded", extra={"model": model, "error": str(exc)})
        raise ApiError(503, f"model {model} is not available on this server", "model") from exc
    except ModuleNotFoundError as exc:  # an API installed without the 'annotation' extra
        log.error("model stack not installed", extra={"model": model, "error": str(exc)})
        raise ApiError(503, "the annotation stack (torch, MONAI) is not installed on this server", "model") from exc
    except AnnotationError as exc:
        raise ApiError(422, f"series {series_uid} cannot be segmented: {exc}", "image") from exc
    except OrthancRejectedError as exc:
        raise ApiError(404, f"the archive does not hold series {series_uid}", "image") from exc
    except (TimeoutError, OrthancUnavailableError) as exc:
        raise ApiError(503, "inference did not finish: DICOM archive unavailable or too slow, retry later") from exc
    except BrokenProcessPool as exc:
        log.error("the inference process died", extra={"series_instance_uid": series_uid, "error": repr(exc)})
        services.discard_inference_pool()
        raise ApiError(503, "the inference process failed; retry later") from exc
    if result.event is None or result.seg_bytes is None:
        raise ApiError(422, f"model {model} does not apply to series {series_uid}: {result.skipped_reason}", "image")
    return result
