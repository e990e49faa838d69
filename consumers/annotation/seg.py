"""Write a model's label map as a DICOM Segmentation (highdicom), and read one back.

Why these choices:

- BINARY segmentation: the suggestion is a decision to review, not a probability map,
  and BINARY frames are 1 bit per pixel (an 8x smaller object for Orthanc).
- Deterministic UIDs: the SEG's SeriesInstanceUID and SOPInstanceUID are derived from
  (source SeriesInstanceUID, model name, model version), so reprocessing the same series
  with the same model yields the same instance and Orthanc/MongoDB upserts stay
  idempotent; a new model version yields a new series next to the old one.
- Every segment carries coded concepts (Segmented Property Category/Type, SNOMED CT) and
  an Algorithm Identification (model name, version, family) with algorithm type
  AUTOMATIC, so viewers show the suggestion as machine-made.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from consumers.annotation.errors import SegmentationBuildError
from consumers.annotation.models import ModelSpec
from consumers.annotation.volume import SeriesVolume

__all__ = ["SEG_MANUFACTURER", "SEG_SERIES_NUMBER", "build_segmentation", "derived_uid", "read_label_map"]

SEG_MANUFACTURER = "cohortstream"
#: Series number of suggestion series; high so they sort after the acquired series.
SEG_SERIES_NUMBER = 9001


def derived_uid(*parts: str) -> str:
    """A ``2.25.`` UID that depends only on ``parts`` (SHA-256, first 128 bits)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def _software_version() -> str:
    try:
        from importlib.metadata import version

        return version("cohortstream")
    except Exception:
        return "0"


def build_segmentation(
    volume: SeriesVolume,
    labels: np.ndarray,
    model: ModelSpec,
    *,
    series_number: int = SEG_SERIES_NUMBER,
    content_label: str = "SUGGESTION",
) -> hd.seg.Segmentation:
    """A BINARY DICOM SEG of ``labels`` (same (slice, row, column) shape as ``volume.array``;
    value n = the model's segment n) referencing ``volume``'s source instances."""
    if labels.shape != volume.array.shape:
        raise SegmentationBuildError(f"label map shape {labels.shape} differs from the volume's {volume.array.shape}")
    numbers = [seg.number for seg in model.segments]
    unknown = sorted(set(np.unique(labels).tolist()) - {0, *numbers})
    if unknown:
        raise SegmentationBuildError(f"label map holds values {unknown} that model {model.name} does not define")
    algorithm = hd.AlgorithmIdentificationSequence(name=model.name, family=model.family, version=model.version)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=seg.number,
            segment_label=seg.label,
            segmented_property_category=seg.property_category,
            segmented_property_type=seg.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for seg in model.segments
    ]
    # One binary channel per segment, stacked on the last axis: (frames, rows, columns, segments).
    pixel_array = np.stack([(labels == n) for n in numbers], axis=-1).astype(np.uint8)
    source_series = volume.reference.series_instance_uid
    try:
        seg = hd.seg.Segmentation(
            source_images=list(volume.source_datasets),
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=derived_uid("seg-series", source_series, model.name, model.version),
            series_number=series_number,
            sop_instance_uid=derived_uid("seg-instance", source_series, model.name, model.version),
            instance_number=1,
            manufacturer=SEG_MANUFACTURER,
            manufacturer_model_name=model.name,
            software_versions=f"cohortstream {_software_version()}; {model.name} {model.version}",
            device_serial_number="0",
            content_label=content_label,
            content_description=f"AI suggestion by {model.name} {model.version}"[:64],
            content_creator_name="cohortstream^annotation",
            series_description=f"AI {model.name} {model.version}"[:64],
            omit_empty_frames=False,
        )
    except (ValueError, TypeError) as exc:
        raise SegmentationBuildError(f"highdicom refused the segmentation of series {source_series}: {exc}") from exc
    return seg


def read_label_map(seg: Dataset, source_sop_instance_uids: Sequence[str]) -> np.ndarray:
    """The label map (slice, row, column) of a BINARY SEG, slices in the order of
    ``source_sop_instance_uids``; overlapping segments are an error (we never write them)."""
    segmentation = seg if isinstance(seg, hd.seg.Segmentation) else hd.seg.Segmentation.from_dataset(seg)
    return segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=list(source_sop_instance_uids),
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
