"""Content-addressed staging store for received DICOM files (the claim check).

Design decision 2: pixels do not travel through Kafka. The listener copies each received
object into this store under its SHA-256 and publishes an event carrying the hash and the
file's ``file://`` URI; sinks read the bytes back with :meth:`StagingStore.open_verified`.

Layout: ``<root>/ab/cd/<sha256>.dcm`` (two levels of fan-out keep directories small).

Durability: bytes go to a temporary file in the target directory (name starting with
``.tmp-``), which is fsynced, renamed into place and followed by an fsync of the
directory, so after :meth:`StagingStore.stage_file` returns the file survives a crash and
nobody ever sees a half-written file under its final name. Staging the same bytes twice
is idempotent: the second call finds the file and returns the same :class:`StagedFile`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from cohortstream.errors import CohortStreamError

__all__ = ["StagedFile", "StagingError", "StagingStore"]

_CHUNK = 1024 * 1024
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_TMP_PREFIX = ".tmp-"


class StagingError(CohortStreamError, OSError):
    """The staging store could not write or read a file; the message names the path.

    Writing failures (disk full, permissions) are transient for the listener, which
    answers 0xA700 (out of resources) so the sender retries.
    """


@dataclass(frozen=True)
class StagedFile:
    """One complete file in the staging store."""

    sha256: str
    """Lower-case hex SHA-256 of the file's bytes: its address in the store."""
    path: Path
    """Absolute path of the file."""
    size: int
    """Size in bytes."""

    @property
    def uri(self) -> str:
        """The ``file://`` URI of the file, as carried by events (``staged_uri``)."""
        return self.path.as_uri()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


class StagingStore:
    """Files addressed by their SHA-256 under ``root``, written atomically and durably."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root).absolute()

    @property
    def root(self) -> Path:
        """The store's top directory (absolute)."""
        return self._root

    # --- addressing ------------------------------------------------------------------
    def path_for(self, sha256: str) -> Path:
        """Where the file with this hash lives: ``root/ab/cd/<sha256>.dcm``."""
        if not _SHA256_RE.match(sha256):
            raise ValueError(f"not a lower-case hex SHA-256: {sha256!r}")
        return self._root / sha256[:2] / sha256[2:4] / f"{sha256}.dcm"

    # --- writing ---------------------------------------------------------------------
    def stage_file(self, source: Path) -> StagedFile:
        """Copy ``source`` into the store, hashing while copying; idempotent."""
        return self.stage_file_new(source)[0]

    def stage_file_new(self, source: Path) -> tuple[StagedFile, bool]:
        """Like :meth:`stage_file`, and also say whether this call created the file
        (``False`` when identical bytes were already staged)."""
        source = Path(source)
        try:
            with source.open("rb") as src:
                return self._stage_stream(src)
        except StagingError:
            raise
        except OSError as exc:
            raise StagingError(f"cannot read {source}: {_describe(exc)}") from exc

    def stage_bytes(self, data: bytes) -> StagedFile:
        """Put ``data`` into the store; idempotent."""
        digest = hashlib.sha256(data).hexdigest()
        final = self.path_for(digest)
        if self._existing(final, len(data)):
            return StagedFile(digest, final, len(data))
        self._mkdir(final.parent)
        self._atomic_write(final, data)
        return StagedFile(digest, final, len(data))

    def _stage_stream(self, src: BinaryIO) -> tuple[StagedFile, bool]:
        # The hash is only known at the end, so write to a temp file in the root,
        # then move it into its fan-out directory (same file system: rename is atomic).
        self._mkdir(self._root)
        hasher = hashlib.sha256()
        size = 0
        tmp = self._make_temp(self._root)
        try:
            with os.fdopen(tmp[0], "wb") as out:
                while chunk := src.read(_CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = hasher.hexdigest()
            final = self.path_for(digest)
            if self._existing(final, size):
                return StagedFile(digest, final, size), False
            self._mkdir(final.parent)
            os.replace(tmp[1], final)
            _fsync_dir(final.parent)
            if final.parent != self._root:
                _fsync_dir(self._root)
            return StagedFile(digest, final, size), True
        except OSError as exc:
            raise StagingError(f"cannot stage into {tmp[1]}: {_describe(exc)}") from exc
        finally:
            try:
                os.unlink(tmp[1])
            except FileNotFoundError:
                pass
            except OSError:  # pragma: no cover - best effort cleanup
                pass

    def _make_temp(self, directory: Path) -> tuple[int, Path]:
        try:
            fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".part", dir=directory)
        except OSError as exc:
            raise StagingError(f"cannot create a file in {directory}: {_describe(exc)}") from exc
        return fd, Path(name)

    def _mkdir(self, directory: Path) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StagingError(f"cannot create directory {directory}: {_describe(exc)}") from exc

    @staticmethod
    def _existing(final: Path, size: int) -> bool:
        # Only complete files ever carry a final name, so a file of the right size is
        # the same content (the name is its hash).
        try:
            return final.stat().st_size == size
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StagingError(f"cannot inspect {final}: {_describe(exc)}") from exc

    # --- reading ---------------------------------------------------------------------
    def open_verified(self, sha256: str) -> bytes:
        """The bytes of the staged file, after checking they still hash to ``sha256``."""
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise StagingError(f"staged file {path} is missing") from exc
        except OSError as exc:
            raise StagingError(f"cannot read staged file {path}: {_describe(exc)}") from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise StagingError(f"staged file {path} is corrupt: its SHA-256 is {actual}")
        return data

    def remove(self, sha256: str) -> bool:
        """Delete the staged file; ``True`` if it existed."""
        path = self.path_for(sha256)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StagingError(f"cannot remove staged file {path}: {_describe(exc)}") from exc
        with contextlib.suppress(OSError):  # the unlink itself succeeded
            _fsync_dir(path.parent)
        return True

    def iter_staged(self) -> Iterator[StagedFile]:
        """Every complete staged file (temporary files are never listed)."""
        if not self._root.is_dir():
            return
        for first in sorted(self._root.iterdir()):
            if not (first.is_dir() and len(first.name) == 2):
                continue
            for second in sorted(first.iterdir()):
                if not (second.is_dir() and len(second.name) == 2):
                    continue
                for path in sorted(second.iterdir()):
                    stem = path.name.removesuffix(".dcm")
                    if path.suffix != ".dcm" or not _SHA256_RE.match(stem):
                        continue
                    if stem[:2] != first.name or stem[2:4] != second.name:
                        continue
                    try:
                        size = path.stat().st_size
                    except FileNotFoundError:  # removed while listing
                        continue
                    yield StagedFile(stem, path, size)

    # --- quarantine ------------------------------------------------------------------
    def quarantine(self, data_or_path: bytes | Path, reason: str, quarantine_dir: Path, calling_aet: str) -> Path:
        """Keep unreadable received data for inspection: ``<sha256>.dcm`` plus
        ``<sha256>.json`` with the reason, the time and the calling AE title.

        Returns the path of the kept data file. Written durably like staged files;
        quarantining the same bytes twice keeps one copy and refreshes the note.
        """
        quarantine_dir = Path(quarantine_dir).absolute()
        if isinstance(data_or_path, bytes):
            data = data_or_path
        else:
            try:
                data = Path(data_or_path).read_bytes()
            except OSError as exc:
                raise StagingError(f"cannot read {data_or_path} to quarantine it: {_describe(exc)}") from exc
        digest = hashlib.sha256(data).hexdigest()
        self._mkdir(quarantine_dir)
        target = quarantine_dir / f"{digest}.dcm"
        note = {
            "sha256": digest,
            "size": len(data),
            "reason": reason,
            "calling_aet": calling_aet,
            "quarantined_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        self._atomic_write(target, data)
        self._atomic_write(quarantine_dir / f"{digest}.json", (json.dumps(note, indent=2) + "\n").encode())
        return target

    def _atomic_write(self, target: Path, data: bytes) -> None:
        fd, tmp_path = self._make_temp(target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_path, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            raise StagingError(f"cannot write {target}: {_describe(exc)}") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)
