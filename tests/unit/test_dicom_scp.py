"""The listener's logic without a network: attributes → event, structure check, and the
status each outcome maps to (the C-STORE handler called with stand-in event objects;
the real DIMSE exchange is covered by tests/integration/test_dicom_listener.py)."""

from __future__ import annotations

import hashlib
import shutil
import threading
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from cohortstream.events import DicomInstanceReceived
from cohortstream.publisher import PublishError
from cohortstream.staging import StagingStore
from cohortstream.synthetic import mr_study, write_study
from producers.dicom_integrity import IncompleteDicomError, check_part10_structure
from producers.dicom_scp import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    KafkaUnavailableError,
    PublishTimeoutError,
    StoreContext,
    UnreadableInstanceError,
    instance_event,
    on_c_store,
    on_rejected,
    read_instance_attributes,
)

# Several SOP classes and transfer syntaxes (asked for by name: never glob pydicom's data).
TEST_FILES = {
    "CT_small.dcm": ("1.2.840.10008.1.2.1", "CT"),
    "MR_small.dcm": ("1.2.840.10008.1.2.1", "MR"),
    "MR_small_implicit.dcm": ("1.2.840.10008.1.2", "MR"),
    "MR_small_bigendian.dcm": ("1.2.840.10008.1.2.2", "MR"),
    "MR_small_RLE.dcm": ("1.2.840.10008.1.2.5", "MR"),
    "MR_small_jpeg_ls_lossless.dcm": ("1.2.840.10008.1.2.4.80", "MR"),
    "JPEG2000.dcm": ("1.2.840.10008.1.2.4.91", "NM"),
    "SC_rgb_jpeg_dcmtk.dcm": ("1.2.840.10008.1.2.4.50", "OT"),
    "JPEG-lossy.dcm": ("1.2.840.10008.1.2.4.51", "NM"),
    "SC_rgb_jpeg_gdcm.dcm": ("1.2.840.10008.1.2.4.70", "OT"),
    "image_dfl.dcm": ("1.2.840.10008.1.2.1.99", None),
    "rtplan.dcm": ("1.2.840.10008.1.2", "RTPLAN"),
    "waveform_ecg.dcm": ("1.2.840.10008.1.2.1", "ECG"),
}


def _testfile(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path)


@pytest.mark.parametrize("name", sorted(TEST_FILES))
def test_attributes_match_the_dataset(name: str) -> None:
    path = _testfile(name)
    attrs = read_instance_attributes(path)
    full = pydicom.dcmread(path)
    transfer_syntax, modality = TEST_FILES[name]
    assert attrs.transfer_syntax_uid == transfer_syntax
    assert attrs.sop_instance_uid == full.SOPInstanceUID
    assert attrs.sop_class_uid == full.SOPClassUID
    assert attrs.study_instance_uid == full.StudyInstanceUID
    assert attrs.series_instance_uid == full.SeriesInstanceUID
    assert attrs.patient_id == str(full.get("PatientID", "") or "")
    if modality is not None:
        assert attrs.modality == modality
    if "SeriesNumber" in full and full.SeriesNumber not in (None, ""):
        assert attrs.series_number == int(full.SeriesNumber)


def test_event_from_a_ct_file(tmp_path: Path) -> None:
    path = _testfile("CT_small.dcm")
    staged = StagingStore(tmp_path).stage_file(path)
    attrs = read_instance_attributes(path)
    received = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    event = instance_event(attrs, staged, calling_aet="CTSCANNER", called_aet="COHORTSTREAM", received_at=received)
    assert isinstance(event, DicomInstanceReceived)
    assert event.producer == "dicom-scp"
    assert event.sop_instance_uid == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    assert event.modality == "CT"
    assert event.patient_sex == "O" and event.patient_age == "000Y"
    assert event.study_date == date(2004, 1, 19)
    assert event.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert event.size_bytes == path.stat().st_size
    assert event.staged_uri == staged.path.as_uri()
    assert event.received_at == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert (event.calling_aet, event.called_aet) == ("CTSCANNER", "COHORTSTREAM")


def _write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _mr(**changes: Any) -> Dataset:
    ds = mr_study(n_series=1, slices=1, rows=8, cols=8, seed=11)[0]
    for keyword, value in changes.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    return ds


def test_lenient_attributes(tmp_path: Path) -> None:
    ds = _mr(PatientAge="about forty", PatientSex="X", StudyDate="2024-13-45", SeriesNumber=None,
             Modality=None, SeriesDescription="  ")
    attrs = read_instance_attributes(_write(ds, tmp_path / "a.dcm"))
    assert attrs.patient_age is None and attrs.patient_sex is None and attrs.study_date is None
    assert attrs.series_number is None and attrs.series_description is None
    assert attrs.modality == ""
    assert attrs.instance_number == 1
    assert attrs.body_part_examined == "HEAD"


@pytest.mark.parametrize("missing", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"])
def test_missing_identifiers_are_unreadable(tmp_path: Path, missing: str) -> None:
    ds = _mr(**{missing: None})
    with pytest.raises(UnreadableInstanceError, match=missing):
        read_instance_attributes(_write(ds, tmp_path / "a.dcm"))


def _meta_plus(body: bytes, tmp_path: Path) -> Path:
    """A file with a valid preamble and file meta followed by ``body`` as the data set."""
    good = write_study(mr_study(n_series=1, slices=1, rows=8, cols=8, seed=12), tmp_path / "src")[0]
    data = good.read_bytes()
    # End of the file meta: after the last group 0002 element (walk it like the checker).
    ds = pydicom.dcmread(good, stop_before_pixels=True)
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    path = tmp_path / "bad.dcm"
    path.write_bytes(data[:meta_end] + body)
    return path


def test_structure_check_finds_truncation_and_garbage(tmp_path: Path) -> None:
    good = write_study(mr_study(n_series=1, slices=1, rows=8, cols=8, seed=12), tmp_path / "g")[0]
    assert check_part10_structure(good) == "1.2.840.10008.1.2.1"
    data = good.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 10])
    with pytest.raises(IncompleteDicomError, match="truncated"):
        check_part10_structure(cut)
    with pytest.raises(IncompleteDicomError):
        check_part10_structure(_meta_plus(bytes(range(256)) * 20, tmp_path))
    no_meta = tmp_path / "nometa.dcm"
    no_meta.write_bytes(b"\x00" * 50)
    with pytest.raises(IncompleteDicomError, match="DICM"):
        check_part10_structure(no_meta)
    # pydicom's own truncated samples.
    for name in ("MR_truncated.dcm", "rtplan_truncated.dcm"):
        with pytest.raises(IncompleteDicomError, match="truncated"):
            check_part10_structure(_testfile(name))


# ---- the C-STORE handler with stand-in event objects ----------------------------------


class FakePublisher:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.sent: list[tuple[DicomInstanceReceived, str]] = []

    def __call__(self, event: DicomInstanceReceived, key: str) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append((event, key))


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
    return StoreContext(store=StagingStore(tmp_path / "staging"), quarantine_dir=tmp_path / "quarantine", publish=publish)


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
    assert on_c_store(_event(_write(_mr(PatientID="SECRET-PID-42", SOPInstanceUID=None), tmp_path / "q.dcm"), tmp_path / "recv"),
                      context) == STATUS_CANNOT_UNDERSTAND
    text = " ".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert ds.SOPInstanceUID in text
    assert "SECRET-PID-42" not in text and "Doe" not in text


def test_rejected_association_is_logged_with_caller(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    context = StoreContext(store=StagingStore(tmp_path), quarantine_dir=tmp_path, publish=FakePublisher(),
                           allowed_aets=("PACS",))
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

    def slow_publish(event: DicomInstanceReceived, key: str) -> None:
        order.append("start")
        entered.set()
        release.wait(5)
        order.append("end")

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
