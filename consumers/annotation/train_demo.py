"""Train the default demo model on synthetic sphere phantoms, reproducibly, on a CPU.

Why a trained demo model at all: the end-to-end path (DICOM in, SEG out) must be checked
against a truth, and a real pretrained model would need network access and hundreds of
megabytes. This trains ``phantom-sphere-unet`` (a 3D UNet of about 80 k parameters) in a
few minutes on two cores and writes, for committing:

- ``<model name>.pt``: the state dict (loaded by :func:`consumers.annotation.models.load_model`);
- ``training_config.json``: every knob, so the run can be repeated;
- ``metrics.json``: validation Dice on held-out phantoms (seeds never used in training,
  evaluated through the production :func:`consumers.annotation.inference.predict`),
  the loss curve summary, the seed, library versions and the wall time.

Determinism: seeded numpy/torch generators, ``torch.use_deterministic_algorithms(True)``
and a fixed thread count; the same command with the same versions and ``--threads``
gives the same weights.

Run: ``python -m consumers.annotation.train_demo --out consumers/annotation/weights/``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from monai.losses import DiceCELoss

from consumers.annotation.inference import predict
from consumers.annotation.metrics import dice
from consumers.annotation.models import BUNDLED_WEIGHTS_DIR, PHANTOM_SPEC, LoadedModel
from consumers.annotation.phantoms import NOISE_MAX, phantom_volume

__all__ = ["TRAIN_SHAPES", "VALIDATION_SHAPES", "main", "train"]

logger = logging.getLogger(__name__)

#: Volume shapes (slices, rows, columns) drawn for training, so the model sees several sizes.
TRAIN_SHAPES: tuple[tuple[int, int, int], ...] = (
    (32, 64, 64),
    (48, 48, 48),
    (40, 64, 56),
    (64, 64, 64),
    (64, 96, 96),
    (64, 128, 128),
)
#: Held-out validation shapes; the first is the unit test's phantom shape, the last two are larger
#: than any training volume (the object fraction, and so the intensity statistics, differ).
VALIDATION_SHAPES: tuple[tuple[int, int, int], ...] = ((32, 64, 64), (48, 64, 64), (64, 128, 128), (96, 192, 192))
_TRAIN_SEED_BASE = 10_000
_VAL_SEED_BASE = 90_000


def _crop(image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    starts = [int(rng.randint(0, s - size + 1)) for s in image.shape[1:]]
    window = (slice(None), *tuple(slice(st, st + size) for st in starts))
    return image[window], mask[window]


def train(
    out: Path,
    *,
    seed: int = 0,
    iterations: int = 1000,
    batch_size: int = 4,
    crop: int = 32,
    learning_rate: float = 3e-3,
    train_volumes: int = 32,
    val_volumes: int = 8,
    threads: int = 2,
) -> dict[str, Any]:
    """Train, validate and write the three outputs to ``out``; returns the metrics."""
    started = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.RandomState(seed)
    spec = PHANTOM_SPEC
    assert spec.preprocessing is not None  # the demo model is a sliding-window one
    preprocess = spec.preprocessing()

    data = []
    for i in range(train_volumes):
        shape = TRAIN_SHAPES[i % len(TRAIN_SHAPES)]
        image, mask = phantom_volume(_TRAIN_SEED_BASE + seed * 1000 + i, shape)
        data.append((np.asarray(preprocess(image[None]), dtype=np.float32), mask[None].astype(np.int64)))

    network = spec.network_factory()  # type: ignore[misc]
    n_params = sum(p.numel() for p in network.parameters())
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations)

    losses: list[float] = []
    network.train()
    for step in range(iterations):
        picks = rng.randint(0, len(data), size=batch_size)
        crops = [_crop(data[p][0], data[p][1], crop, rng) for p in picks]
        images = torch.from_numpy(np.stack([c[0] for c in crops]))
        masks = torch.from_numpy(np.stack([c[1] for c in crops]))
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(network(images), masks)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == iterations - 1:
            logger.info("training", extra={"step": step, "loss": round(losses[-1], 4)})
            print(f"step {step:4d} loss {losses[-1]:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    train_s = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    weights = out / spec.weights_file
    torch.save(network.state_dict(), weights)

    network.eval()
    loaded = LoadedModel(spec=spec, network=network, path=weights, device=torch.device("cpu"))
    validation: list[dict[str, Any]] = []
    dices: list[float] = []
    for i in range(val_volumes):
        shape = VALIDATION_SHAPES[i % len(VALIDATION_SHAPES)]
        val_seed = _VAL_SEED_BASE + seed * 1000 + i
        image, mask = phantom_volume(val_seed, shape)
        # Same linear mapping a DICOM round trip applies (stored * slope + intercept), to check invariance.
        result = predict(loaded, image * 731.0 - 120.0, (1.5, 1.0, 1.0), cpu_threads=threads)
        dices.append(round(dice(result.labels, mask), 4))
        validation.append(
            {"seed": val_seed, "shape": list(shape), "dice": dices[-1], "uncertainty": round(result.uncertainty, 4)}
        )
    wall_s = time.perf_counter() - started

    def window_mean(values: list[float]) -> float:
        return round(float(np.mean(values)), 4)

    block = max(1, iterations // 10)
    config = {
        "model": {
            "name": spec.name,
            "version": spec.version,
            "network": "monai.networks.nets.UNet",
            "network_args": {
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 2,
                "channels": [8, 16, 32],
                "strides": [2, 2],
                "num_res_units": 1,
            },
            "parameters": n_params,
            "roi_size": list(spec.roi_size),
            "weights_file": spec.weights_file,
        },
        "preprocessing": "EnsureType(float32) + ScaleIntensityRangePercentiles(lower=25, upper=75, b_min=0, b_max=1, clip=False)",
        "data": {
            "generator": "consumers.annotation.phantoms.phantom_volume (monai.data.synthetic.create_test_image_3d, "
            f"num_seg_classes=1, noise_max={NOISE_MAX})",
            "train_volumes": train_volumes,
            "train_shapes": [list(s) for s in TRAIN_SHAPES],
            "train_seeds": [_TRAIN_SEED_BASE + seed * 1000, _TRAIN_SEED_BASE + seed * 1000 + train_volumes - 1],
            "val_volumes": val_volumes,
            "val_shapes": [list(s) for s in VALIDATION_SHAPES],
            "val_seeds": [_VAL_SEED_BASE + seed * 1000, _VAL_SEED_BASE + seed * 1000 + val_volumes - 1],
            "crop": crop,
        },
        "training": {
            "seed": seed,
            "iterations": iterations,
            "batch_size": batch_size,
            "optimizer": "Adam",
            "learning_rate": learning_rate,
            "schedule": "CosineAnnealingLR(T_max=iterations)",
            "loss": "DiceCELoss(to_onehot_y=True, softmax=True)",
            "threads": threads,
            "deterministic_algorithms": True,
        },
        "command": "python -m consumers.annotation.train_demo " + " ".join(sys.argv[1:])
        if sys.argv[1:]
        else "python -m consumers.annotation.train_demo",
    }
    metrics = {
        "model": spec.name,
        "model_version": spec.version,
        "seed": seed,
        "validation": {
            "dice_mean": round(float(np.mean(dices)), 4),
            "dice_min": round(float(np.min(dices)), 4),
            "per_volume": validation,
        },
        "loss": {
            "first": round(losses[0], 4),
            "last": round(losses[-1], 4),
            "first_10pct_mean": window_mean(losses[:block]),
            "last_10pct_mean": window_mean(losses[-block:]),
            "min": round(min(losses), 4),
            "curve_block_means": [window_mean(losses[i : i + block]) for i in range(0, iterations, block)],
        },
        "weights": {
            "file": weights.name,
            "bytes": weights.stat().st_size,
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "monai": monai.__version__,
            "numpy": np.__version__,
        },
        "threads": threads,
        "train_s": round(train_s, 1),
        "wall_s": round(wall_s, 1),
    }
    (out / "training_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 when validation Dice < --min-dice)."""
    parser = argparse.ArgumentParser(
        prog="python -m consumers.annotation.train_demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", type=Path, default=BUNDLED_WEIGHTS_DIR, help="output directory (default: the bundled weights)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=32, help="edge of the random training crops (multiple of 4)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train-volumes", type=int, default=32)
    parser.add_argument("--val-volumes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (results depend on it)")
    parser.add_argument("--min-dice", type=float, default=0.0, help="fail when the mean validation Dice is lower")
    args = parser.parse_args(argv)
    metrics = train(
        args.out,
        seed=args.seed,
        iterations=args.iterations,
        batch_size=args.batch_size,
        crop=args.crop,
        learning_rate=args.lr,
        train_volumes=args.train_volumes,
        val_volumes=args.val_volumes,
        threads=args.threads,
    )
    print(
        json.dumps(
            {
                "dice_mean": metrics["validation"]["dice_mean"],
                "dice_min": metrics["validation"]["dice_min"],
                "wall_s": metrics["wall_s"],
                "weights_bytes": metrics["weights"]["bytes"],
            }
        )
    )
    return 0 if metrics["validation"]["dice_mean"] >= args.min_dice else 1


if __name__ == "__main__":
    sys.exit(main())
