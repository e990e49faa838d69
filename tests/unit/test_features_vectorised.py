"""The cohort computation (numpy, every subject at once) against the per-subject definition
(plain Python, :func:`feature_document`), on random cohorts and on the edge cases: one
row, equal times, NaN and infinite values, a single code, codes outside the spec, a
subject whose rows come from two documents, no rows at all."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cohortstream.features.cohort import feature_documents
from cohortstream.features.compute import feature_document
from cohortstream.features.inputs import subject_inputs, subject_lab_columns
from cohortstream.features.labs import LabColumns
from cohortstream.features.spec import FeatureSpec

T0 = datetime(2150, 1, 1, tzinfo=UTC)
SPEC = FeatureSpec.model_validate({"name": "t", "version": 1, "labs": {"codes": ["A", "B", "C", "Z"]}})


def _labs(rng: random.Random, n: int, codes: str, *, tie: bool = False) -> dict[str, list[Any]]:
    labs: dict[str, list[Any]] = {}
    for i in range(n):
        at = (
            T0 if tie else T0 + timedelta(minutes=rng.randrange(0, 5) if rng.random() < 0.3 else rng.randrange(500_000))
        )
        value: float = round(rng.uniform(-5, 50), rng.choice([0, 1, 3]))
        if rng.random() < 0.05:
            value = rng.choice([math.nan, math.inf, -math.inf])
        labs[f"r{rng.randrange(10**6)}-{i}"] = [rng.choice(codes), at, value, rng.choice(["mg", "", None, "g"])]
    return labs


def _cohort(seed: int) -> list[list[dict[str, Any]]]:
    """Identifier documents per subject."""
    rng = random.Random(seed)
    subjects: list[list[dict[str, Any]]] = []
    for s in range(300):
        kind = s % 10
        docs: list[dict[str, Any]] = [{"_id": f"ehr:x|{s}", "demographics": {"sex": "F", "age": 40}}]
        if kind == 0:
            docs[0]["labs"] = {"only": ["A", T0, 1.5, "mg"]}  # one row
        elif kind == 1:
            docs[0]["labs"] = _labs(rng, 7, "AB", tie=True)  # every row at one time
        elif kind == 2:
            docs[0]["labs"] = _labs(rng, 12, "A")  # a single code
        elif kind == 3:
            docs[0]["labs"] = {"n": ["A", T0, math.nan, "mg"], "m": ["B", T0, math.nan, None]}  # only NaN
        elif kind == 4:
            docs[0]["labs"] = _labs(rng, 9, "XY")  # codes outside the spec only
        elif kind == 5:
            pass  # no labs at all
        elif kind == 6:  # two documents (two EHR sources) with rows at the same times
            docs[0]["labs"] = _labs(rng, 8, "AB", tie=True)
            docs.append({"_id": f"ehr:y|{s}", "labs": _labs(rng, 8, "AB", tie=True)})
        else:
            docs[0]["labs"] = _labs(rng, rng.randrange(1, 80), "ABCX")
        subjects.append(docs)
    return subjects


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b and type(a) is type(b))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_cohort_computation_equals_the_per_subject_definition(seed: int) -> None:
    subjects = _cohort(seed)
    reference = [feature_document(SPEC, subject_inputs(f"S{i}", docs, [])) for i, docs in enumerate(subjects)]
    vectorised = feature_documents(
        SPEC,
        [subject_inputs(f"S{i}", docs, [], lab_rows=False) for i, docs in enumerate(subjects)],
        [subject_lab_columns(docs) for docs in subjects],
    )
    assert len(vectorised) == len(reference)
    compared = 0
    for want, got in zip(reference, vectorised, strict=True):
        assert got["blocks"] == want["blocks"], want["_id"]
        assert got["lab_units"] == want["lab_units"], want["_id"]
        assert list(got["features"]) == list(want["features"]), want["_id"]
        for name, value in want["features"].items():
            assert _close(got["features"][name], value), (want["_id"], name, got["features"][name], value)
            compared += 1
    assert compared > 300 * 20
    # The edge cases really occurred.
    one = next(d for d in reference if d["_id"] == "S0")
    assert one["features"]["lab_a_count"] == 1 and one["features"]["lab_a_std"] is None
    assert one["features"]["lab_a_slope_per_day"] is None and one["features"]["lab_z_count"] == 0
    assert "labs" not in next(d for d in reference if d["_id"] == "S3")["blocks"]  # NaN only: no value
    assert "labs" in next(d for d in reference if d["_id"] == "S4")["blocks"]  # rows, none of the spec's codes
    assert "labs" not in next(d for d in reference if d["_id"] == "S5")["blocks"]


def test_columns_keep_the_rows_order_and_ids() -> None:
    labs = {"b": ["A", T0, 2.0, "mg"], "a": ["A", T0, 1.0, None], "c": ["B", T0 - timedelta(days=1), 3.0, "g"]}
    columns = LabColumns.from_rows(labs)
    assert columns.rows() == ["c", "a", "b"]  # time, then row id as text
    assert [columns.codes[i] for i in columns.code] == ["B", "A", "A"]
    assert columns.value.tolist() == [3.0, 1.0, 2.0] and columns.unit.tolist()[1] == -1
    merged = LabColumns.merge([columns, LabColumns.from_rows({"a": ["A", T0, 9.0, "mg"]})])
    assert (
        merged is not None and merged.rows() == ["c", "a", "a", "b"] and merged.value.tolist() == [3.0, 1.0, 9.0, 2.0]
    )
    assert LabColumns.merge([]) is None


def test_a_spec_without_labs_and_an_empty_cohort() -> None:
    no_labs = FeatureSpec.model_validate({"name": "t", "version": 1})
    docs = [{"_id": "ehr:x|1", "labs": {"r": ["A", T0, 1.0, None]}, "demographics": {"sex": "M"}}]
    inputs = subject_inputs("S", docs, [], lab_rows=False)
    assert feature_documents(no_labs, [inputs], [subject_lab_columns(docs)])[0]["blocks"] == ["demographics"]
    assert feature_documents(SPEC, [], []) == []
    empty = feature_documents(SPEC, [inputs], [None])[0]
    assert "labs" not in empty["blocks"]
