"""Pluggable segmentation models: what each one applies to, how it is built and loaded.

A :class:`ModelSpec` is everything the worker needs to know about a model apart from its
weights: which series it applies to (modality, body part), the preprocessing that
training used (so inference uses the very same transform), the network, the sliding
window size and the label map with coded concepts that go into the DICOM SEG. Weights
live outside the code and are found through settings (:func:`model_path`), so a site
can swap a model without a release.

Loading accepts a TorchScript file (``.ts``/``.torchscript``), a state-dict file
(``.pt``/``.pth``) for the spec's network, or a MONAI bundle directory
(``models/model.ts`` or ``models/model.pt``; with a state dict and no network in the
spec, the bundle's ``network_def`` from ``configs/inference.json|yaml``). A model whose
weights ship inside an installed Python package (:class:`PackagedWeights`, e.g. the
brain-extraction model of :mod:`consumers.annotation.brain`) is loaded from that
package only, after a sha256 check of every file: a changed file is refused, and
nothing is ever downloaded.

torch and MONAI are imported only when a network is built or loaded: the registry, the
specs and :func:`select_model` work without the ``annotation`` extra, so the API can
describe the models (MONAI Label's ``/info``) and the BIDS export can read SEGs on a
machine without torch.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from consumers.annotation.applicability import SeriesFacts, SeriesRule
from consumers.annotation.errors import ModelLoadError

if TYPE_CHECKING:
    import torch
    from monai.transforms import Compose

    from cohortstream.settings import Settings

__all__ = [
    "BUNDLED_WEIGHTS_DIR",
    "DEFAULT_MODEL_NAME",
    "LoadedModel",
    "ModelRegistry",
    "ModelSelection",
    "ModelSpec",
    "PackagedFile",
    "PackagedWeights",
    "Prediction",
    "SegmentDefinition",
    "default_registry",
    "load_model",
    "model_path",
    "packaged_files",
    "phantom_preprocessing",
    "phantom_unet",
    "select_model",
]

logger = logging.getLogger(__name__)

#: Where ``python -m consumers.annotation.train_demo`` writes, and where the committed weights live.
BUNDLED_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL_NAME = "phantom-sphere-unet"


@dataclass(frozen=True)
class SegmentDefinition:
    """One output label of a model and the coded concepts that describe it in a SEG."""

    number: int
    label: str
    property_category: Code
    property_type: Code
    #: The range of volumes (mL) a correct segment can have; outside it the suggestion is
    #: flagged ``implausible`` for review. None: no check.
    plausible_volume_ml: tuple[float, float] | None = None


@dataclass(frozen=True)
class PackagedFile:
    """One weights file inside an installed distribution, with the sum it must have."""

    key: str
    #: Path relative to the distribution's install root, as in its RECORD.
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class PackagedWeights:
    """Weights that ship inside an installed Python distribution (a wheel), never in this
    repository and never downloaded: the distribution must be installed at exactly
    ``version`` and every file must match its pinned sha256."""

    distribution: str
    version: str
    files: tuple[PackagedFile, ...]


@dataclass(frozen=True)
class Prediction:
    """What a model's own predictor returns: a label map in the volume's (slice, row,
    column) order and the uncertainty in [0, 1] (mean normalised entropy over the
    predicted foreground)."""

    labels: np.ndarray
    uncertainty: float


#: A model-specific inference path: (loaded model, volume array, LPS affine of the
#: (slice, row, column) index, use mixed precision) → Prediction.
Predictor = Callable[["LoadedModel", np.ndarray, np.ndarray, bool], Prediction]


@dataclass(frozen=True)
class ModelSpec:
    """A model without its weights: what it applies to (:class:`SeriesRule`), how it is
    built, run and described in a SEG."""

    name: str
    version: str
    rule: SeriesRule
    segments: tuple[SegmentDefinition, ...]
    #: Builds the network; None when the weights carry it (TorchScript, bundle network_def).
    network_factory: Callable[[], torch.nn.Module] | None
    #: Builds the transform applied to a channel-first (1, slices, rows, columns) array
    #: (sliding-window models; a model with its own ``predictor`` preprocesses there).
    preprocessing: Callable[[], Compose] | None
    roi_size: tuple[int, int, int]
    #: File name of the weights inside a models directory.
    weights_file: str
    #: Coded algorithm family for the SEG's Algorithm Identification (CID 7162).
    family: Code = field(default=codes.cid7162.ArtificialIntelligence)
    description: str = ""
    #: Weights shipped in an installed package (checked by sha256) instead of a file here.
    packaged: PackagedWeights | None = None
    #: The model's own inference path; None: MONAI sliding window over ``network``.
    predictor: Predictor | None = None
    #: Licence of the weights, for the README's table and the MONAI Label ``/info``.
    weights_license: str = ""

    @property
    def modalities(self) -> frozenset[str]:
        """The modalities the model applies to (upper case)."""
        return self.rule.modalities

    @property
    def body_parts(self) -> frozenset[str] | None:
        """The BodyPartExamined values that make it apply (None: any)."""
        return self.rule.body_parts

    def applies_to(self, facts: SeriesFacts) -> tuple[bool, str]:
        """Whether the model is meant for such a series, and why not (decided from
        metadata only: the event and the views, before any pixel is fetched)."""
        ok, why = self.rule.decide(facts)
        if ok:
            return True, f"{self.name} {self.version} applies: {why}"
        return False, f"{self.name}: {why}"


class ModelRegistry:
    """Named model specs, in registration order (the first that applies wins)."""

    def __init__(self, specs: tuple[ModelSpec, ...] = ()) -> None:
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: ModelSpec) -> None:
        """Add a spec; a second spec with the same name is a mistake, not an override."""
        if spec.name in self._specs:
            raise ValueError(f"a model named {spec.name!r} is already registered")
        self._specs[spec.name] = spec

    def get(self, name: str) -> ModelSpec:
        """The spec called ``name``; KeyError names the unknown model."""
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"no model named {name!r}; known: {sorted(self._specs)}") from None

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def names(self) -> list[str]:
        return list(self._specs)


@dataclass(frozen=True)
class ModelSelection:
    """The outcome of :func:`select_model`: a spec, or None and the reason to skip the series."""

    model: ModelSpec | None
    reason: str

    def __bool__(self) -> bool:
        return self.model is not None


def select_model(
    registry: ModelRegistry,
    facts: SeriesFacts,
    model_name: str | None = None,
) -> ModelSelection:
    """Pick the model for a series from its metadata. With ``model_name`` (a manual
    request) only that model is considered; otherwise the first registered model that
    applies."""
    if model_name is not None:
        try:
            candidates = [registry.get(model_name)]
        except KeyError as exc:
            return ModelSelection(None, str(exc.args[0]))
    else:
        candidates = list(registry)
    if not candidates:
        return ModelSelection(None, "no model is registered")
    reasons = []
    for spec in candidates:
        ok, reason = spec.applies_to(facts)
        if ok:
            return ModelSelection(spec, reason)
        reasons.append(reason)
    return ModelSelection(None, "no model applies: " + "; ".join(reasons))


# --- the default model -----------------------------------------------------------------


def phantom_unet() -> torch.nn.Module:
    """The demo network: a small 3D UNet (about 80 k parameters, well under 1 MB)."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        channels=(8, 16, 32),
        strides=(2, 2),
        num_res_units=1,
    )


def phantom_preprocessing() -> Compose:
    """Map the volume's 25th/75th percentiles to 0/1 (no clipping).

    Invariant to the linear Rescale Slope/Intercept mapping and to the stored-value range,
    so a DICOM round trip does not change what the network sees. Percentiles rather than
    mean/std (z-score): the quartiles are set by the background, which dominates every
    volume, so the scale does not move with how much of the volume the objects fill (a
    z-score trained on small volumes gave false positives on large ones)."""
    from monai.transforms import Compose, EnsureType, ScaleIntensityRangePercentiles

    return Compose(
        [
            EnsureType(data_type="numpy", dtype="float32"),
            ScaleIntensityRangePercentiles(lower=25, upper=75, b_min=0.0, b_max=1.0, clip=False, channel_wise=True),
        ]
    )


PHANTOM_SPEC = ModelSpec(
    name=DEFAULT_MODEL_NAME,
    version="1.0.0",
    rule=SeriesRule(modalities=frozenset({"MR"}), body_parts=frozenset({"PHANTOM"})),
    segments=(
        SegmentDefinition(
            number=1,
            label="Sphere",
            property_category=codes.SCT.MorphologicallyAbnormalStructure,
            property_type=codes.SCT.Mass,
        ),
    ),
    network_factory=phantom_unet,
    preprocessing=phantom_preprocessing,
    roi_size=(48, 48, 48),
    weights_file=f"{DEFAULT_MODEL_NAME}.pt",
    description="Bright spheres in synthetic MR phantoms (demo model, trained by train_demo).",
)


def default_registry() -> ModelRegistry:
    """The models this build knows: the demo phantom model, then brain extraction."""
    from consumers.annotation.brain import BRAIN_SPEC

    return ModelRegistry((PHANTOM_SPEC, BRAIN_SPEC))


# --- finding and loading weights -------------------------------------------------------


def packaged_files(weights: PackagedWeights) -> dict[str, Path]:
    """The installed files of ``weights`` by key, each checked against its pinned sha256.

    Raises :class:`ModelLoadError` when the distribution is missing or another version,
    or a file is missing or changed: such weights are refused, never replaced by a
    download.
    """
    try:
        dist = metadata.distribution(weights.distribution)
    except metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the weights ship in the Python package {weights.distribution}=={weights.version}, which is not "
            "installed (install cohortstream's 'annotation' extra)"
        ) from None
    if dist.version != weights.version:
        raise ModelLoadError(
            f"{weights.distribution} {dist.version} is installed, but the pinned weights are those of "
            f"{weights.version}: install {weights.distribution}=={weights.version}"
        )
    found: dict[str, Path] = {}
    for item in weights.files:
        path = Path(str(dist.locate_file(item.path)))
        verify_sha256(path, item.sha256, item.size)
        found[item.key] = path
    return found


def verify_sha256(path: Path, expected: str, size: int | None = None) -> None:
    """Refuse a weights file whose size or sha256 differs from the pinned one."""
    try:
        actual_size = path.stat().st_size
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: weights file not found") from None
    if size is not None and actual_size != size:
        raise ModelLoadError(f"{path}: {actual_size} bytes, expected {size}: the weights file was changed; refused")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ModelLoadError(
            f"{path}: sha256 {digest.hexdigest()} differs from the pinned {expected}: the weights file was changed; refused"
        )


def model_path(spec: ModelSpec, settings: Settings | None = None) -> Path:
    """Where the weights of ``spec`` are: ``annotation_model_paths[name]``, else
    ``annotation_models_dir/<name>/`` (a bundle) or ``annotation_models_dir/<weights_file>``,
    else the weights shipped in this package. A model with :class:`PackagedWeights` is
    always loaded from its installed package (a path in the settings is ignored)."""
    if spec.packaged is not None:
        dist_root = _distribution_root(spec.packaged.distribution)
        return dist_root if dist_root is not None else Path(spec.packaged.distribution)
    if settings is not None:
        explicit = settings.annotation_model_paths.get(spec.name)
        if explicit is not None:
            return Path(explicit)
        if settings.annotation_models_dir:
            base = Path(settings.annotation_models_dir)
            if (base / spec.name).is_dir():
                return base / spec.name
            return base / spec.weights_file
    return BUNDLED_WEIGHTS_DIR / spec.weights_file


def _distribution_root(name: str) -> Path | None:
    try:
        return Path(str(metadata.distribution(name).locate_file("")))
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class LoadedModel:
    """A spec with its network(s) in eval mode on ``device``; ``networks`` holds every
    network of a model with several (by the key of its packaged file), ``network`` the
    main one."""

    spec: ModelSpec
    network: torch.nn.Module
    path: Path
    device: torch.device
    networks: Mapping[str, torch.nn.Module] = field(default_factory=dict)
    #: Model-specific configuration (e.g. a parsed bundle config), built once per process.
    config: Any = None


def _bundle_network(bundle: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    for name in ("inference.json", "inference.yaml", "inference.yml"):
        config = bundle / "configs" / name
        if config.is_file():
            parser = ConfigParser()
            parser.read_config(str(config))
            network: torch.nn.Module = parser.get_parsed_content("network_def")
            return network
    raise ModelLoadError(f"{bundle}: the model has no network in its spec and the bundle has no configs/inference.json")


def _load_state_dict(network: torch.nn.Module, file: Path) -> torch.nn.Module:
    import torch

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/… for corrupt files
        raise ModelLoadError(f"{file}: cannot read state dict: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"{file}: weights do not fit the network: {exc}") from exc
    return network


def _load_torchscript(file: Path) -> torch.nn.Module:
    import torch

    try:
        module: torch.nn.Module = torch.jit.load(str(file), map_location="cpu")  # type: ignore[no-untyped-call]
        return module
    except Exception as exc:  # torch.jit raises many types
        raise ModelLoadError(f"{file}: cannot load TorchScript: {exc}") from exc


def load_model(spec: ModelSpec, path: Path | str | None = None, device: torch.device | str = "cpu") -> LoadedModel:
    """Load the weights at ``path`` (default: the bundled ones) for ``spec`` onto ``device``.

    A model with :class:`PackagedWeights` ignores ``path``: its TorchScript files come
    from the installed package, each checked against its pinned sha256 first."""
    import torch

    if spec.packaged is not None:
        return _load_packaged(spec, spec.packaged, torch.device(device))
    path = Path(path) if path is not None else BUNDLED_WEIGHTS_DIR / spec.weights_file
    if path.is_dir():
        if (path / "models" / "model.ts").is_file():
            network = _load_torchscript(path / "models" / "model.ts")
        elif (path / "models" / "model.pt").is_file():
            base = spec.network_factory() if spec.network_factory is not None else _bundle_network(path)
            network = _load_state_dict(base, path / "models" / "model.pt")
        elif (path / spec.weights_file).is_file():
            network = _load_state_dict(_require_factory(spec, path)(), path / spec.weights_file)
        else:
            raise ModelLoadError(
                f"{path}: no models/model.ts, models/model.pt or {spec.weights_file} in this directory"
            )
    elif path.is_file():
        if path.suffix in {".ts", ".torchscript"}:
            network = _load_torchscript(path)
        else:
            network = _load_state_dict(_require_factory(spec, path)(), path)
    else:
        raise ModelLoadError(
            f"{path}: weights of model {spec.name} not found (train them with "
            "`python -m consumers.annotation.train_demo` or set COHORTSTREAM_ANNOTATION_MODEL_PATHS)"
        )
    torch_device = torch.device(device)
    network = network.to(torch_device).eval()
    logger.info(
        "model loaded",
        extra={"model": spec.name, "model_version": spec.version, "path": str(path), "device": str(torch_device)},
    )
    return LoadedModel(spec=spec, network=network, path=path, device=torch_device)


def _load_packaged(spec: ModelSpec, weights: PackagedWeights, device: torch.device) -> LoadedModel:
    files = packaged_files(weights)
    networks = {key: _load_torchscript(path).to(device).eval() for key, path in files.items()}
    main = spec.weights_file if spec.weights_file in networks else next(iter(networks))
    logger.info(
        "model loaded",
        extra={
            "model": spec.name,
            "model_version": spec.version,
            "path": str(files[main]),
            "device": str(device),
            "sha256_checked": len(files),
        },
    )
    return LoadedModel(spec=spec, network=networks[main], path=files[main], device=device, networks=networks)


def _require_factory(spec: ModelSpec, path: Path) -> Callable[[], torch.nn.Module]:
    if spec.network_factory is None:
        raise ModelLoadError(f"{path}: a state dict needs a network, and model {spec.name} defines none")
    return spec.network_factory
