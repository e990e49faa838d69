"""Design decision 3, proven on the wire: the listener answers 0x0000 only after the
staged file and the directory entry its rename made were fsynced *and* the publish was
acknowledged; the event is handed to Kafka only once the complete file is under its
final name, and the broker's round trip overlaps the fsyncs (the event is handed over
before the staged file's fsync, not after it).

A real :class:`~producers.dicom.DicomListener` runs in-process on loopback and a real
pynetdicom association sends it a C-STORE. ``os.fsync`` is wrapped to record which file
(by device and inode, so the temporary name the store writes under still counts once
renamed) was synced, and the publisher is a stand-in that records the moment it is
called and what is on disk then. No Kafka needed: the Kafka side of the same guarantee is
pinned by tests/unit/test_publisher_durability.py and
tests/integration/test_publisher_durability.py.

The control test runs the same check against a store that copies without fsync, and
expects it to fail: the check cannot pass by accident.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, _config

from cohortstream.events import DicomInstanceReceived
from cohortstream.settings import Settings
from cohortstream.staging import PendingStage, StagedFile, StagingStore
from producers.dicom import STATUS_SUCCESS, DicomListener
from tests.net import free_port

AET = "COHORTSTREAM"


@dataclass
class Recorder:
    """Everything that happened, in order, in the DIMSE thread."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, detail: Any) -> None:
        with self.lock:
            self.calls.append((kind, detail))


def _file_id(path_or_fd: Path | int) -> tuple[int, int]:
    st = os.fstat(path_or_fd) if isinstance(path_or_fd, int) else os.stat(path_or_fd)
    return st.st_dev, st.st_ino


class _Acknowledged:
    def wait(self) -> None:
        return None


class RecordingPublisher:
    """Stands in for ThreadedEventPublisher: records the publish and the staged file at that moment."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def start(self) -> bool:
        return True

    def stop(self, timeout_s: float = 30.0) -> None:
        return None

    def start_publish(self, event: DicomInstanceReceived, key: str) -> _Acknowledged:
        path = Path(unquote(urlparse(event.staged_uri).path))
        on_disk = path.read_bytes() if path.exists() else None
        self.recorder.add(
            "publish",
            {
                "event": event,
                "key": key,
                "file_id": _file_id(path) if on_disk is not None else None,
                "sha256_on_disk": hashlib.sha256(on_disk).hexdigest() if on_disk is not None else None,
            },
        )
        return _Acknowledged()


class _NoSync(PendingStage):
    def make_durable(self) -> None:
        self.close()


class UnsyncedStore(StagingStore):
    """A store that stages by a plain copy: no fsync of the file or its directory."""

    def begin_stage(self, source: Path, *, take: bool = False) -> PendingStage:
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        final = self.path_for(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, final)
        return _NoSync(StagedFile(digest, final, final.stat().st_size), True, os.open(final, os.O_RDONLY))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    real_fsync = os.fsync

    def recording_fsync(fd: Any) -> None:
        recorder.add("fsync", _file_id(fd))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return recorder


@pytest.fixture
def listener(tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> Iterator[DicomListener]:
    # The listener switches pynetdicom to receive-to-file, process-wide: undo it afterwards.
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", _config.STORE_RECV_CHUNKED_DATASET)
    settings = Settings(
        dicom_scp_host="127.0.0.1",
        dicom_scp_port=free_port(),
        dicom_scp_aet=AET,
        staging_dir=tmp_path / "staging",
        quarantine_dir=tmp_path / "quarantine",
        dicom_scp_publish_timeout_s=10.0,
    )
    with DicomListener(settings, publisher_factory=lambda _: RecordingPublisher(recorder)) as running:
        yield running


def _c_store(port: int, path: Path) -> int:
    """One C-STORE over a real association on loopback; the status the listener answered."""
    ds = pydicom.dcmread(path)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status)
    finally:
        assoc.release()


def _store_and_record(listener: DicomListener, recorder: Recorder) -> tuple[int, list[tuple[str, Any]]]:
    source = get_testdata_file("CT_small.dcm")
    assert source is not None
    status = _c_store(listener.address[1], Path(source))
    recorder.add("response", status)
    return status, list(recorder.calls)


def check_durable_before_response(calls: list[tuple[str, Any]], store_root: Path) -> DicomInstanceReceived:
    """Assert: at the moment of publishing the complete file is under its final name; the
    staged file and its directory entries are fsynced before the response; the response
    comes after the publish; return the published event."""
    publishes = [i for i, (kind, _) in enumerate(calls) if kind == "publish"]
    assert len(publishes) == 1, calls
    at = publishes[0]
    published = calls[at][1]
    event: DicomInstanceReceived = published["event"]
    staged_path = Path(unquote(urlparse(event.staged_uri).path))
    # At the moment of publishing, the file is in place and holds the bytes the event names.
    assert published["sha256_on_disk"] == event.sha256
    assert published["file_id"] == _file_id(staged_path)
    assert calls[-1][0] == "response" and at < len(calls) - 1, "the response came before the publish"
    synced_before_response = {detail for kind, detail in calls[:-1] if kind == "fsync"}
    # The staged file's own data (same inode as the temp file it was written as) ...
    assert _file_id(staged_path) in synced_before_response, "the staged file was not fsynced before the response"
    # ... and the directory entry its rename created (fan-out directory and store root).
    assert _file_id(staged_path.parent) in synced_before_response, "the staged file's directory was not fsynced"
    assert _file_id(store_root) in synced_before_response, "the store root was not fsynced"
    return event


def test_listener_answers_after_the_fsyncs_and_the_publish(listener: DicomListener, recorder: Recorder) -> None:
    status, calls = _store_and_record(listener, recorder)
    assert status == STATUS_SUCCESS
    event = check_durable_before_response(calls, listener.store.root)
    assert event.sop_instance_uid == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    assert [s.sha256 for s in listener.store.iter_staged()] == [event.sha256]


def test_the_kafka_round_trip_overlaps_the_fsync(listener: DicomListener, recorder: Recorder) -> None:
    """The event is handed to Kafka before the staged file's fsync, so the two waits
    overlap (serially they were about a third of the handler's time)."""
    handing_over = listener.context.start_publish

    def recorded_hand_over(event: DicomInstanceReceived, key: str) -> Any:
        # The moment the event goes to the producer (librdkafka then sends it from its
        # own threads, concurrently with what follows here).
        recorder.add("hand over", event.sop_instance_uid)
        return handing_over(event, key)

    listener.context.start_publish = recorded_hand_over
    status, calls = _store_and_record(listener, recorder)
    assert status == STATUS_SUCCESS
    event = check_durable_before_response(calls, listener.store.root)
    staged_id = _file_id(Path(unquote(urlparse(event.staged_uri).path)))
    handed_at = next(i for i, (kind, _) in enumerate(calls) if kind == "hand over")
    fsync_at = next(i for i, (kind, detail) in enumerate(calls) if kind == "fsync" and detail == staged_id)
    assert handed_at < fsync_at, calls


def test_control_a_store_without_fsync_fails_the_check(listener: DicomListener, recorder: Recorder) -> None:
    unsynced = UnsyncedStore(listener.store.root)
    listener.context.store = unsynced
    status, calls = _store_and_record(listener, recorder)
    assert status == STATUS_SUCCESS  # the listener cannot tell: only the check can
    with pytest.raises(AssertionError, match="not fsynced"):
        check_durable_before_response(calls, unsynced.root)
