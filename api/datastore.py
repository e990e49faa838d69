"""MONAI Label's idea of a datastore, read from the ``series`` and ``annotations`` views.

MONAI Label keeps images and labels per image id, with label *tags*: ``original`` for
what a model produced and ``final`` for what a person approved. Here an image is a DICOM
series (id = SeriesInstanceUID) from the ``series`` view, a suggestion is its
``original`` label and an accepted or corrected suggestion its ``final`` label. Series
whose modality is SEG are labels, not images, and are left out.

Read-only, like the rest of the API; the answers are computed from ``find``/``distinct``
projections in Python (no aggregation needed).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from api.reviews import AnnotationStatus
from cohortstream.mongo import AsyncDatabase

__all__ = ["FINAL_TAG", "ORIGINAL_TAG", "SeriesDatastore"]

ORIGINAL_TAG = "original"
FINAL_TAG = "final"
_FINAL_STATUSES = [AnnotationStatus.ACCEPTED.value, AnnotationStatus.CORRECTED.value]
_IMAGES = {"modality": {"$ne": "SEG"}}
_IMAGE_FIELDS = {
    "study_instance_uid": 1,
    "modality": 1,
    "body_part_examined": 1,
    "series_description": 1,
    "instance_count": 1,
    "orthanc_id": 1,
    "first_received_at": 1,
}


def _image_info(series: Mapping[str, Any]) -> dict[str, Any]:
    # No patient identifier: MONAI Label clients only need to find and show the series.
    info = {k: v for k, v in series.items() if k in _IMAGE_FIELDS}
    info["name"] = str(series["_id"])
    return info


def _label_info(annotation: Mapping[str, Any], final: bool) -> dict[str, Any]:
    seg_uid = annotation.get("corrected_seg_sop_instance_uid") if final else None
    return {
        "ext": ".dcm",
        "info": {
            "annotation_id": str(annotation.get("annotation_id", annotation["_id"])),
            "model": annotation.get("model_name"),
            "model_version": annotation.get("model_version"),
            "status": annotation.get("status"),
            "seg_sop_instance_uid": seg_uid or annotation.get("seg_sop_instance_uid"),
            "uncertainty": annotation.get("uncertainty"),
            "ts": annotation.get("reviewed_at" if final else "suggested_at"),
        },
    }


def _later(a: Mapping[str, Any] | None, b: Mapping[str, Any], key: str) -> bool:
    """Whether ``b`` is more recent than ``a`` by ``key`` (missing dates count as oldest)."""
    if a is None:
        return True
    ta, tb = a.get(key), b.get(key)
    return tb is not None and (ta is None or tb > ta)


class SeriesDatastore:
    """Datastore status, listing and sampling over one database's views."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._series = db["series"]
        self._annotations = db["annotations"]

    async def labeled_series(self) -> list[str]:
        """Series with a ``final`` label (an accepted or corrected suggestion)."""
        found = await self._annotations.distinct("series_instance_uid", {"status": {"$in": _FINAL_STATUSES}})
        return sorted(str(uid) for uid in found)

    async def status(self) -> dict[str, Any]:
        """MONAI Label's ``datastore.status()``: ``total``, ``completed``, ``label_tags``."""
        total = await self._series.count_documents(_IMAGES)
        final = await self.labeled_series()
        suggested = await self._annotations.distinct("series_instance_uid", {})
        tags = {tag: n for tag, n in ((ORIGINAL_TAG, len(suggested)), (FINAL_TAG, len(final))) if n}
        return {"total": total, "completed": len(final), "label_tags": tags}

    async def objects(self) -> dict[str, Any]:
        """Every image with its labels, keyed by image id (MONAI Label's ``output=all``)."""
        objects: dict[str, Any] = {}
        async for series in self._series.find(_IMAGES, _IMAGE_FIELDS).sort("_id", 1):
            objects[str(series["_id"])] = {"image": {"ext": "", "info": _image_info(series)}, "labels": {}}
        latest: dict[str, dict[str, Any]] = {}
        latest_final: dict[str, dict[str, Any]] = {}
        async for annotation in self._annotations.find({}, {"history": 0, "segments": 0}):
            uid = str(annotation.get("series_instance_uid"))
            if _later(latest.get(uid), annotation, "suggested_at"):
                latest[uid] = annotation
            if annotation.get("status") in _FINAL_STATUSES and _later(latest_final.get(uid), annotation, "reviewed_at"):
                latest_final[uid] = annotation
        for uid, obj in objects.items():
            if uid in latest:
                obj["labels"][ORIGINAL_TAG] = _label_info(latest[uid], final=False)
            if uid in latest_final:
                obj["labels"][FINAL_TAG] = _label_info(latest_final[uid], final=True)
        return objects

    async def first_unlabeled(self) -> dict[str, Any] | None:
        """The unlabeled series with the smallest id (MONAI Label's ``first`` strategy)."""
        found = (
            await self._series.find(self._unlabeled(await self.labeled_series()), _IMAGE_FIELDS)
            .sort("_id", 1)
            .limit(1)
            .to_list(1)
        )
        return found[0] if found else None

    async def random_unlabeled(self, rng: random.Random | None = None) -> dict[str, Any] | None:
        """A uniformly drawn unlabeled series (MONAI Label's ``random`` strategy)."""
        query = self._unlabeled(await self.labeled_series())
        count = await self._series.count_documents(query)
        if not count:
            return None
        skip = (rng or random.SystemRandom()).randrange(count)
        found = await self._series.find(query, _IMAGE_FIELDS).sort("_id", 1).skip(skip).limit(1).to_list(1)
        return found[0] if found else None

    async def image_info(self, series_instance_uid: str) -> dict[str, Any]:
        """Info of one image (empty when the series is unknown)."""
        series = await self._series.find_one({"_id": series_instance_uid}, _IMAGE_FIELDS)
        return _image_info(series) if series else {}

    @staticmethod
    def _unlabeled(labeled: list[str]) -> dict[str, Any]:
        return {"$and": [_IMAGES, {"_id": {"$nin": labeled}}]} if labeled else dict(_IMAGES)
