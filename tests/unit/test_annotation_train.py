"""The demo training entry point runs end to end and writes its three outputs."""

from __future__ import annotations

import json
from pathlib import Path

from consumers.annotation.models import PHANTOM_SPEC, load_model
from consumers.annotation.train_demo import main


def test_train_demo_writes_weights_config_and_metrics(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--iterations", "2", "--train-volumes", "2", "--val-volumes", "1", "--threads", "1"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    config = json.loads((tmp_path / "training_config.json").read_text())
    assert metrics["seed"] == config["training"]["seed"] == 0
    assert 0.0 <= metrics["validation"]["dice_mean"] <= 1.0
    assert {"torch", "monai", "numpy", "python"} <= set(metrics["versions"])
    assert metrics["weights"]["bytes"] <= 1_000_000
    load_model(PHANTOM_SPEC, tmp_path / PHANTOM_SPEC.weights_file)


def test_committed_metrics_meet_the_bar() -> None:
    weights = Path(__file__).resolve().parents[2] / "consumers" / "annotation" / "weights"
    metrics = json.loads((weights / "metrics.json").read_text())
    assert metrics["validation"]["dice_mean"] >= 0.85
    assert metrics["weights"]["bytes"] == (weights / PHANTOM_SPEC.weights_file).stat().st_size
