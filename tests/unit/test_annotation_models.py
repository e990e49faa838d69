"""Model registry, selection with reasons, loading from files/bundles/TorchScript, Dice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cohortstream.settings import Settings
from consumers.annotation.applicability import SeriesFacts
from consumers.annotation.brain import BRAIN_MODEL_NAME
from consumers.annotation.errors import ModelLoadError
from consumers.annotation.metrics import dice
from consumers.annotation.models import (
    BUNDLED_WEIGHTS_DIR,
    DEFAULT_MODEL_NAME,
    PHANTOM_SPEC,
    ModelRegistry,
    default_registry,
    load_model,
    model_path,
    select_model,
)


def test_default_registry_holds_the_demo_model_with_coded_segments() -> None:
    registry = default_registry()
    assert registry.names == [DEFAULT_MODEL_NAME, BRAIN_MODEL_NAME]
    spec = registry.get(DEFAULT_MODEL_NAME)
    assert [s.number for s in spec.segments] == [1]
    assert spec.segments[0].property_type.scheme_designator == "SCT"
    with pytest.raises(KeyError, match="no model named"):
        registry.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        ModelRegistry((spec, spec))


@pytest.mark.parametrize(
    ("modality", "body_part", "chosen", "reason"),
    [
        ("MR", "PHANTOM", DEFAULT_MODEL_NAME, "applies"),
        ("mr", "phantom", DEFAULT_MODEL_NAME, "applies"),
        ("CT", "PHANTOM", None, "modality CT"),
        ("MR", "HEAD", BRAIN_MODEL_NAME, "BodyPartExamined HEAD"),
        ("MR", "KNEE", None, "BodyPartExamined KNEE"),
        ("MR", None, None, "BodyPartExamined (missing)"),
        (None, None, None, "modality (missing)"),
    ],
)
def test_select_model_gives_a_model_or_the_reason(
    modality: str | None, body_part: str | None, chosen: str | None, reason: str
) -> None:
    selection = select_model(default_registry(), SeriesFacts(modality=modality, body_part_examined=body_part))
    assert (selection.model.name if selection.model else None) == chosen
    assert bool(selection) is (chosen is not None)
    assert reason in selection.reason


def test_select_model_by_name() -> None:
    phantom = SeriesFacts(modality="MR", body_part_examined="PHANTOM")
    assert select_model(default_registry(), phantom, DEFAULT_MODEL_NAME).model is PHANTOM_SPEC
    missing = select_model(default_registry(), phantom, "other")
    assert missing.model is None and "no model named 'other'" in missing.reason
    assert "no model is registered" in select_model(ModelRegistry(), phantom).reason
    # A manual request for the brain model on a phantom is refused, not run.
    refused = select_model(default_registry(), phantom, BRAIN_MODEL_NAME)
    assert refused.model is None and "BodyPartExamined PHANTOM" in refused.reason


def test_model_path_from_settings(tmp_path: Path) -> None:
    assert model_path(PHANTOM_SPEC) == BUNDLED_WEIGHTS_DIR / PHANTOM_SPEC.weights_file
    explicit = Settings(annotation_model_paths={DEFAULT_MODEL_NAME: tmp_path / "x.pt"})
    assert model_path(PHANTOM_SPEC, explicit) == tmp_path / "x.pt"
    (tmp_path / DEFAULT_MODEL_NAME).mkdir()
    assert model_path(PHANTOM_SPEC, Settings(annotation_models_dir=str(tmp_path))) == tmp_path / DEFAULT_MODEL_NAME


def _outputs(network: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.no_grad():
        return network(torch.rand(1, 1, 16, 16, 16))


def test_load_committed_weights_state_dict_bundle_and_torchscript(tmp_path: Path) -> None:
    loaded = load_model(PHANTOM_SPEC)
    assert not loaded.network.training
    reference = _outputs(loaded.network)
    assert (BUNDLED_WEIGHTS_DIR / PHANTOM_SPEC.weights_file).stat().st_size <= 1_000_000

    bundle = tmp_path / "bundle" / "models"
    bundle.mkdir(parents=True)
    torch.save(loaded.network.state_dict(), bundle / "model.pt")
    torch.testing.assert_close(_outputs(load_model(PHANTOM_SPEC, bundle.parent).network), reference)

    scripted = tmp_path / "model.ts"
    torch.jit.trace(loaded.network, torch.rand(1, 1, 16, 16, 16)).save(str(scripted))
    torch.testing.assert_close(_outputs(load_model(PHANTOM_SPEC, scripted).network), reference)


def test_load_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(PHANTOM_SPEC, tmp_path / "absent.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({"weight": torch.zeros(3)}, wrong)
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model(PHANTOM_SPEC, wrong)
    with pytest.raises(ModelLoadError, match="no models/model.ts"):
        load_model(PHANTOM_SPEC, tmp_path)


def test_dice() -> None:
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), np.uint8)
    assert dice(a, b) == 1.0
    a[:2] = 1
    b[1:3] = 1
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a * 2, b * 2, label=2) == pytest.approx(0.5)
    assert dice(a, b, label=3) == 1.0
    with pytest.raises(ValueError, match="shape"):
        dice(a, b[:2])


def test_inference_options_from_settings() -> None:
    from consumers.annotation.inference import options_from_settings

    options = options_from_settings(Settings(annotation_roi_size=[32, 64, 64], annotation_device="cpu"))
    assert options["roi_size"] == (32, 64, 64) and options["device"] == "cpu" and options["cpu_threads"] == 1
    assert options_from_settings(Settings())["roi_size"] is None
    with pytest.raises(ValueError, match="annotation_roi_size"):
        options_from_settings(Settings(annotation_roi_size=[32, 64]))
