"""The content-addressed staging store: atomic, idempotent, verified reads, quarantine."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from cohortstream import staging
from cohortstream.errors import CohortStreamError
from cohortstream.staging import StagedFile, StagingError, StagingStore


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_stage_bytes_is_content_addressed(tmp_path: Path) -> None:
    store = StagingStore(tmp_path / "staging")
    data = b"DICM-ish bytes" * 100
    staged = store.stage_bytes(data)
    digest = _sha(data)
    assert staged == StagedFile(digest, tmp_path / "staging" / digest[:2] / f"{digest}.dcm", len(data))
    assert staged.path.is_absolute()
    assert staged.path.read_bytes() == data
    assert staged.uri == staged.path.as_uri()
    assert staged.uri.startswith("file:///")
    assert store.path_for(digest) == staged.path


def test_stage_file_hashes_while_copying_and_keeps_the_source(tmp_path: Path) -> None:
    source = tmp_path / "in.dcm"
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one copy chunk
    source.write_bytes(data)
    store = StagingStore(tmp_path / "staging")
    staged = store.stage_file(source)
    assert staged.sha256 == _sha(data)
    assert staged.size == len(data)
    assert staged.path.read_bytes() == data
    assert source.read_bytes() == data


def test_staging_twice_is_idempotent(tmp_path: Path) -> None:
    store = StagingStore(tmp_path / "staging")
    source = tmp_path / "in.dcm"
    source.write_bytes(b"same bytes")
    first, created_first = store.stage_file_new(source)
    mtime = first.path.stat().st_mtime_ns
    second, created_second = store.stage_file_new(source)
    third = store.stage_bytes(b"same bytes")
    assert first == second == third
    assert (created_first, created_second) == (True, False)
    assert first.path.stat().st_mtime_ns == mtime  # not rewritten
    assert list(store.iter_staged()) == [first]


def test_no_temporary_file_is_left_or_listed(tmp_path: Path) -> None:
    store = StagingStore(tmp_path / "staging")
    for i in range(5):
        store.stage_bytes(f"file {i}".encode())
    # A writer that crashed mid-copy leaves a temp file: it must not count as staged.
    (store.root / ".tmp-crashed.part").write_bytes(b"half")
    some = next(store.iter_staged())
    (some.path.parent / ".tmp-other.part").write_bytes(b"half")
    (some.path.parent / "not-a-hash.dcm").write_bytes(b"x")
    listed = list(store.iter_staged())
    assert len(listed) == 5
    assert all(s.path.name == f"{s.sha256}.dcm" for s in listed)
    assert {s.sha256 for s in listed} == {_sha(f"file {i}".encode()) for i in range(5)}
    leftovers = [p for p in store.root.rglob("*") if p.is_file() and p.name.startswith(".tmp-")]
    assert sorted(p.name for p in leftovers) == [".tmp-crashed.part", ".tmp-other.part"]


def test_open_verified_returns_the_bytes(tmp_path: Path) -> None:
    store = StagingStore(tmp_path)
    staged = store.stage_bytes(b"payload")
    assert store.open_verified(staged.sha256) == b"payload"


def test_open_verified_detects_corruption_and_absence(tmp_path: Path) -> None:
    store = StagingStore(tmp_path)
    staged = store.stage_bytes(b"payload")
    staged.path.write_bytes(b"tampered")
    with pytest.raises(StagingError, match="corrupt") as info:
        store.open_verified(staged.sha256)
    assert str(staged.path) in str(info.value)
    assert isinstance(info.value, CohortStreamError) and isinstance(info.value, OSError)
    missing = _sha(b"never staged")
    with pytest.raises(StagingError, match="missing"):
        store.open_verified(missing)


def test_remove(tmp_path: Path) -> None:
    store = StagingStore(tmp_path)
    staged = store.stage_bytes(b"payload")
    assert store.remove(staged.sha256) is True
    assert not staged.path.exists()
    assert store.remove(staged.sha256) is False
    assert list(store.iter_staged()) == []


def test_path_for_rejects_non_hashes(tmp_path: Path) -> None:
    store = StagingStore(tmp_path)
    with pytest.raises(ValueError):
        store.path_for("../../etc/passwd")
    with pytest.raises(ValueError):
        store.path_for("A" * 64)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_store_raises_staging_error_naming_the_path(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(StagingError, match=str(root)):
            StagingStore(root).stage_bytes(b"x")
    finally:
        root.chmod(0o700)


def test_unreadable_source_raises_staging_error(tmp_path: Path) -> None:
    with pytest.raises(StagingError, match="nope.dcm"):
        StagingStore(tmp_path / "s").stage_file(tmp_path / "nope.dcm")


def test_disk_full_raises_staging_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StagingStore(tmp_path / "s")
    source = tmp_path / "in.dcm"
    source.write_bytes(b"x" * 100)

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StagingError, match="no space left on device"):
        store.stage_file(source)
    monkeypatch.undo()
    # Nothing half-written stays behind, under a final name or as a temp file.
    assert list(store.iter_staged()) == []
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_quarantine_keeps_bytes_and_a_note(tmp_path: Path) -> None:
    store = StagingStore(tmp_path / "staging")
    qdir = tmp_path / "quarantine"
    kept = store.quarantine(b"garbage", "no SOP Instance UID", qdir, "MODALITY1")
    assert kept.parent == qdir
    assert kept.read_bytes() == b"garbage"
    note = json.loads(kept.with_suffix(".json").read_text())
    assert note["reason"] == "no SOP Instance UID"
    assert note["calling_aet"] == "MODALITY1"
    assert note["sha256"] == _sha(b"garbage")
    assert note["size"] == 7
    assert "quarantined_at" in note
    # From a path too; quarantine never enters the staging store.
    source = tmp_path / "bad.dcm"
    source.write_bytes(b"truncated")
    kept2 = store.quarantine(source, "truncated", qdir, "MODALITY2")
    assert kept2.read_bytes() == b"truncated"
    assert list(store.iter_staged()) == []
    assert sorted(p.suffix for p in qdir.iterdir()) == [".dcm", ".dcm", ".json", ".json"]


def test_a_file_in_an_existing_directory_costs_two_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file and its one directory: the listener pays for every fsync per instance
    (a second directory fsync per file was a third of its staging time)."""
    store = StagingStore(tmp_path / "s")
    first = tmp_path / "a.dcm"
    first.write_bytes(b"first")
    staged = store.stage_file(first)
    # Another file with the same two-hex-digit prefix goes into the same directory.
    data = next(d for i in range(10_000) if _sha(d := f"other {i}".encode())[:2] == staged.sha256[:2] and d != b"first")
    second = tmp_path / "b.dcm"
    second.write_bytes(data)
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
    new = store.stage_file(second)
    assert new.path.parent == staged.path.parent
    assert len(calls) == 2


def test_files_in_the_layout_before_2026_11_are_still_listed_read_and_removed(tmp_path: Path) -> None:
    store = StagingStore(tmp_path / "s")
    data = b"staged by an older release"
    digest = _sha(data)
    legacy = store.root / digest[:2] / digest[2:4] / f"{digest}.dcm"
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(data)
    current = store.stage_bytes(b"staged now")
    assert {s.sha256: s.path for s in store.iter_staged()} == {digest: legacy, current.sha256: current.path}
    assert store.open_verified(digest) == data
    assert store.remove(digest)
    assert not legacy.exists()
    assert [s.sha256 for s in store.iter_staged()] == [current.sha256]


def test_prepare_creates_every_fan_out_directory_so_staging_creates_none(tmp_path: Path) -> None:
    store = StagingStore(tmp_path / "s")
    store.prepare()
    directories = sorted(p.name for p in store.root.iterdir())
    assert directories == [f"{i:02x}" for i in range(256)]
    store.prepare()  # idempotent
    staged = store.stage_bytes(b"after prepare")
    assert sorted(p.name for p in store.root.iterdir()) == directories
    assert staged.path.parent.name == staged.sha256[:2]


def test_begin_stage_makes_the_complete_file_readable_before_it_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener has Kafka acknowledge while the disk syncs: the file must already be
    complete under its final name, and make_durable() syncs the file and its directory."""
    store = StagingStore(tmp_path / "s")
    store.prepare()
    source = tmp_path / "in.dcm"
    data = os.urandom(200_000)
    source.write_bytes(data)
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    pending = store.begin_stage(source)
    assert pending.created
    assert pending.staged.path.read_bytes() == data  # complete, under its final name
    assert synced == []  # nothing synced yet
    pending.make_durable()
    file_id = (pending.staged.path.stat().st_dev, pending.staged.path.stat().st_ino)
    dir_id = (pending.staged.path.parent.stat().st_dev, pending.staged.path.parent.stat().st_ino)
    assert synced == [file_id, dir_id]
    pending.close()  # idempotent
    with pytest.raises(StagingError, match="already made durable"):
        pending.make_durable()


def test_a_short_or_wrong_file_under_a_final_name_is_staged_over(tmp_path: Path) -> None:
    """A crash between the rename and its fsync can leave a short (or, on some file
    systems, zero-filled) file under a final name: it is never trusted by name and size."""
    store = StagingStore(tmp_path / "s")
    data = b"the real bytes of an instance" * 50
    final = store.path_for(_sha(data))
    final.parent.mkdir(parents=True)
    source = tmp_path / "in.dcm"
    source.write_bytes(data)
    for leftover in (b"", data[:100], bytes(len(data))):
        final.write_bytes(leftover)
        staged, created = store.stage_file_new(source)
        assert created, leftover[:10]
        assert staged.path.read_bytes() == data
    assert store.stage_file_new(source)[1] is False  # now it is the right file


def test_an_existing_file_is_synced_before_it_counts_as_staged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another call (or process) may have renamed the same bytes into place a moment ago
    and still be syncing them; whoever answers success must know they are on disk."""
    store = StagingStore(tmp_path / "s")
    source = tmp_path / "in.dcm"
    source.write_bytes(b"same bytes again")
    first = store.stage_file(source)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd))[1])
    again, created = store.stage_file_new(source)
    assert (again, created) == (first, False)
    assert synced == [first.path.stat().st_ino, first.path.parent.stat().st_ino]


def test_taking_a_received_file_renames_it_instead_of_copying(tmp_path: Path) -> None:
    store = StagingStore(tmp_path / "staging")
    source = store.incoming_dir() / "received.dcm"
    data = os.urandom(200_000)
    source.write_bytes(data)
    inode = source.stat().st_ino
    pending = store.begin_stage(source, take=True)
    pending.make_durable()
    assert pending.created
    assert not source.exists()
    assert pending.staged.path.stat().st_ino == inode  # the same file, not a copy
    assert pending.staged.path.read_bytes() == data
    assert [s.sha256 for s in store.iter_staged()] == [_sha(data)]  # .incoming is never listed


def test_taking_leaves_the_source_when_the_bytes_are_already_staged(tmp_path: Path) -> None:
    store = StagingStore(tmp_path / "staging")
    data = os.urandom(5_000)
    first = store.stage_bytes(data)
    source = store.incoming_dir() / "again.dcm"
    source.write_bytes(data)
    pending = store.begin_stage(source, take=True)
    pending.make_durable()
    assert not pending.created and pending.staged == first
    assert source.exists()  # the receiver (pynetdicom) deletes its own file


def test_taking_across_filesystems_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StagingStore(tmp_path / "staging")
    source = tmp_path / "received.dcm"
    data = os.urandom(50_000)
    source.write_bytes(data)

    def cross_device(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "rename", cross_device)
    pending = store.begin_stage(source, take=True)
    pending.make_durable()
    assert pending.created and pending.staged.path.read_bytes() == data
    assert source.exists()


def test_incoming_dir_removes_only_files_left_for_an_hour(tmp_path: Path) -> None:
    store = StagingStore(tmp_path / "staging")
    incoming = store.incoming_dir()
    old, fresh = incoming / "old.dcm", incoming / "fresh.dcm"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    an_hour_ago = old.stat().st_mtime - 3700
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert store.incoming_dir() == incoming
    assert not old.exists() and fresh.exists()


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_taking_starts_the_write_out_and_syncs_through_the_same_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StagingStore(tmp_path / "staging")
    store.prepare()  # so the fan-out directory's own fsync is not among those below
    source = store.incoming_dir() / "received.dcm"
    source.write_bytes(os.urandom(140_000))
    inode = source.stat().st_ino
    kicked: list[int] = []
    monkeypatch.setattr(staging, "start_writeback", lambda fd: kicked.append(fd))
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append((fd, os.fstat(fd).st_ino)), real_fsync(fd))[1])
    before = _open_fds()
    pending = store.begin_stage(source, take=True)
    assert len(kicked) == 1 and os.fstat(kicked[0]).st_ino == inode  # before hashing, on the received file
    pending.make_durable()
    assert synced[0] == (kicked[0], inode)  # the file itself, through the descriptor that started it
    assert [inode for _, inode in synced[1:]] == [pending.staged.path.parent.stat().st_ino]  # then its directory
    assert _open_fds() == before


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_taking_leaks_no_descriptor_when_staged_already_or_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StagingStore(tmp_path / "staging")
    data = os.urandom(20_000)
    store.stage_bytes(data)
    before = _open_fds()
    again = store.incoming_dir() / "again.dcm"
    again.write_bytes(data)
    store.begin_stage(again, take=True).make_durable()  # already staged: left alone
    assert _open_fds() == before

    def cross_device(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "rename", cross_device)
    other = tmp_path / "other.dcm"
    other.write_bytes(os.urandom(20_000))
    store.begin_stage(other, take=True).make_durable()  # copied
    assert _open_fds() == before
    with pytest.raises(StagingError, match="missing.dcm"):
        store.begin_stage(tmp_path / "missing.dcm", take=True)
    assert _open_fds() == before


def test_start_writeback_is_only_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10_000)
    fd = os.open(path, os.O_RDONLY)
    try:
        staging.start_writeback(fd)  # starts the write-out; never raises
    finally:
        os.close(fd)
    staging.start_writeback(fd)  # a closed descriptor: ignored too
