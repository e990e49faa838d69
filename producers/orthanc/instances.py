"""Read what Orthanc holds about a batch of instances, in bulk, and make their events.

Per batch of instance ids (a page of ``NewInstance`` changes, or a page of
``/instances`` for a reconciliation), Orthanc is asked:

- once, ``POST /tools/bulk-content`` with ``Metadata``: every instance's main tags
  (SOP Instance UID, Instance Number), its series, file size, and metadata (SOP Class,
  transfer syntax, RemoteAET/CalledAET, Origin, ReceptionDate);
- once per series not seen before, ``GET /instances/{id}/tags?simplify`` of one of its
  instances: the series, study and patient attributes (Orthanc 1.10 keeps PatientAge in
  no main-tag level, so one instance's tags are read rather than the series and study
  resources). The answer is cached per series;
- once per DICOM SEG, that SEG's own tags (for the review history, see
  :mod:`producers.orthanc.corrections`).

The event's attributes are derived from those tags by the same reader as the listener's
(:func:`cohortstream.dicom_attributes.dataset_attributes`), so both routes give the same
values for the same object.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pydicom
from pydicom.dataset import FileMetaDataset

from cohortstream.dicom_attributes import DATASET_FIELDS, UnreadableInstanceError, dataset_attributes
from cohortstream.events import ORTHANC_FEED_PRODUCER, DicomInstanceReceived
from cohortstream.orthanc import OrthancClient, OrthancRejectedError
from producers.orthanc.changes import parse_orthanc_time

__all__ = [
    "SEGMENTATION_STORAGE",
    "InstanceBatch",
    "InstanceReader",
    "event_from_attributes",
    "event_from_orthanc",
    "orthanc_attributes",
    "sibling_attributes",
]

log = logging.getLogger(__name__)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_KEYWORDS = frozenset(DATASET_FIELDS.values())


def _now_ms() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


#: Event fields that differ between the instances of one series (the others are read once
#: per series, from one instance's tags).
_INSTANCE_FIELDS = ("sop_class_uid", "sop_instance_uid", "instance_number", "transfer_syntax_uid")


def orthanc_attributes(instance: Mapping[str, Any], tags: Mapping[str, Any]) -> dict[str, Any]:
    """The event's DICOM attributes of one instance, read by the listener's reader
    (:func:`cohortstream.dicom_attributes.dataset_attributes`) from ``tags`` (simplified
    tags of it or of another instance of its series) with the instance-level values of
    ``instance`` (its ``/tools/bulk-content`` item with ``Metadata``). Raises
    :class:`UnreadableInstanceError` when an identifier is missing."""
    metadata: Mapping[str, Any] = instance.get("Metadata") or {}
    main: Mapping[str, Any] = instance.get("MainDicomTags") or {}
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    merged = {k: v for k, v in tags.items() if k in _KEYWORDS and isinstance(v, str)}
    # Instance level: this instance's own values, never those of the series' sample.
    merged.pop("InstanceNumber", None)
    merged.update({k: v for k, v in main.items() if k in _KEYWORDS and isinstance(v, str)})
    if metadata.get("SopClassUid"):
        merged["SOPClassUID"] = str(metadata["SopClassUid"])
    for keyword, value in merged.items():
        if keyword == "TransferSyntaxUID":
            continue
        try:
            setattr(ds, keyword, value)
        except (ValueError, TypeError):  # a value pydicom refuses for its VR: leave it out
            log.warning("attribute left out of an Orthanc instance's event", extra={"keyword": keyword})
    transfer_syntax = str(metadata.get("TransferSyntax") or tags.get("TransferSyntaxUID") or "")
    try:
        return dataset_attributes(ds, transfer_syntax_uid=transfer_syntax or None)
    except UnreadableInstanceError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UnreadableInstanceError(f"cannot read Orthanc instance {instance.get('ID')}: {exc}") from exc


def _instance_number(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def sibling_attributes(instance: Mapping[str, Any], series: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes of ``instance`` from those of another instance of its series
    (``series``, from :func:`orthanc_attributes`): only the instance-level fields are read
    again, from the bulk item. Five times cheaper than the full read (pydicom's
    per-attribute checks), which counts at Orthanc's receiving rate."""
    metadata: Mapping[str, Any] = instance.get("Metadata") or {}
    main: Mapping[str, Any] = instance.get("MainDicomTags") or {}
    sop_uid = str(main.get("SOPInstanceUID") or "").strip()
    if not sop_uid:
        raise UnreadableInstanceError(f"Orthanc instance {instance.get('ID')} has no SOPInstanceUID")
    number = main.get("InstanceNumber")
    return {
        **series,
        "sop_instance_uid": sop_uid,
        "instance_number": _instance_number(number) if number is not None else None,
        "sop_class_uid": str(metadata.get("SopClassUid") or series["sop_class_uid"]),
        "transfer_syntax_uid": str(metadata.get("TransferSyntax") or series["transfer_syntax_uid"]),
    }


def event_from_attributes(
    instance: Mapping[str, Any],
    attributes: Mapping[str, Any],
    *,
    change_seq: int | None = None,
    change_date: str | None = None,
    producer: str = ORTHANC_FEED_PRODUCER,
) -> DicomInstanceReceived:
    """The event of one instance Orthanc holds, from its attributes and its bulk item."""
    metadata: Mapping[str, Any] = instance.get("Metadata") or {}
    received = parse_orthanc_time(metadata.get("ReceptionDate")) or parse_orthanc_time(change_date) or _now_ms()
    return DicomInstanceReceived(
        **attributes,
        producer=producer,
        calling_aet=str(metadata.get("RemoteAET") or ""),
        called_aet=str(metadata.get("CalledAET") or ""),
        size_bytes=int(instance.get("FileSize") or 0),
        received_at=received,
        orthanc_instance_id=str(instance["ID"]),
        orthanc_origin=str(metadata["Origin"]) if metadata.get("Origin") else None,
        orthanc_change_seq=change_seq,
    )


def event_from_orthanc(
    instance: Mapping[str, Any],
    tags: Mapping[str, Any],
    *,
    change_seq: int | None = None,
    change_date: str | None = None,
    producer: str = ORTHANC_FEED_PRODUCER,
) -> DicomInstanceReceived:
    """The event of one instance Orthanc holds (:func:`orthanc_attributes` then
    :func:`event_from_attributes`)."""
    return event_from_attributes(
        instance, orthanc_attributes(instance, tags), change_seq=change_seq, change_date=change_date, producer=producer
    )


@dataclass
class InstanceBatch:
    """What one batch of instance ids became."""

    events: list[DicomInstanceReceived] = field(default_factory=list)
    segs: list[tuple[DicomInstanceReceived, dict[str, Any]]] = field(default_factory=list)
    """DICOM SEG instances with their own tags (for the review history)."""
    gone: int = 0
    """Ids Orthanc no longer holds (deleted since the change was logged)."""
    unreadable: int = 0


class InstanceReader:
    """Turns Orthanc instance ids into events with a few bulk requests (see the module docstring)."""

    def __init__(self, orthanc: OrthancClient, *, series_cache_size: int = 4096, concurrency: int = 8) -> None:
        self._orthanc = orthanc
        self._series_tags: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._series_attributes: dict[str, dict[str, Any]] = {}
        self._cache_size = series_cache_size
        self._limit = asyncio.Semaphore(concurrency)

    async def _tags(self, instance_id: str) -> dict[str, Any] | None:
        async with self._limit:
            try:
                return await self._orthanc.retrying(
                    lambda: self._orthanc.instance_tags(instance_id), "read instance tags from Orthanc"
                )
            except OrthancRejectedError:  # deleted in between, or unreadable: the caller decides
                return None

    def _remember(self, series_id: str, tags: dict[str, Any]) -> None:
        self._series_tags[series_id] = tags
        self._series_tags.move_to_end(series_id)
        while len(self._series_tags) > self._cache_size:
            self._series_tags.popitem(last=False)

    async def read(self, ids: Sequence[str], changes: Mapping[str, tuple[int, str]] | None = None) -> InstanceBatch:
        """Events for ``ids`` (``changes``: id → (change seq, change date)), in the order given."""
        batch = InstanceBatch()
        if not ids:
            return batch
        items = await self._orthanc.retrying(
            lambda: self._orthanc.bulk_content(list(ids), metadata=True), "read instances from Orthanc"
        )
        by_id = {str(item.get("ID")): item for item in items if item.get("Type", "Instance") == "Instance"}
        batch.gone = sum(1 for i in ids if i not in by_id)
        # One sample instance per series not cached yet; SEGs are read one by one.
        samples: dict[str, str] = {}
        segs: list[str] = []
        for instance_id in ids:
            item = by_id.get(instance_id)
            if item is None:
                continue
            series_id = str(item.get("ParentSeries", ""))
            if (item.get("Metadata") or {}).get("SopClassUid") == SEGMENTATION_STORAGE:
                segs.append(instance_id)
            elif series_id not in self._series_tags:
                samples.setdefault(series_id, instance_id)
        wanted = [*samples.values(), *segs]
        fetched = dict(zip(wanted, await asyncio.gather(*(self._tags(i) for i in wanted)), strict=True))
        for series_id, instance_id in samples.items():
            if fetched.get(instance_id) is not None:
                self._remember(series_id, fetched[instance_id] or {})
        for instance_id in ids:
            item = by_id.get(instance_id)
            if item is None:
                continue
            own = fetched.get(instance_id) if instance_id in segs else None
            tags = own if own is not None else self._series_tags.get(str(item.get("ParentSeries", "")))
            if tags is None:
                tags = await self._tags(instance_id)
            if tags is None:
                batch.gone += 1
                continue
            seq, date = (changes or {}).get(instance_id, (None, None))
            series_id = str(item.get("ParentSeries", ""))
            try:
                known = self._series_attributes.get(series_id) if own is None else None
                if known is not None:
                    attributes = sibling_attributes(item, known)
                else:
                    attributes = orthanc_attributes(item, tags)
                    if own is None:
                        self._series_attributes[series_id] = attributes
                        while len(self._series_attributes) > self._cache_size:
                            self._series_attributes.pop(next(iter(self._series_attributes)))
                event = event_from_attributes(item, attributes, change_seq=seq, change_date=date)
            except (UnreadableInstanceError, ValueError) as exc:
                batch.unreadable += 1
                log.error(
                    "an instance in Orthanc cannot become an event; left out",
                    extra={"orthanc_id": instance_id, "error": str(exc)},
                )
                continue
            batch.events.append(event)
            if own is not None:
                batch.segs.append((event, own))
        return batch
