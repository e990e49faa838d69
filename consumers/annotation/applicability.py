"""Which series a model applies to, decided from metadata before any pixel is fetched.

Why metadata only: fetching a series from Orthanc and decoding it costs seconds and
memory (a 3D T1 is 20–60 MB); a series no model applies to should cost neither. The
facts come from the ``DicomSeriesCompleted`` event (modality) and the ``series`` view
(BodyPartExamined, SeriesDescription), or, when the view does not hold the series yet,
from Orthanc's series record (its main DICOM tags, which also carry ProtocolName) — all
without reading an instance.

A :class:`SeriesRule` says yes when the modality is one of the model's and

1. BodyPartExamined is one of its body parts, or
2. BodyPartExamined is absent and the series description or protocol name matches one
   of its ``description_patterns``,

and in both cases the description or protocol name matches none of its
``exclude_patterns`` (localizers, diffusion, functional series …: a brain extractor for
3D T1 volumes should not run on a 3-plane scout even when it is labelled HEAD). A body
part that is present and not listed is decisive: a knee is not a brain, whatever its
description says. Patterns are case-insensitive regular expressions (``re.search``); the bundle's delimit
words with ``(?<![a-z0-9])``…``(?![a-z0-9])`` rather than ``\\b``, because scanners join words
with underscores (``t1_mprage_sag``, ``AAHead_Scout``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SeriesFacts", "SeriesRule"]


def _clean(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


@dataclass(frozen=True)
class SeriesFacts:
    """What is known of a series without reading its instances."""

    modality: str | None = None
    body_part_examined: str | None = None
    series_description: str | None = None
    protocol_name: str | None = None

    @classmethod
    def from_view(cls, doc: Mapping[str, Any] | None, modality: str | None = None) -> SeriesFacts:
        """Facts from a ``series`` view document; ``modality`` (from the event) wins."""
        doc = doc or {}
        return cls(
            modality=_clean(modality) or _clean(doc.get("modality")),
            body_part_examined=_clean(doc.get("body_part_examined")),
            series_description=_clean(doc.get("series_description")),
            protocol_name=_clean(doc.get("protocol_name")),
        )

    @classmethod
    def from_orthanc(cls, main_dicom_tags: Mapping[str, Any], modality: str | None = None) -> SeriesFacts:
        """Facts from Orthanc's ``MainDicomTags`` of a series; ``modality`` (from the event) wins."""
        return cls(
            modality=_clean(modality) or _clean(main_dicom_tags.get("Modality")),
            body_part_examined=_clean(main_dicom_tags.get("BodyPartExamined")),
            series_description=_clean(main_dicom_tags.get("SeriesDescription")),
            protocol_name=_clean(main_dicom_tags.get("ProtocolName")),
        )

    @property
    def texts(self) -> tuple[str, ...]:
        """The free-text fields the description rules look at."""
        return tuple(t for t in (self.series_description, self.protocol_name) if t)


@dataclass(frozen=True)
class SeriesRule:
    """The series a model applies to; see the module docstring for the order of checks.
    ``body_parts=None`` accepts any body part (and a missing one)."""

    modalities: frozenset[str]
    body_parts: frozenset[str] | None = None
    description_patterns: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    _compiled: tuple[tuple[re.Pattern[str], ...], tuple[re.Pattern[str], ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        try:
            compiled = (
                tuple(re.compile(p, re.IGNORECASE) for p in self.description_patterns),
                tuple(re.compile(p, re.IGNORECASE) for p in self.exclude_patterns),
            )
        except re.error as exc:
            raise ValueError(f"SeriesRule: invalid pattern {exc.pattern!r}: {exc}") from exc
        object.__setattr__(self, "_compiled", compiled)

    def decide(self, facts: SeriesFacts) -> tuple[bool, str]:
        """(applies, why) — the reason names the attribute that decided."""
        modality = (facts.modality or "").upper()
        if modality not in self.modalities:
            return False, f"modality {modality or '(missing)'} not in {sorted(self.modalities)}"
        include, exclude = self._compiled
        for text in facts.texts:
            for pattern in exclude:
                if pattern.search(text):
                    return False, f"series description/protocol {text!r} is excluded (matches {pattern.pattern!r})"
        if self.body_parts is None:
            return True, f"{modality}, any body part"
        part = (facts.body_part_examined or "").upper()
        if part:
            if part in self.body_parts:
                return True, f"{modality}, BodyPartExamined {part}"
            return False, f"BodyPartExamined {part} not in {sorted(self.body_parts)}"
        for text in facts.texts:
            for pattern in include:
                if pattern.search(text):
                    return True, f"{modality}, BodyPartExamined missing, series description/protocol {text!r} matches"
        if not include:
            return False, f"BodyPartExamined (missing) not in {sorted(self.body_parts)}"
        return False, (
            f"BodyPartExamined (missing) not in {sorted(self.body_parts)} and no series description/protocol "
            "matches the model's description rules"
        )
