"""Atomic, incremental writes into the export directory, tracked by a manifest.

Why: an export of a large cohort takes long and may be interrupted; a reader must
never see a half-written file, and a second run must only write what changed. Each file
is written to a temporary name in its directory, fsynced, then renamed over the target
(and the directory fsynced). The manifest ``.cohortstream-export.json`` lists every
file with its sha256, size and sources (UIDs, never patient identifiers); it is saved
the same way after every series, so a resumed export skips what is already done.
Files listed in the manifest that the current export no longer produces are removed at
the end (a subject left the cohort, a rule changed a name).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from export.bids.errors import BidsExportError

__all__ = ["MANIFEST_NAME", "ExportWriter", "atomic_write", "sha256_bytes"]

MANIFEST_NAME = ".cohortstream-export.json"
_MANIFEST_VERSION = 1


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
    except OSError as exc:
        raise BidsExportError(f"cannot write {path}: {exc}") from exc


class ExportWriter:
    """Writes files under ``root`` only when their content changed, and remembers them."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._manifest_path = self.root / MANIFEST_NAME
        self.previous: dict[str, Any] = self._load()
        self.files: dict[str, dict[str, Any]] = {}
        self.cache: dict[str, Any] = dict(self.previous.get("cache", {}))
        self.written: list[str] = []
        self.unchanged: list[str] = []
        self.removed: list[str] = []
        for leftover in self.root.rglob(".*.part"):  # an interrupted earlier run
            leftover.unlink(missing_ok=True)

    def _load(self) -> dict[str, Any]:
        if not self._manifest_path.exists():
            return {"files": {}, "cache": {}}
        try:
            data: dict[str, Any] = json.loads(self._manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BidsExportError(
                f"manifest {self._manifest_path} is unreadable ({exc}); remove it to export afresh"
            ) from exc
        if data.get("version") != _MANIFEST_VERSION:
            return {"files": {}, "cache": {}}
        return data

    def previous_entry(self, relpath: str) -> dict[str, Any] | None:
        """The manifest entry of ``relpath`` if the file is still on disk as recorded."""
        entry = self.previous.get("files", {}).get(relpath) or self.files.get(relpath)
        path = self.root / relpath
        if entry is None or not path.is_file() or path.stat().st_size != entry.get("size"):
            return None
        return entry

    def read_previous(self, relpath: str) -> bytes | None:
        """The bytes of an earlier output, if intact (its sha256 still matches)."""
        entry = self.previous_entry(relpath)
        if entry is None:
            return None
        data = (self.root / relpath).read_bytes()
        return data if sha256_bytes(data) == entry["sha256"] else None

    def write(self, relpath: str, data: bytes, sources: Iterable[str] = ()) -> bool:
        """Write ``data`` at ``relpath`` unless the same bytes are already there; True if written."""
        digest = sha256_bytes(data)
        entry = self.previous_entry(relpath)
        self.files[relpath] = {"sha256": digest, "size": len(data), "sources": sorted(set(sources))}
        if entry is not None and entry["sha256"] == digest:
            self.unchanged.append(relpath)
            return False
        atomic_write(self.root / relpath, data)
        self.written.append(relpath)
        return True

    def keep(self, relpath: str) -> None:
        """Record an earlier output as produced again without rewriting it."""
        entry = self.previous_entry(relpath)
        if entry is None:
            raise BidsExportError(f"{relpath} is not in the export as the manifest records it")
        self.files[relpath] = entry
        self.unchanged.append(relpath)

    def save(self) -> None:
        """Persist the manifest: everything produced so far plus the earlier entries not yet revisited."""
        files = {**self.previous.get("files", {}), **self.files}
        atomic_write(
            self._manifest_path,
            json.dumps(
                {"version": _MANIFEST_VERSION, "files": dict(sorted(files.items())), "cache": self.cache},
                indent=1,
                sort_keys=True,
            ).encode("utf-8"),
        )

    def finish(self) -> None:
        """Remove what earlier exports wrote and this one did not produce, then save the manifest."""
        for relpath in sorted(set(self.previous.get("files", {})) - set(self.files)):
            (self.root / relpath).unlink(missing_ok=True)
            self.removed.append(relpath)
            parent = (self.root / relpath).parent
            while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        self.previous = {"files": {}, "cache": self.cache}
        self.save()
