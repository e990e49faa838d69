"""Run a segmentation model over a volume: label map, per-segment sizes, uncertainty.

Inference blocks for seconds to minutes, so the async worker must not call it on its
event loop: :func:`infer_volume` is a module-level function of plain, picklable
arguments for ``loop.run_in_executor`` with a ``ProcessPoolExecutor`` (it loads and
caches the model once per process); :func:`predict` is the same for a model already in
hand.

Device: ``cuda`` batches ``sw_batch_size`` windows and uses mixed precision
(``torch.autocast`` float16); ``cpu`` limits torch to ``cpu_threads`` threads so the
worker shares the machine politely.

Uncertainty: the mean normalised softmax entropy ``-Σ p log p / log C`` (0 = certain,
1 = uniform over the C classes) over the voxels predicted as foreground, or over the whole
volume when nothing is predicted. Low values mean the model was sure of what it drew.

A model with its own ``predictor`` (several networks, a fixed input size: the brain
model) runs that instead of the sliding window; sizes, volumes and the plausibility
check are the same for every model.

Plausibility: a segment whose volume falls outside its definition's
``plausible_volume_ml`` makes the result ``implausible`` (in ``flags``, with the reason in
``flag_reasons``). Models return a confident mask for anything that looks like their
object (a brain extractor finds a "brain" in a phantom); the flag puts such a suggestion
in front of a person instead of letting it pass as a good one.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

from consumers.annotation.models import LoadedModel, ModelSpec, default_registry, load_model

if TYPE_CHECKING:
    from cohortstream.settings import Settings

__all__ = [
    "IMPLAUSIBLE",
    "InferenceResult",
    "SegmentStats",
    "infer_volume",
    "options_from_settings",
    "plausibility",
    "predict",
    "resolve_device",
]

#: The flag of a suggestion whose segment volume is outside the model's plausible range.
IMPLAUSIBLE = "implausible"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentStats:
    """Size of one predicted segment."""

    segment_number: int
    label: str
    voxel_count: int
    volume_ml: float


@dataclass(frozen=True)
class InferenceResult:
    """A label map in the volume's (slice, row, column) order, 0 = background."""

    labels: np.ndarray
    segments: tuple[SegmentStats, ...]
    uncertainty: float
    device: str
    inference_s: float
    #: ``("implausible",)`` when a segment failed its plausibility check, else empty.
    flags: tuple[str, ...] = ()
    #: Why each flag was raised, in words for the reviewer.
    flag_reasons: tuple[str, ...] = ()


def plausibility(spec: ModelSpec, segments: Sequence[SegmentStats]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(flags, reasons)``: ``implausible`` when a segment's volume lies outside its
    definition's ``plausible_volume_ml`` range (bounds included as plausible)."""
    ranges = {seg.number: seg.plausible_volume_ml for seg in spec.segments}
    reasons = []
    for stats in segments:
        bounds = ranges.get(stats.segment_number)
        if bounds is None:
            continue
        low, high = bounds
        if not low <= stats.volume_ml <= high:
            reasons.append(
                f"{stats.label} volume {stats.volume_ml:.1f} mL is outside the plausible {low:g}–{high:g} mL"
            )
    return ((IMPLAUSIBLE,) if reasons else ()), tuple(reasons)


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error, not a silent fallback."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("annotation_device is 'cuda' but torch sees no CUDA device")
    return torch.device(requested)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"


def predict(
    model: LoadedModel,
    array: np.ndarray,
    spacing: Sequence[float],
    *,
    affine: np.ndarray | None = None,
    sw_batch_size: int = 4,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    amp: bool = True,
    cpu_threads: int | None = None,
) -> InferenceResult:
    """Segment ``array`` (slice, row, column; real-world values) with ``model``.

    ``affine`` (index → LPS mm, :class:`~consumers.annotation.volume.SeriesVolume`'s) is
    needed by models that care about anatomical orientation (the brain model); without
    it the axes are taken as they come, with ``spacing``."""
    device = model.device
    if device.type == "cpu" and cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    started = time.perf_counter()
    if model.spec.predictor is not None:
        grid = np.diag([*(float(s) for s in spacing), 1.0]) if affine is None else np.asarray(affine, dtype=float)
        prediction = model.spec.predictor(model, np.asarray(array, dtype=np.float32), grid, amp)
        labels, uncertainty = prediction.labels.astype(np.uint8), prediction.uncertainty
        n_classes = 1 + max((seg.number for seg in model.spec.segments), default=0)
    else:
        labels, uncertainty, n_classes = _sliding_window(model, array, sw_batch_size, roi_size, overlap, amp)
    elapsed = time.perf_counter() - started

    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=n_classes)
    segments = tuple(
        SegmentStats(
            segment_number=seg.number,
            label=seg.label,
            voxel_count=int(counts[seg.number]) if seg.number < counts.size else 0,
            volume_ml=round((int(counts[seg.number]) if seg.number < counts.size else 0) * voxel_ml, 6),
        )
        for seg in model.spec.segments
    )
    logger.debug(
        "inference done",
        extra={
            "model": model.spec.name,
            "shape": list(labels.shape),
            "device": str(device),
            "inference_s": round(elapsed, 3),
        },
    )
    flags, reasons = plausibility(model.spec, segments)
    return InferenceResult(
        labels=labels,
        segments=segments,
        uncertainty=uncertainty,
        device=_device_name(device),
        inference_s=elapsed,
        flags=flags,
        flag_reasons=reasons,
    )


def _sliding_window(
    model: LoadedModel,
    array: np.ndarray,
    sw_batch_size: int,
    roi_size: Sequence[int] | None,
    overlap: float,
    amp: bool,
) -> tuple[np.ndarray, float, int]:
    """MONAI's sliding-window inferer over one network: (labels, uncertainty, classes)."""
    device = model.device
    if model.spec.preprocessing is None:
        raise ValueError(f"model {model.spec.name} has neither preprocessing nor a predictor of its own")
    image = model.spec.preprocessing()(np.asarray(array, dtype=np.float32)[None])
    inputs = torch.as_tensor(np.asarray(image), dtype=torch.float32, device=device)[None]
    use_amp = amp and device.type == "cuda"
    inferer = SlidingWindowInferer(
        roi_size=tuple(roi_size or model.spec.roi_size),
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        mode="gaussian",
        padding_mode="replicate",
    )
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
        logits = inferer(inputs, model.network)
    with torch.inference_mode():
        probs = torch.softmax(torch.as_tensor(logits).float()[0], dim=0)
        labels_t = probs.argmax(dim=0)
        n_classes = int(probs.shape[0])
        entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=0) / math.log(n_classes)
        foreground = labels_t > 0
        region = entropy[foreground] if bool(foreground.any()) else entropy
        uncertainty = float(region.mean().clamp(0.0, 1.0))
        labels = labels_t.to(torch.uint8).cpu().numpy()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return labels, uncertainty, n_classes


@functools.lru_cache(maxsize=4)
def _cached_model(model_name: str, model_path: str | None, device: str) -> LoadedModel:
    spec = default_registry().get(model_name)
    return load_model(spec, Path(model_path) if model_path else None, resolve_device(device))


def infer_volume(
    array: np.ndarray,
    spacing: Sequence[float],
    model_name: str,
    model_path: str | None = None,
    *,
    affine: np.ndarray | None = None,
    device: str = "auto",
    cpu_threads: int = 1,
    sw_batch_size: int = 4,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    amp: bool = True,
) -> InferenceResult:
    """:func:`predict` with plain arguments, for an executor or a worker process; the model
    of the default registry called ``model_name`` is loaded once per process."""
    if device != "cuda":
        torch.set_num_threads(cpu_threads)
    model = _cached_model(model_name, model_path, device)
    return predict(
        model,
        array,
        spacing,
        affine=affine,
        sw_batch_size=sw_batch_size,
        roi_size=roi_size,
        overlap=overlap,
        amp=amp,
        cpu_threads=cpu_threads,
    )


def options_from_settings(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of :func:`infer_volume` that settings decide (all picklable)."""
    roi = list(settings.annotation_roi_size)
    if roi and (len(roi) != 3 or min(roi) < 1):
        raise ValueError(f"annotation_roi_size must be three positive integers, got {roi}")
    return {
        "device": settings.annotation_device,
        "cpu_threads": settings.annotation_cpu_threads,
        "sw_batch_size": settings.annotation_sw_batch_size,
        "roi_size": tuple(roi) if roi else None,
        "overlap": settings.annotation_overlap,
        "amp": settings.annotation_amp,
    }
