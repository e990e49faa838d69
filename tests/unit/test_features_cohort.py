"""A generated MIMIC-IV cohort: the features the fold + compute path builds (the code the
stream and the rebuild run) equal, value by value, an independent pandas computation over
the generated CSV files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cohortstream.events import EhrRecord, Event
from cohortstream.features.spec import FeatureSpec, default_spec
from cohortstream.subjects import subject_id_for
from cohortstream.synthetic_ehr import write_mimic
from consumers.features.rebuild import build_documents, fold_into, resolved_spec
from producers.ehr.loader import load_extract
from tests.feature_expectations import compare_documents, expected_mimic_features


class _Collect:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish_many(self, items: Sequence[tuple[Event, str]]) -> object:
        self.events.extend(event for event, _ in items)
        return None


async def test_generated_cohort_matches_pandas(tmp_path: Path) -> None:
    extract = write_mimic(tmp_path / "mimic", seed=5, n_subjects=60, labs_per_admission=(5, 25))
    sink = _Collect()
    await load_extract(extract.root, sink)
    records = [e for e in sink.events if isinstance(e, EhrRecord)]
    assert len(records) > 1000
    spec = default_spec()
    assert spec.labs is not None and spec.labs.codes is not None and spec.diagnoses is not None
    inputs: dict[str, dict[str, object]] = {}
    fold_into(inputs, records)
    documents = build_documents(spec, inputs, {})
    expected = expected_mimic_features(extract.root, spec.labs.codes, spec.diagnoses.prefixes)
    key_of = {m: subject_id_for([f"ehr:mimic-iv|{m}"]) for m in expected}
    compared, problems = compare_documents(documents, expected, key_of)
    assert not problems, problems[:10]
    assert compared > 60 * 40 and len(documents) == 60


async def test_most_frequent_codes_resolve_over_the_cohort(tmp_path: Path) -> None:
    import pandas as pd

    extract = write_mimic(tmp_path / "mimic", seed=6, n_subjects=20, labs_per_admission=(5, 10))
    sink = _Collect()
    await load_extract(extract.root, sink)
    inputs: dict[str, dict[str, object]] = {}
    fold_into(inputs, sink.events)
    spec = FeatureSpec.model_validate({"name": "mf", "version": 1, "labs": {"most_frequent": 3}})
    resolved = resolved_spec(spec, inputs)
    labs = pd.read_csv(extract.root / "hosp" / "labevents.csv", dtype={"itemid": str})
    counts = labs[labs["valuenum"].notna()].groupby("itemid").size().reset_index(name="n")
    top = counts.sort_values(["n", "itemid"], ascending=[False, True])["itemid"].head(3).tolist()
    assert resolved.labs is not None and resolved.labs.codes == top
