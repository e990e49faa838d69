"""Content-addressed staging store for received DICOM files (the claim check).

Design decision 2: pixels do not travel through Kafka. The listener copies each received
object into this store under its SHA-256 and publishes an event carrying the hash and the
file's ``file://`` URI; sinks read the bytes back with :meth:`StagingStore.open_verified`.

Layout: ``<root>/ab/<sha256>.dcm``: 256 directories, created once each. The store is a
claim check that the archive empties as it goes, so one level keeps directories small
enough; releases before 2026-11 used ``<root>/ab/cd/<sha256>.dcm``, which made a young
store create (and fsync) two new directories for most files. Files in that old layout
are still listed, read and removed, so an upgrade strands nothing.

Durability: bytes go to a temporary file in the target directory (name starting with
``.tmp-``), which is renamed into place, then fsynced, followed by an fsync of the
directory; after :meth:`StagingStore.stage_file` returns the file survives a crash, and
nobody ever sees a half-written file under its final name (the rename publishes complete
bytes from the page cache).

Staging comes in two steps, :meth:`StagingStore.begin_stage` (hash, write, rename: the
file is complete and readable under its final name) and :meth:`PendingStage.make_durable`
(the two fsyncs), so the listener can have Kafka acknowledge the instance's event while
the disk syncs: the two waits overlap instead of adding up, and the C-STORE is answered
only after both (design decision 3). Renaming before the fsync means that a crash in
between can leave a short or empty file under a final name, for an instance whose
sender was never told success; so a file found under its final name is trusted only
after its bytes were hashed again (and synced), never by its name and size alone.

Staging the same bytes twice is idempotent: the second call finds the file, checks it
and returns the same :class:`StagedFile`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from cohortstream.errors import CohortStreamError

__all__ = ["PendingStage", "StagedFile", "StagingError", "StagingStore", "start_writeback"]

_CHUNK = 1024 * 1024
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_TMP_PREFIX = ".tmp-"
_INCOMING_STALE_S = 3600.0


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


def _load_sync_file_range() -> Any:
    """Linux's ``sync_file_range(2)`` through libc, or ``None`` where there is none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's dirty pages to disk now, without waiting.

    A hint, not durability: the fsync that follows still decides. Started when the listener
    takes a received file, the write-out runs while the file is hashed, its event encoded
    and sent to Kafka, so the fsync afterwards mostly waits for the journal commit (an
    fsync of a 132 KB file: 0.25-0.32 ms cold vs 0.11-0.14 ms after the hint, measured on
    ext4 here). Does nothing where ``sync_file_range`` is missing or refuses (not Linux,
    a filesystem without it).
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PendingStage:
    """A file complete and readable under its final name, not yet synced to disk.

    :meth:`make_durable` fsyncs the file and its directory entry; :meth:`close` releases
    the file descriptor when the caller gives up instead (both are safe to call twice).
    """

    def __init__(self, staged: StagedFile, created: bool, fd: int) -> None:
        self.staged = staged
        self.created = created
        """``False`` when identical bytes were already staged (they are synced all the same:
        another call may have renamed them into place a moment ago and still be syncing)."""
        self._fd: int | None = fd

    @property
    def fd(self) -> int | None:
        """The descriptor that syncs the file (``None`` once synced or closed)."""
        return self._fd

    def make_durable(self) -> None:
        """fsync the file's data and the directory entry that names it."""
        if self._fd is None:
            raise StagingError(f"{self.staged.path}: already made durable or closed")
        try:
            os.fsync(self._fd)
            _fsync_dir(self.staged.path.parent)
        except OSError as exc:
            raise StagingError(f"cannot fsync {self.staged.path}: {_describe(exc)}") from exc
        finally:
            self.close()

    def close(self) -> None:
        """Release the file descriptor (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
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
        self._known_dirs: set[Path] = set()
        self._temp_counter = itertools.count()

    @property
    def root(self) -> Path:
        """The store's top directory (absolute)."""
        return self._root

    def prepare(self) -> None:
        """Create the root and its 256 fan-out directories now, durably, so that no
        C-STORE pays for a directory's creation and its fsync (a young store would pay it
        for most of its first thousand files). Idempotent; about 1 MB of directories."""
        self._mkdir(self._root)
        created = False
        for prefix in range(256):
            directory = self._root / f"{prefix:02x}"
            if not directory.is_dir():
                self._mkdir(directory)
                created = True
            self._known_dirs.add(directory)
        if created:
            try:
                _fsync_dir(self._root)
            except OSError as exc:
                raise StagingError(f"cannot fsync {self._root}: {_describe(exc)}") from exc

    # --- addressing ------------------------------------------------------------------
    def path_for(self, sha256: str) -> Path:
        """Where the file with this hash is staged: ``root/ab/<sha256>.dcm``."""
        if not _SHA256_RE.match(sha256):
            raise ValueError(f"not a lower-case hex SHA-256: {sha256!r}")
        return self._root / sha256[:2] / f"{sha256}.dcm"

    def _legacy_path(self, sha256: str) -> Path:
        """Where releases before 2026-11 staged it: ``root/ab/cd/<sha256>.dcm``."""
        return self._root / sha256[:2] / sha256[2:4] / f"{sha256}.dcm"

    def _located(self, sha256: str) -> Path:
        """The file's path in whichever layout holds it (the current one when neither)."""
        path = self.path_for(sha256)
        if not path.exists():
            legacy = self._legacy_path(sha256)
            if legacy.exists():
                return legacy
        return path

    # --- writing ---------------------------------------------------------------------
    def stage_file(self, source: Path) -> StagedFile:
        """Copy ``source`` into the store, hashing while copying; idempotent."""
        return self.stage_file_new(source)[0]

    def stage_file_new(self, source: Path) -> tuple[StagedFile, bool]:
        """Like :meth:`stage_file`, and also say whether this call created the file
        (``False`` when identical bytes were already staged)."""
        pending = self.begin_stage(source)
        pending.make_durable()
        return pending.staged, pending.created

    def begin_stage(self, source: Path, *, take: bool = False) -> PendingStage:
        """Hash ``source`` and put its bytes under their final name, complete but not yet
        synced; the caller calls :meth:`PendingStage.make_durable` (or ``close``).

        ``take``: nobody needs ``source`` afterwards (the listener's received temporary
        file), so it is renamed into place instead of copied when it lies on the store's
        filesystem (:meth:`incoming_dir` makes sure it does); it is left where it was
        when identical bytes are already staged, and copied across filesystems."""
        source = Path(source)
        if take:
            return self._begin_take(source)
        try:
            with source.open("rb") as src:
                return self._stage_stream(src)
        except StagingError:
            raise
        except OSError as exc:
            raise StagingError(f"cannot read {source}: {_describe(exc)}") from exc

    def _begin_take(self, source: Path) -> PendingStage:
        """``begin_stage(source, take=True)``: one descriptor on ``source`` starts its
        write-out, hashes it and, once renamed into place, is the one that syncs it."""
        try:
            fd = os.open(source, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise StagingError(f"cannot read {source}: {_describe(exc)}") from exc
        try:
            start_writeback(fd)
            with os.fdopen(fd, "rb", closefd=False) as src:
                pending = self._stage_stream(src, (source, fd))
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError) and not isinstance(exc, StagingError):
                raise StagingError(f"cannot read {source}: {_describe(exc)}") from exc
            raise
        if pending.fd != fd:  # not renamed (already staged, or copied): fd is not needed
            os.close(fd)
        return pending

    def stage_bytes(self, data: bytes) -> StagedFile:
        """Put ``data`` into the store; idempotent."""
        digest = hashlib.sha256(data).hexdigest()
        final = self.path_for(digest)
        existing = self._open_existing(final, len(data), digest)
        if existing is not None:
            PendingStage(StagedFile(digest, final, len(data)), False, existing).make_durable()
            return StagedFile(digest, final, len(data))
        self._ensure_dir(final.parent)
        self._atomic_write(final, data)
        return StagedFile(digest, final, len(data))

    def _stage_stream(self, src: BinaryIO, take: tuple[Path, int] | None = None) -> PendingStage:
        # Hash first (a read from the page cache for a file just received), so the final
        # directory is known before anything is written: the temporary file goes next to
        # its final name and one directory fsync makes the rename durable. Hashing while
        # copying into the root instead costs a second directory fsync per file, which the
        # listener's profile showed as a third of its staging time.
        hasher = hashlib.sha256()
        size = 0
        while chunk := src.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
        digest = hasher.hexdigest()
        final = self.path_for(digest)
        staged = StagedFile(digest, final, size)
        existing = self._open_existing(final, size, digest)
        if existing is not None:
            return PendingStage(staged, False, existing)
        self._ensure_dir(final.parent)
        if take is not None:
            taken = self._take(take, final, staged)
            if taken is not None:
                return taken
        src.seek(0)
        try:
            fd, tmp = self._make_temp(final.parent)
        except StagingError:  # the directory was removed behind our back: create it again
            self._known_dirs.discard(final.parent)
            self._ensure_dir(final.parent)
            fd, tmp = self._make_temp(final.parent)
        try:
            copied = 0
            while chunk := src.read(_CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                copied += len(chunk)
            if copied != size:
                raise StagingError(f"{getattr(src, 'name', 'the source')} changed while being staged")
            os.replace(tmp, final)
            return PendingStage(staged, True, fd)
        except BaseException as exc:
            # Not renamed: close and remove the temporary file (after a rename it is gone,
            # so the hot path pays for no unlink).
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError) and not isinstance(exc, StagingError):
                raise StagingError(f"cannot stage into {tmp}: {_describe(exc)}") from exc
            raise

    @staticmethod
    def _take(take: tuple[Path, int], final: Path, staged: StagedFile) -> PendingStage | None:
        """Rename the source (``take``: its path and a descriptor open on it) to ``final``,
        to be synced through that descriptor; ``None`` when they are on different
        filesystems (the caller copies instead)."""
        source, fd = take
        try:
            os.rename(source, final)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return None
            raise StagingError(f"cannot move {source} to {final}: {_describe(exc)}") from exc
        return PendingStage(staged, True, fd)

    def incoming_dir(self) -> Path:
        """``<root>/.incoming``, created if missing: a directory on the store's filesystem
        for received files that :meth:`begin_stage` then takes (``take=True``) by renaming.

        Files in it untouched for an hour are left over from a crashed listener (a file
        being received is written every few milliseconds) and are removed here."""
        directory = self._root / ".incoming"
        self._mkdir(directory)
        cutoff = datetime.now(UTC).timestamp() - _INCOMING_STALE_S
        for entry in directory.iterdir():
            with contextlib.suppress(OSError):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink()
        return directory

    def _make_temp(self, directory: Path) -> tuple[int, Path]:
        # A name unique to this process and call, opened O_EXCL: what mkstemp guarantees,
        # without its random-name generation (measurable at hundreds of files a second).
        path = directory / f"{_TMP_PREFIX}{os.getpid()}-{next(self._temp_counter)}.part"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:  # left by a crashed process that had this pid
            with contextlib.suppress(OSError):
                os.unlink(path)
            return self._make_temp(directory)
        except OSError as exc:
            raise StagingError(f"cannot create a file in {directory}: {_describe(exc)}") from exc
        return fd, path

    def _ensure_dir(self, directory: Path) -> None:
        """Create a fan-out directory (and its parents) durably, once per process: a new
        directory entry is fsynced into its parent, so a staged file never sits in a
        directory that a crash could lose."""
        if directory in self._known_dirs:
            return
        missing: list[Path] = []
        probe = directory
        while not probe.is_dir():
            missing.append(probe)
            if probe == probe.parent:
                break
            probe = probe.parent
        self._mkdir(directory)
        try:
            for created in missing:
                _fsync_dir(created.parent)
        except OSError as exc:
            raise StagingError(f"cannot fsync the parent of {directory}: {_describe(exc)}") from exc
        self._known_dirs.add(directory)

    def _mkdir(self, directory: Path) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StagingError(f"cannot create directory {directory}: {_describe(exc)}") from exc

    @staticmethod
    def _open_existing(final: Path, size: int, sha256: str) -> int | None:
        """A read descriptor on ``final`` if it holds exactly these bytes, else ``None``.

        Hashed again rather than trusted by name and size: a crash between a rename and
        its fsync (see the module docstring) can leave a short or empty file under a
        final name, which is then staged over. The descriptor lets the caller sync it.
        """
        try:
            fd = os.open(final, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StagingError(f"cannot inspect {final}: {_describe(exc)}") from exc
        try:
            if os.fstat(fd).st_size == size:
                hasher = hashlib.sha256()
                while chunk := os.read(fd, _CHUNK):
                    hasher.update(chunk)
                if hasher.hexdigest() == sha256:
                    return fd
        except OSError as exc:
            os.close(fd)
            raise StagingError(f"cannot inspect {final}: {_describe(exc)}") from exc
        os.close(fd)
        return None

    # --- reading ---------------------------------------------------------------------
    def open_verified(self, sha256: str) -> bytes:
        """The bytes of the staged file, after checking they still hash to ``sha256``."""
        path = self._located(sha256)
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
        path = self._located(sha256)
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
        """Every complete staged file, in either layout (temporary files are never listed)."""
        if not self._root.is_dir():
            return
        for first in sorted(self._root.iterdir()):
            if not (first.is_dir() and len(first.name) == 2):
                continue
            for entry in sorted(first.iterdir()):
                if entry.is_dir() and len(entry.name) == 2:  # the layout before 2026-11
                    yield from self._files_in(entry, first.name + entry.name)
                elif self._is_staged_name(entry, first.name):
                    staged = self._staged_at(entry)
                    if staged is not None:
                        yield staged

    def _files_in(self, directory: Path, prefix: str) -> Iterator[StagedFile]:
        for path in sorted(directory.iterdir()):
            if self._is_staged_name(path, prefix):
                staged = self._staged_at(path)
                if staged is not None:
                    yield staged

    @staticmethod
    def _is_staged_name(path: Path, prefix: str) -> bool:
        stem = path.name.removesuffix(".dcm")
        return path.suffix == ".dcm" and bool(_SHA256_RE.match(stem)) and stem.startswith(prefix)

    @staticmethod
    def _staged_at(path: Path) -> StagedFile | None:
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # removed while listing
            return None
        return StagedFile(path.name.removesuffix(".dcm"), path, size)

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
