"""The feature spec: which features a subject's document holds, as data (YAML or JSON).

The spec is versioned by the person who edits it (``version``) and fingerprinted by us
(``sha256`` of its canonical JSON); both go into every feature document, so a document
always says which definitions made it. Schema, field by field: ``docs/features.md``.
Strict when loading: an unknown key or a bad value is refused with a message that names
the file and the field.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cohortstream.errors import CohortStreamError

__all__ = [
    "LAB_STATISTICS",
    "DiagnosisSpec",
    "FeatureSpec",
    "FeatureSpecError",
    "ImagingSpec",
    "LabSpec",
    "MeasurementSpec",
    "QuestionnaireSpec",
    "default_spec",
    "load_spec",
]

LabStatistic = Literal["count", "first", "last", "min", "max", "mean", "std", "slope_per_day"]
LAB_STATISTICS: tuple[LabStatistic, ...] = ("count", "first", "last", "min", "max", "mean", "std", "slope_per_day")
"""HAIM's time-series statistics, in column order."""


class FeatureSpecError(CohortStreamError, ValueError):
    """A feature spec file is unreadable or invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LabSpec(_Strict):
    """Lab (and FHIR observation) codes: a fixed list, or the cohort's most frequent N."""

    codes: list[str] | None = Field(None, description="Lab codes (MIMIC itemid, LOINC, …) in column order.")
    most_frequent: int | None = Field(
        None, ge=1, le=1000, description="Instead of `codes`: the N codes with the most rows in the cohort."
    )
    statistics: list[LabStatistic] = Field(default_factory=lambda: list(LAB_STATISTICS))

    @model_validator(mode="after")
    def _one_way(self) -> LabSpec:
        if (self.codes is None) == (self.most_frequent is None):
            raise ValueError("give exactly one of 'codes' and 'most_frequent'")
        return self


class DiagnosisSpec(_Strict):
    """Indicator columns: 1 when the subject has a diagnosis code starting with the prefix."""

    prefixes: list[str] = Field(min_length=1, description="Code prefixes (ICD-10 `I10`, ICD-9 `401`, …).")

    @field_validator("prefixes")
    @classmethod
    def _no_blank(cls, value: list[str]) -> list[str]:
        if any(not p.strip() for p in value):
            raise ValueError("a prefix is empty")
        return value


class QuestionnaireSpec(_Strict):
    """One REDCap instrument's numeric and coded fields."""

    instrument: str = Field(min_length=1)
    event_name: str | None = Field(None, description="Only this event (longitudinal projects); default: any event.")
    fields: list[str] | None = Field(None, description="Only these fields; default: every numeric or coded field.")


class MeasurementSpec(_Strict):
    """A measurement taken from suggested or accepted annotations."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Column stem, e.g. `brain_volume`.")
    model: str = Field(min_length=1, description="The annotation model's name, e.g. `deepbet-brain`.")
    segment: str = Field(min_length=1, description="The segment label whose volume is taken, e.g. `brain`.")


class ImagingSpec(_Strict):
    """Series and study counts, per-modality series counts, annotation measurements."""

    modalities: list[str] = Field(default_factory=list, description="Modalities with a series-count column each.")
    measurements: list[MeasurementSpec] = Field(default_factory=list)


class FeatureSpec(_Strict):
    """The whole spec (see ``docs/features.md``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    version: int = Field(ge=1, description="Raise it whenever the definitions change.")
    demographics: bool = True
    labs: LabSpec | None = None
    diagnoses: DiagnosisSpec | None = None
    questionnaires: list[QuestionnaireSpec] = Field(default_factory=list)
    imaging: ImagingSpec | None = None

    @property
    def sha256(self) -> str:
        """Fingerprint of the definitions (canonical JSON), stored in every document."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def with_lab_codes(self, codes: list[str]) -> FeatureSpec:
        """The spec with ``most_frequent`` resolved to a fixed code list (what the documents use)."""
        if self.labs is None:
            return self
        return self.model_copy(update={"labs": LabSpec(codes=list(codes), statistics=list(self.labs.statistics))})


def _parse(text: str, source: str) -> Any:
    if source.endswith((".yaml", ".yml")):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise FeatureSpecError(f"feature spec {source}: not valid YAML: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FeatureSpecError(f"feature spec {source}: not valid JSON: {exc}") from exc


def spec_from_text(text: str, source: str) -> FeatureSpec:
    """Parse and validate; ``source`` names the file in messages and picks YAML (``.yaml``/``.yml``) or JSON."""
    data = _parse(text, source)
    if not isinstance(data, dict):
        raise FeatureSpecError(f"feature spec {source}: the top level must be a mapping")
    try:
        return FeatureSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors())
        raise FeatureSpecError(f"feature spec {source}: {problems}") from exc


def load_spec(path: Path | str | None) -> FeatureSpec:
    """The spec in ``path``; None: the packaged default (``default_spec.yaml``)."""
    if path is None or str(path) == "":
        return default_spec()
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise FeatureSpecError(f"feature spec {file}: cannot read it: {exc.strerror}") from exc
    return spec_from_text(text, str(file))


def default_spec() -> FeatureSpec:
    """The packaged spec: demographics, the MIMIC-IV chemistry and haematology labs the
    synthetic extracts carry, hypertension/diabetes prefixes, imaging counts and the
    brain-extraction model's volume."""
    text = resources.files("cohortstream.features").joinpath("default_spec.yaml").read_text(encoding="utf-8")
    return spec_from_text(text, "default_spec.yaml")
