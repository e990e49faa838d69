"""TSV and JSON bytes as BIDS wants them: deterministic, so unchanged data gives equal bytes.

Why deterministic: the incremental export compares content hashes; sorted keys, fixed
column order and ``n/a`` for missing values make a re-export of unchanged data produce
the very same bytes, hence no write.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["json_bytes", "tsv_bytes", "tsv_value"]


def tsv_value(value: Any) -> str:
    """One TSV cell: ``n/a`` for missing, no tabs or newlines, numbers without trailing noise."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(round(value, 6)).removesuffix(".0") if value == int(value) else repr(round(value, 6))
    if isinstance(value, list | tuple):
        return ",".join(tsv_value(v) for v in value) or "n/a"
    text = str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ").strip()
    return text or "n/a"


def tsv_bytes(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> bytes:
    """A TSV file with a header line; every row must only use the given columns."""
    lines = ["\t".join(columns)]
    for row in rows:
        unknown = set(row) - set(columns)
        if unknown:
            raise ValueError(f"row has columns not in the header: {sorted(unknown)}")
        lines.append("\t".join(tsv_value(row.get(c)) for c in columns))
    return ("\n".join(lines) + "\n").encode("utf-8")


def json_bytes(data: Any) -> bytes:
    """Pretty, sorted JSON with a final newline."""
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode("utf-8")
