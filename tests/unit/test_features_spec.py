"""The feature spec is data: YAML or JSON, validated strictly, fingerprinted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cohortstream.features.spec import FeatureSpecError, default_spec, load_spec

SPEC = {
    "name": "study",
    "version": 3,
    "labs": {"most_frequent": 5, "statistics": ["count", "mean"]},
    "diagnoses": {"prefixes": ["I10"]},
    "questionnaires": [{"instrument": "baseline", "event_name": "baseline_arm_1"}],
    "imaging": {"modalities": ["MR"], "measurements": [{"name": "brain_volume", "model": "m", "segment": "Brain"}]},
}


def test_yaml_and_json_give_the_same_spec_and_fingerprint(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "s.json").write_text(json.dumps(SPEC))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SPEC))
    a, b = load_spec(tmp_path / "s.json"), load_spec(tmp_path / "s.yaml")
    assert a == b and a.sha256 == b.sha256 and a.version == 3
    changed = {**SPEC, "diagnoses": {"prefixes": ["I10", "E11"]}}
    (tmp_path / "c.json").write_text(json.dumps(changed))
    assert load_spec(tmp_path / "c.json").sha256 != a.sha256


def test_default_spec_loads() -> None:
    spec = default_spec()
    assert spec.labs is not None and spec.labs.codes and spec.imaging is not None
    assert load_spec(None) == spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 0}, "version"),
        ({"labs": {"codes": ["1"], "most_frequent": 3}}, "labs: Value error, give exactly one"),
        ({"labs": {"codes": ["1"], "statistics": ["median"]}}, "labs.statistics.0"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
        ({"imaging": {"measurements": [{"name": "Bad Name", "model": "m", "segment": "s"}]}}, "measurements.0.name"),
    ],
)
def test_bad_spec_is_refused_naming_file_and_field(tmp_path: Path, change: dict[str, object], message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**SPEC, **change}))
    with pytest.raises(FeatureSpecError, match=rf"feature spec {path}: .*{message}"):
        load_spec(path)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(FeatureSpecError, match="cannot read it"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "x.yaml").write_text("name: [unclosed")
    with pytest.raises(FeatureSpecError, match="not valid YAML"):
        load_spec(tmp_path / "x.yaml")
    (tmp_path / "y.json").write_text("[1, 2]")
    with pytest.raises(FeatureSpecError, match="top level must be a mapping"):
        load_spec(tmp_path / "y.json")
