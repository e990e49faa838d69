"""Which BIDS datatype, suffix and entities a DICOM series gets: configurable rules.

Why rules and not guesses: a mis-labelled scan in a shared dataset is worse than a
missing one. A series gets a BIDS name only when a rule matches it (first match wins);
everything else is reported and left out. Rules test regular expressions on the
series attributes ``SeriesDescription``, ``ProtocolName``, ``Modality`` and ``ImageType``
(values joined by ``\\``); named groups ``task`` and ``acq`` in a pattern fill those
entities. Only MR is mapped: CT is not part of BIDS 1.10, PET needs blood and tracer
metadata this platform does not hold, and SEG/SR/PR objects are not images.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from export.bids.errors import MappingRuleError
from export.bids.labels import bids_label

__all__ = [
    "ATTRIBUTES",
    "DEFAULT_RULES",
    "MappingRule",
    "SeriesMapping",
    "Unmapped",
    "load_rules",
    "map_series",
]

ATTRIBUTES = ("SeriesDescription", "ProtocolName", "Modality", "ImageType")
#: Suffixes allowed per datatype (the subset of BIDS 1.10 this export writes).
_SUFFIXES: dict[str, set[str]] = {
    "anat": {"T1w", "T2w", "FLAIR", "PDw", "T2starw", "PDT2", "inplaneT1", "inplaneT2", "angio"},
    "func": {"bold", "cbv", "sbref"},
}  # dwi needs bval/bvec handling this export does not have yet: no rule may map to it
_NOT_IMAGES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "DOC"}


class MappingRule(BaseModel):
    """One rule: every pattern in ``match`` must be found, none in ``exclude``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    match: dict[str, str] = Field(description="Attribute name → regular expression (re.search).")
    exclude: dict[str, str] = Field(default_factory=dict, description="Attribute name → pattern that must not match.")
    datatype: Literal["anat", "func"]
    suffix: str
    task: str | None = Field(None, description="Task label when the patterns have no named group `task`.")
    acq: str | None = Field(None, description="acq- label when the patterns have no named group `acq`.")

    @field_validator("match", "exclude")
    @classmethod
    def _patterns_compile(cls, value: dict[str, str]) -> dict[str, str]:
        for attribute, pattern in value.items():
            if attribute not in ATTRIBUTES:
                raise ValueError(f"attribute {attribute!r} is not one of {', '.join(ATTRIBUTES)}")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern for {attribute} {pattern!r} does not compile: {exc}") from None
        return value

    @model_validator(mode="after")
    def _suffix_fits(self) -> MappingRule:
        if not self.match:
            raise ValueError("a rule needs at least one pattern in `match`")
        if self.suffix not in _SUFFIXES[self.datatype]:
            raise ValueError(
                f"suffix {self.suffix!r} is not one of {sorted(_SUFFIXES[self.datatype])} for {self.datatype}"
            )
        return self

    def apply(self, attributes: Mapping[str, str]) -> dict[str, str] | None:
        """The entities found (``task``/``acq``) if the rule matches, else ``None``."""
        groups: dict[str, str] = {}
        for attribute, pattern in self.match.items():
            found = re.search(pattern, attributes.get(attribute, "") or "")
            if found is None:
                return None
            groups.update({k: v for k, v in found.groupdict().items() if v})
        for attribute, pattern in self.exclude.items():
            if re.search(pattern, attributes.get(attribute, "") or ""):
                return None
        entities: dict[str, str] = {}
        for name in ("task", "acq"):
            value = groups.get(name) or getattr(self, name)
            if value:
                entities[name] = bids_label(value)
        return entities


_LOCALIZER = r"(?i)localizer|scout|survey|\bloc\b|calibration"
_DERIVED = {"ImageType": r"(?i)\b(DERIVED|SECONDARY)\b"}

DEFAULT_RULES: tuple[MappingRule, ...] = tuple(
    MappingRule.model_validate(r)
    for r in [
        {
            "match": {"Modality": "^MR$", "SeriesDescription": r"(?i)flair"},
            "exclude": _DERIVED,
            "datatype": "anat",
            "suffix": "FLAIR",
        },
        {
            "match": {"Modality": "^MR$", "SeriesDescription": r"(?i)(\bbold\b|fmri|\bepi\b.*\brest)"},
            "exclude": {**_DERIVED, "SeriesDescription": r"(?i)sbref"},
            "datatype": "func",
            "suffix": "bold",
        },
        {
            "match": {"Modality": "^MR$", "SeriesDescription": r"(?i)t2\s*\*|t2star|swi|\bgre\b"},
            "exclude": _DERIVED,
            "datatype": "anat",
            "suffix": "T2starw",
        },
        {
            "match": {
                "Modality": "^MR$",
                "SeriesDescription": r"(?i)(^|[^a-z0-9])t2(w|[^a-z0-9*]|$)|t2[-_ ]?(tse|space|weighted)",
            },
            "exclude": _DERIVED,
            "datatype": "anat",
            "suffix": "T2w",
        },
        {
            "match": {
                "Modality": "^MR$",
                "SeriesDescription": r"(?i)(^|[^a-z0-9])t1(w|[^a-z0-9]|$)|mp-?rage|spgr|bravo|t1[-_ ]?(tfe|weighted)",
            },
            "exclude": {**_DERIVED, "SeriesDescription": r"(?i)\+c|gad|post[-_ ]?contrast"},
            "datatype": "anat",
            "suffix": "T1w",
        },
    ]
)
#: Task label of BOLD series whose description names no ``task-<label>``.
_TASK_FROM_TEXT = re.compile(r"(?i)task[-_ ]?(?P<task>[a-z0-9]+)|(?P<rest>\brest(ing)?\b)")


@dataclass(frozen=True)
class SeriesMapping:
    """Where a series goes: ``<datatype>/sub-X_ses-Y[_task-][_acq-][_run-]_<suffix>``."""

    datatype: str
    suffix: str
    entities: dict[str, str]
    rule_index: int


@dataclass(frozen=True)
class Unmapped:
    """A series left out, with the reason written to the report."""

    reason: str


def map_series(attributes: Mapping[str, str], rules: Sequence[MappingRule]) -> SeriesMapping | Unmapped:
    """The first rule that matches, or why none applies. Localizers and non-MR never map."""
    modality = (attributes.get("Modality") or "").upper()
    if modality in _NOT_IMAGES:
        return Unmapped(f"modality {modality} is not an image series")
    if modality == "CT":
        return Unmapped("CT is not part of BIDS 1.10")
    if modality != "MR":
        return Unmapped(f"modality {modality or '(none)'} is not supported by this export (MR only)")
    if re.search(_LOCALIZER, attributes.get("SeriesDescription", "") or ""):
        return Unmapped("localizer/scout series")
    for index, rule in enumerate(rules):
        entities = rule.apply(attributes)
        if entities is None:
            continue
        if rule.datatype == "func" and "task" not in entities:
            found = _TASK_FROM_TEXT.search(attributes.get("SeriesDescription", "") or "")
            if found is None:
                return Unmapped(
                    f"rule {index} maps to func/{rule.suffix} but no task label is known (BIDS requires task-)"
                )
            entities["task"] = bids_label(found.group("task") or "rest")
        return SeriesMapping(rule.datatype, rule.suffix, entities, index)
    return Unmapped("no mapping rule matches")


def load_rules(rules: Sequence[Mapping[str, Any]] = (), rules_file: str | Path = "") -> tuple[MappingRule, ...]:
    """The configured rules (file wins over the inline list), or :data:`DEFAULT_RULES`."""
    source = "COHORTSTREAM_BIDS_MAPPING_RULES"
    raw: Any = list(rules)
    if rules_file:
        source = str(rules_file)
        try:
            raw = json.loads(Path(rules_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MappingRuleError(f"mapping rules file {rules_file}: {exc}") from exc
    if not raw:
        return DEFAULT_RULES
    if not isinstance(raw, list):
        raise MappingRuleError(f"mapping rules in {source} must be a JSON list")
    parsed = []
    for index, item in enumerate(raw):
        try:
            parsed.append(MappingRule.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'rule'}: {e['msg']}" for e in exc.errors())
            raise MappingRuleError(f"mapping rule {index} in {source}: {problems}") from None
    return tuple(parsed)
