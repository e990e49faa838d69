"""Overlap between masks, to compare a suggestion with a truth or a reviewer's correction."""

from __future__ import annotations

import numpy as np

__all__ = ["dice"]


def dice(a: np.ndarray, b: np.ndarray, label: int | None = None) -> float:
    """Dice coefficient ``2|A∩B| / (|A|+|B|)`` of two masks of the same shape.

    With ``label`` the masks are label maps and only that label counts; otherwise any
    non-zero voxel is foreground. Two empty masks agree perfectly (1.0): an empty
    suggestion for an empty truth is right, and a NaN would poison averages.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    fa = a == label if label is not None else a != 0
    fb = b == label if label is not None else b != 0
    total = int(fa.sum()) + int(fb.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(fa, fb).sum()) / total
