"""Lab rows in columnar form: numpy arrays per column instead of one object per row.

Why: a rebuild handles every lab row of the cohort (50,000 subjects × 100 rows = 5 million
in the benchmark). One Python object per row costs more than the whole rebuild may take;
arrays let the snapshot topic carry a document's rows as a few ``bytes`` fields
(:mod:`.snapshot`) and let :mod:`.cohort` compute every subject's statistics at once.

A :class:`LabColumns` holds the rows of one input document (or one subject) in the
documented order: time, then source row id as text. Codes and units are dictionary
encoded (an index per row into ``codes``/``units``; unit ``-1``: none). Row ids are kept
(length-prefixed UTF-8, decoded only when two documents' rows must be merged) so the
columns are a faithful copy of the document's ``labs`` map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["EPOCH", "LabColumns", "from_micros", "to_micros"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

IntArray = npt.NDArray[np.int32]
LongArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def to_micros(at: datetime) -> int:
    """Microseconds since the Unix epoch (a naive time is UTC, as the view store returns it)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def _encode_rows(rows: Sequence[str]) -> tuple[bytes, bytes]:
    encoded = [r.encode("utf-8") for r in rows]
    return np.fromiter((len(e) for e in encoded), dtype="<i4", count=len(encoded)).tobytes(), b"".join(encoded)


@dataclass(frozen=True, eq=False)
class LabColumns:
    """The lab rows of one input document or subject, in time order (ties: row id as text)."""

    codes: tuple[str, ...]
    units: tuple[str, ...]
    code: IntArray
    """Index into ``codes``, one per row."""
    at_us: LongArray
    """Microseconds since the Unix epoch (UTC)."""
    value: FloatArray
    unit: IntArray
    """Index into ``units``; -1: no unit."""
    row_lengths: bytes
    """Byte length of each row id (little-endian int32 per row)."""
    row_text: bytes
    """The row ids' UTF-8, concatenated."""

    def __len__(self) -> int:
        return len(self.value)

    def rows(self) -> list[str]:
        """The row ids (decoded on demand: only a merge of two documents needs them)."""
        lengths = np.frombuffer(self.row_lengths, dtype="<i4")
        ends = np.cumsum(lengths, dtype=np.int64).tolist()
        starts = [0, *ends[:-1]]
        text = self.row_text
        return [text[s:e].decode("utf-8") for s, e in zip(starts, ends, strict=True)]

    @classmethod
    def from_rows(cls, labs: Mapping[str, Sequence[Any]]) -> LabColumns:
        """From an input document's ``labs`` map (``row id → [code, at, value, unit]``).

        Row ids are unique in a map, so (time, row id) orders the rows totally: one
        ``numpy.lexsort`` instead of a Python sort of tuples (the lane converts every
        document it recomputes)."""
        rows = list(labs)
        entries = list(labs.values())
        codes: dict[str, int] = {}
        units: dict[str, int] = {}
        at = np.array([to_micros(e[1]) for e in entries], dtype=np.int64)
        order = np.lexsort((np.array(rows, dtype=str), at)) if rows else np.zeros(0, dtype=np.int64)
        code = np.array([codes.setdefault(str(e[0]), len(codes)) for e in entries], dtype=np.int32)
        unit = np.array([units.setdefault(str(e[3]), len(units)) if e[3] else -1 for e in entries], dtype=np.int32)
        value = np.array([float(e[2]) for e in entries], dtype=np.float64)
        lengths, text = _encode_rows([rows[i] for i in order.tolist()])
        return cls(
            codes=tuple(codes),
            units=tuple(units),
            code=code[order],
            at_us=at[order],
            value=value[order],
            unit=unit[order],
            row_lengths=lengths,
            row_text=text,
        )

    @classmethod
    def _from_tuples(cls, rows: list[tuple[int, str, str, float, str | None]]) -> LabColumns:
        rows.sort(key=lambda r: (r[0], r[1]))  # stable: equal (time, row id) keep their order
        codes: dict[str, int] = {}
        units: dict[str, int] = {}
        code_index = [codes.setdefault(code, len(codes)) for _, _, code, _, _ in rows]
        unit_index = [units.setdefault(str(unit), len(units)) if unit else -1 for *_, unit in rows]
        lengths, text = _encode_rows([row for _, row, *_ in rows])
        return cls(
            codes=tuple(codes),
            units=tuple(units),
            code=np.array(code_index, dtype=np.int32),
            at_us=np.array([at for at, *_ in rows], dtype=np.int64),
            value=np.array([v for *_, v, _ in rows], dtype=np.float64),
            unit=np.array(unit_index, dtype=np.int32),
            row_lengths=lengths,
            row_text=text,
        )

    @classmethod
    def merge(cls, parts: Sequence[LabColumns]) -> LabColumns | None:
        """The rows of a subject's documents (given in the order :func:`.inputs.subject_inputs`
        reads them), in the documented order; None when there are none."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        rows: list[tuple[int, str, str, float, str | None]] = []
        for part in parts:
            codes, units = part.codes, part.units
            for row, code, at, value, unit in zip(
                part.rows(),
                part.code.tolist(),
                part.at_us.tolist(),
                part.value.tolist(),
                part.unit.tolist(),
                strict=True,
            ):
                rows.append((at, row, codes[code], value, units[unit] if unit >= 0 else None))
        return cls._from_tuples(rows)
