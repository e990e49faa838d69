"""The C-STORE handler's logic without a network: the status each outcome maps to (the
handler called with stand-in event objects; the real DIMSE exchange is covered by
tests/unit/test_dicom_listener_durability.py and tests/integration/test_dicom_listener.py)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest

from cohortstream.events import DicomInstanceReceived
from cohortstream.publisher import PublishError
from cohortstream.staging import StagingStore
from cohortstream.threaded_publisher import KafkaUnavailableError, PublishTimeoutError
from producers.dicom import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    StoreContext,
    on_c_store,
    on_rejected,
)
from tests.unit.test_dicom_attributes import _meta_plus, _mr, _testfile, _write


class Acknowledged:
    """What ``start_publish`` returns: ``wait`` raises the configured error, if any."""

    def __init__(self, error: Exception | None = None, wait: Callable[[], None] | None = None) -> None:
        self.error = error
        self._wait = wait

    def wait(self) -> None:
        if self._wait is not None:
            self._wait()
        if self.error is not None:
            raise self.error


class FakePublisher:
    """Stands in for ``ThreadedEventPublisher.start_publish``; the outcome comes at ``wait``
    time, as with the real producer."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.sent: list[tuple[DicomInstanceReceived, str]] = []

    def __call__(self, event: DicomInstanceReceived, key: str) -> Acknowledged:
        if self.error is None:
            self.sent.append((event, key))
        return Acknowledged(self.error)


def _event(path: Path, workdir: Path, calling: str = "MODALITY", sop_uid: str = "") -> Any:
    """What on_c_store reads from pynetdicom's Event: dataset_path, request, assoc."""
    if not sop_uid:
        try:
            sop_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        except Exception:
            sop_uid = "1.2.3"
    # pynetdicom deletes its temp file after the handler: hand over a copy.
    workdir.mkdir(parents=True, exist_ok=True)
    copy = workdir / f"recv-{len(list(workdir.iterdir()))}-{path.name}"
    shutil.copyfile(path, copy)
    return SimpleNamespace(
        dataset_path=copy,
        request=SimpleNamespace(AffectedSOPInstanceUID=sop_uid),
        assoc=SimpleNamespace(
            requestor=SimpleNamespace(ae_title=calling, address="127.0.0.1", port=40000),
            acceptor=SimpleNamespace(ae_title="COHORTSTREAM"),
            ae=SimpleNamespace(active_associations=[]),
        ),
    )


def _context(tmp_path: Path, publish: Any) -> StoreContext:
    return StoreContext(
        store=StagingStore(tmp_path / "staging"), quarantine_dir=tmp_path / "quarantine", start_publish=publish
    )


def test_success_only_after_staging_and_publishing(tmp_path: Path) -> None:
    publisher = FakePublisher()
    context = _context(tmp_path, publisher)
    source = _testfile("MR_small_RLE.dcm")
    assert on_c_store(_event(source, tmp_path / "recv"), context) == STATUS_SUCCESS
    [(event, key)] = publisher.sent
    assert key == event.series_instance_uid
    assert event.transfer_syntax_uid == "1.2.840.10008.1.2.5"
    staged = list(context.store.iter_staged())
    assert [s.sha256 for s in staged] == [event.sha256]
    # Stored as it came: the staged file is the received file, byte for byte.
    assert staged[0].path.read_bytes() == source.read_bytes()


def test_same_instance_twice_succeeds_twice_with_one_staged_file(tmp_path: Path) -> None:
    publisher = FakePublisher()
    context = _context(tmp_path, publisher)
    source = _testfile("CT_small.dcm")
    assert on_c_store(_event(source, tmp_path / "recv"), context) == STATUS_SUCCESS
    assert on_c_store(_event(source, tmp_path / "recv"), context) == STATUS_SUCCESS
    assert len(publisher.sent) == 2
    assert len(list(context.store.iter_staged())) == 1


def test_kafka_unavailable_is_out_of_resources_and_leaves_nothing(tmp_path: Path) -> None:
    context = _context(tmp_path, FakePublisher(KafkaUnavailableError("cannot connect")))
    assert on_c_store(_event(_testfile("CT_small.dcm"), tmp_path / "recv"), context) == STATUS_OUT_OF_RESOURCES
    assert list(context.store.iter_staged()) == []


def test_with_several_listener_processes_a_kafka_failure_removes_no_staged_file(tmp_path: Path) -> None:
    """Another process may have staged and published the same bytes a moment ago; only
    the staging sweeper removes orphans then."""
    context = _context(tmp_path, FakePublisher(KafkaUnavailableError("cannot connect")))
    context.shared_store = True
    assert on_c_store(_event(_testfile("CT_small.dcm"), tmp_path / "recv"), context) == STATUS_OUT_OF_RESOURCES
    assert len(list(context.store.iter_staged())) == 1


def test_unknown_publish_outcome_is_out_of_resources_and_keeps_the_bytes(tmp_path: Path) -> None:
    for error in (PublishTimeoutError("no ack in 30s"), PublishError("KafkaTimeoutError")):
        context = _context(tmp_path / type(error).__name__, FakePublisher(error))
        assert on_c_store(_event(_testfile("CT_small.dcm"), tmp_path / "recv"), context) == STATUS_OUT_OF_RESOURCES
        # The broker may still append the event: the file it points to must stay.
        assert len(list(context.store.iter_staged())) == 1


def test_kafka_failure_never_removes_a_file_staged_earlier(tmp_path: Path) -> None:
    publisher = FakePublisher()
    context = _context(tmp_path, publisher)
    source = _testfile("CT_small.dcm")
    assert on_c_store(_event(source, tmp_path / "recv"), context) == STATUS_SUCCESS
    publisher.error = KafkaUnavailableError("down")
    assert on_c_store(_event(source, tmp_path / "recv"), context) == STATUS_OUT_OF_RESOURCES
    assert len(list(context.store.iter_staged())) == 1  # the first, acknowledged copy stays


def test_staging_failure_is_out_of_resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    publisher = FakePublisher()
    context = _context(tmp_path, publisher)
    blocker = tmp_path / "staging"
    blocker.write_bytes(b"a file where the store's directory should be")
    assert on_c_store(_event(_testfile("CT_small.dcm"), tmp_path / "recv"), context) == STATUS_OUT_OF_RESOURCES
    assert publisher.sent == []


@pytest.mark.parametrize("kind", ["garbage", "truncated", "no-sop-instance-uid"])
def test_unreadable_data_is_quarantined(tmp_path: Path, kind: str) -> None:
    publisher = FakePublisher()
    context = _context(tmp_path, publisher)
    if kind == "garbage":
        path = _meta_plus(b"\x13\x37garbage!" * 100, tmp_path)
    elif kind == "truncated":
        data = _testfile("CT_small.dcm").read_bytes()
        path = tmp_path / "truncated.dcm"
        path.write_bytes(data[: len(data) // 2])
    else:
        path = _write(_mr(SOPInstanceUID=None), tmp_path / "nouid.dcm")
    event = _event(path, tmp_path / "recv", calling="BADMODALITY", sop_uid="1.2.3.4")
    assert on_c_store(event, context) == STATUS_CANNOT_UNDERSTAND
    assert publisher.sent == []
    assert list(context.store.iter_staged()) == []
    [kept] = sorted((tmp_path / "quarantine").glob("*.dcm"))
    assert kept.read_bytes() == path.read_bytes()
    note = kept.with_suffix(".json").read_text()
    assert "BADMODALITY" in note


def test_unexpected_error_is_a_failure_never_success(tmp_path: Path) -> None:
    context = _context(tmp_path, FakePublisher(RuntimeError("bug")))
    assert on_c_store(_event(_testfile("CT_small.dcm"), tmp_path / "recv"), context) == STATUS_PROCESSING_FAILURE


def test_shutting_down_refuses_new_stores(tmp_path: Path) -> None:
    publisher = FakePublisher()
    context = _context(tmp_path, publisher)
    context.accepting.clear()
    assert on_c_store(_event(_testfile("CT_small.dcm"), tmp_path / "recv"), context) == STATUS_OUT_OF_RESOURCES
    assert publisher.sent == [] and list(context.store.iter_staged()) == []
    assert context.wait_idle(0.1)


def test_logs_carry_no_patient_identifiers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    context = _context(tmp_path, FakePublisher())
    ds = _mr(PatientID="SECRET-PID-42", PatientName="Doe^Jane")
    caplog.set_level("DEBUG")
    assert on_c_store(_event(_write(ds, tmp_path / "p.dcm"), tmp_path / "recv"), context) == STATUS_SUCCESS
    assert (
        on_c_store(
            _event(_write(_mr(PatientID="SECRET-PID-42", SOPInstanceUID=None), tmp_path / "q.dcm"), tmp_path / "recv"),
            context,
        )
        == STATUS_CANNOT_UNDERSTAND
    )
    text = " ".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert ds.SOPInstanceUID in text
    assert "SECRET-PID-42" not in text and "Doe" not in text


def test_rejected_association_is_logged_with_caller(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    context = StoreContext(
        store=StagingStore(tmp_path), quarantine_dir=tmp_path, start_publish=FakePublisher(), allowed_aets=("PACS",)
    )
    event = _event(_testfile("CT_small.dcm"), tmp_path / "recv", calling="INTRUDER")
    caplog.set_level("INFO")
    on_rejected(event, context)
    [record] = [r for r in caplog.records if r.getMessage() == "association rejected"]
    assert record.calling_aet == "INTRUDER"  # type: ignore[attr-defined]
    assert record.peer_address == "127.0.0.1"  # type: ignore[attr-defined]
    assert "allow-list" in record.reason  # type: ignore[attr-defined]


def test_same_instance_on_two_associations_is_serialised(tmp_path: Path) -> None:
    """While one copy waits for Kafka, a concurrent copy of the same instance waits too."""
    release = threading.Event()
    entered = threading.Event()
    order: list[str] = []

    def slow_publish(event: DicomInstanceReceived, key: str) -> Acknowledged:
        def acknowledged_later() -> None:
            order.append("start")
            entered.set()
            release.wait(5)
            order.append("end")

        return Acknowledged(wait=acknowledged_later)

    context = _context(tmp_path, slow_publish)
    source = _testfile("CT_small.dcm")
    results: list[int] = []
    first_event = _event(source, tmp_path / "recv")
    first = threading.Thread(target=lambda: results.append(on_c_store(first_event, context)))
    first.start()
    assert entered.wait(5)
    second_event = _event(source, tmp_path / "recv")
    second = threading.Thread(target=lambda: results.append(on_c_store(second_event, context)))
    second.start()
    second.join(0.2)
    assert order == ["start"]  # the second one has not reached publish
    release.set()
    first.join(5)
    second.join(5)
    assert results == [STATUS_SUCCESS, STATUS_SUCCESS]
    assert order == ["start", "end", "start", "end"]


def test_a_failed_sync_is_out_of_resources_even_when_kafka_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The event goes to Kafka while the disk syncs: an I/O error in the sync still
    answers 0xA700 (the sender retries), and the log says the event may be in Kafka."""
    publisher = FakePublisher()
    context = _context(tmp_path, publisher)

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    event = _event(_testfile("CT_small.dcm"), tmp_path / "recv")
    context.store.prepare()  # its directories exist (and were synced) before the failure
    monkeypatch.setattr(os, "fsync", failing_fsync)
    caplog.set_level("ERROR")
    assert on_c_store(event, context) == STATUS_OUT_OF_RESOURCES
    assert len(publisher.sent) == 1  # handed to Kafka before the sync failed
    [record] = [r for r in caplog.records if "could not be synced" in r.getMessage()]
    assert "Input/output error" in record.error  # type: ignore[attr-defined]
    assert record.sop_instance_uid == publisher.sent[0][0].sop_instance_uid  # type: ignore[attr-defined]
