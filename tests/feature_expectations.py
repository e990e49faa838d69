"""An independent computation of a generated cohort's features: plain pandas over the
generated MIMIC-IV CSV files (no cohortstream code), and a per-value comparison with the
documents the stream (or a rebuild) wrote. Shared by the unit and integration tests."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["compare_documents", "expected_mimic_features"]

STATISTICS = ("count", "first", "last", "min", "max", "mean", "std", "slope_per_day")


def _slope(group: pd.DataFrame) -> float | None:
    if len(group) < 2:
        return None
    days = (group["charttime"] - group["charttime"].iloc[0]).dt.total_seconds().to_numpy() / 86_400.0
    if np.all(days == days[0]):
        return None
    slope, _intercept = np.polyfit(days, group["valuenum"].to_numpy(dtype=float), 1)
    return float(slope)


def expected_mimic_features(root: Path, codes: Sequence[str], prefixes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """MIMIC subject id (text) → expected feature columns, from ``root/hosp/*.csv``."""
    hosp = root / "hosp"
    patients = pd.read_csv(hosp / "patients.csv", dtype={"subject_id": str})
    labs = pd.read_csv(hosp / "labevents.csv", dtype={"subject_id": str, "itemid": str, "labevent_id": str})
    diagnoses = pd.read_csv(hosp / "diagnoses_icd.csv", dtype={"subject_id": str, "icd_code": str})
    labs = labs[labs["valuenum"].notna()].copy()
    labs["charttime"] = pd.to_datetime(labs["charttime"], utc=True)
    # Time order; equal times in row-id text order (the documented tie rule).
    labs = labs.sort_values(["charttime", "labevent_id"], kind="mergesort")
    expected: dict[str, dict[str, Any]] = {}
    for row in patients.itertuples():
        expected.setdefault(row.subject_id, {})["age"] = int(row.anchor_age)
        expected[row.subject_id]["sex"] = row.gender
    with_labs = set(labs["subject_id"])
    for subject in with_labs:
        features = expected.setdefault(subject, {})
        for code in codes:
            features[f"lab_{code}_count"] = 0
            for stat in STATISTICS[1:]:
                features[f"lab_{code}_{stat}"] = None
    for (subject, code), group in labs[labs["itemid"].isin(list(codes))].groupby(["subject_id", "itemid"]):
        values = group["valuenum"].astype(float)
        f = expected[subject]
        f[f"lab_{code}_count"] = len(group)
        f[f"lab_{code}_first"] = float(values.iloc[0])
        f[f"lab_{code}_last"] = float(values.iloc[-1])
        f[f"lab_{code}_min"] = float(values.min())
        f[f"lab_{code}_max"] = float(values.max())
        f[f"lab_{code}_mean"] = float(values.mean())
        f[f"lab_{code}_std"] = float(values.std()) if len(values) > 1 else None
        f[f"lab_{code}_slope_per_day"] = _slope(group)
    for subject, group in diagnoses.groupby("subject_id"):
        f = expected.setdefault(subject, {})
        for prefix in prefixes:
            f[f"dx_{prefix.lower()}"] = int(group["icd_code"].str.startswith(prefix).any())
    return expected


def _close(got: Any, want: Any) -> bool:
    if want is None or got is None:
        return got is None and want is None
    if isinstance(want, float) or isinstance(got, float):
        return math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-9)
    return bool(got == want)


def compare_documents(
    documents: Iterable[Mapping[str, Any]], expected: Mapping[str, Mapping[str, Any]], key_of: Mapping[str, str]
) -> tuple[int, list[str]]:
    """(values compared, differences); ``key_of`` maps a MIMIC subject id to the subject id of its document."""
    by_subject = {d["subject_id"]: d for d in documents}
    compared, problems = 0, []
    for mimic_id, want in sorted(expected.items()):
        doc = by_subject.get(key_of[mimic_id])
        if doc is None:
            problems.append(f"subject {mimic_id}: no document")
            continue
        for column, value in sorted(want.items()):
            got = doc["features"].get(column, "<missing>")
            compared += 1
            if not _close(got, value):
                problems.append(f"subject {mimic_id} {column}: stream {got!r}, pandas {value!r}")
    return compared, problems
