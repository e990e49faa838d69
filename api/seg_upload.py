"""Check an uploaded DICOM Segmentation before it is stored as a reviewer's correction.

The correction goes into the archive next to the images and is announced to every
consumer, so it is checked first: a Part-10 file, of the Segmentation Storage SOP class,
with its own UIDs, and referencing the series the suggestion was made for. A SEG names
what it segments in two places — the Referenced Series Sequence (series level) and the
per-frame (or shared) Derivation Image → Source Image Sequence (instance level); either
is enough, because viewers and tools fill one or the other. Instance references only say
which series they belong to once looked up, so :func:`check_segmentation` takes a
callback for that and calls it only when the series-level reference is missing.

Only the header is parsed (``stop_before_pixels``): the frames are Orthanc's and the
viewer's business, and parsing them would cost memory on a large SEG for nothing.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from cohortstream.errors import CohortStreamError

__all__ = [
    "MAX_SEG_BYTES",
    "SEGMENTATION_STORAGE",
    "SegUploadError",
    "UploadedSegmentation",
    "check_segmentation",
    "read_segmentation",
    "referenced_instance_uids",
    "referenced_series_uids",
]

#: Segmentation Storage SOP Class UID.
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
#: Largest upload accepted (bytes); a BINARY SEG of a 1000-slice 512² series is ~33 MB a segment.
MAX_SEG_BYTES = 512 * 1024 * 1024


class SegUploadError(CohortStreamError, ValueError):
    """The upload is not a SEG of the annotation's series; ``field`` names the form field."""

    def __init__(self, message: str, field: str = "file") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class UploadedSegmentation:
    """What the API needs to know about an accepted upload."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    referenced_series_uids: frozenset[str]
    referenced_instance_uids: frozenset[str]
    segment_count: int


def read_segmentation(data: bytes) -> Dataset:
    """The header of ``data`` as a dataset, if it is a Part-10 DICOM Segmentation."""
    if not data:
        raise SegUploadError("file is empty")
    if len(data) > MAX_SEG_BYTES:
        raise SegUploadError(f"file is larger than {MAX_SEG_BYTES} bytes")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise SegUploadError("file is not a DICOM Part-10 file (no 'DICM' preamble)") from exc
    except Exception as exc:
        raise SegUploadError("file is not a readable DICOM file") from exc
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
    if sop_class != SEGMENTATION_STORAGE:
        raise SegUploadError(
            f"file is not a DICOM Segmentation: SOPClassUID is {sop_class or '(missing)'}, expected {SEGMENTATION_STORAGE}"
        )
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if not str(ds.get(keyword, "") or "").strip():
            raise SegUploadError(f"file lacks {keyword}")
    return ds


def referenced_series_uids(ds: Dataset) -> frozenset[str]:
    """Series UIDs in the Referenced Series Sequence."""
    return frozenset(
        str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", []) if "SeriesInstanceUID" in item
    )


def _source_images(groups: Iterable[Dataset]) -> Iterable[str]:
    for group in groups:
        for derivation in group.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                if "ReferencedSOPInstanceUID" in source:
                    yield str(source.ReferencedSOPInstanceUID)


def referenced_instance_uids(ds: Dataset) -> frozenset[str]:
    """SOP Instance UIDs the SEG is derived from: per-frame and shared Derivation Image
    Sequences, and the instance lists inside the Referenced Series Sequence."""
    uids = set(_source_images(ds.get("PerFrameFunctionalGroupsSequence", [])))
    uids.update(_source_images(ds.get("SharedFunctionalGroupsSequence", [])))
    for series in ds.get("ReferencedSeriesSequence", []):
        for instance in series.get("ReferencedInstanceSequence", []):
            if "ReferencedSOPInstanceUID" in instance:
                uids.add(str(instance.ReferencedSOPInstanceUID))
    return frozenset(uids)


async def check_segmentation(
    data: bytes,
    series_instance_uid: str,
    instances_in_series: Callable[[frozenset[str]], Awaitable[bool]],
) -> UploadedSegmentation:
    """Accept ``data`` as a SEG of ``series_instance_uid`` or raise :class:`SegUploadError`.

    ``instances_in_series(uids)`` answers whether any of these SOP instances belongs to
    the series; it is consulted only when the SEG has no series-level reference to it.
    """
    ds = await asyncio.to_thread(read_segmentation, data)  # parsing is CPU work; keep the loop free
    series_refs = referenced_series_uids(ds)
    instance_refs = referenced_instance_uids(ds)
    if str(ds.SeriesInstanceUID) == series_instance_uid:
        raise SegUploadError(
            "the SEG has the SeriesInstanceUID of the images it segments; it needs a series of its own"
        )
    if series_instance_uid not in series_refs and (not instance_refs or not await instances_in_series(instance_refs)):
        raise SegUploadError(
            f"the SEG does not reference series {series_instance_uid} "
            "(neither in ReferencedSeriesSequence nor through its source images)"
        )
    return UploadedSegmentation(
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        referenced_series_uids=series_refs,
        referenced_instance_uids=instance_refs,
        segment_count=len(ds.get("SegmentSequence", [])),
    )
