"""Errors of the annotation core, part of the project's hierarchy.

An agent tells a series that can never be annotated (bad geometry: skip it with the
reason) from a broken installation (model cannot be loaded: alert, retry later) by type.
"""

from __future__ import annotations

from cohortstream.errors import CohortStreamError

__all__ = ["AnnotationError", "GeometryError", "ModelLoadError", "SegmentationBuildError"]


class AnnotationError(CohortStreamError):
    """Base class of the annotation core's errors."""


class GeometryError(AnnotationError, ValueError):
    """A series cannot be turned into one regular volume.

    ``attribute`` names the DICOM attribute at fault (``ImagePositionPatient``,
    ``NumberOfFrames`` …) so the skip reason stored with the series is actionable.
    """

    def __init__(self, attribute: str, reason: str) -> None:
        super().__init__(f"{attribute}: {reason}")
        self.attribute = attribute
        self.reason = reason

    def __reduce__(self) -> tuple[type[GeometryError], tuple[str, str]]:
        # Raised in the inference process and re-raised in the agent: it must pickle.
        return (type(self), (self.attribute, self.reason))


class ModelLoadError(AnnotationError, RuntimeError):
    """A model's weights are missing or do not fit its network; the message names the path."""


class SegmentationBuildError(AnnotationError, ValueError):
    """A DICOM Segmentation could not be built from a label map and its source series."""
