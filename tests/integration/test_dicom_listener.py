"""The DICOM listener against real Kafka, fed by real DICOM clients nobody here wrote:
dcmtk's ``storescu``/``echoscu`` (Debian package ``dcmtk``, called by full path because the
venv's pynetdicom installs a ``storescu`` of its own) and pynetdicom's ``storescu`` app.

Each test starts a listener in-process on a free port with its own staging and
quarantine directories and its own topics (unique prefix from ``stack_settings``), pushes
files, and reads the topic back with aiokafka. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from aiokafka import AIOKafkaConsumer
from pydicom.data import get_testdata_file
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cohortstream.admin import ensure_topics
from cohortstream.codec import EventCodec
from cohortstream.events import DicomInstanceReceived
from cohortstream.settings import Settings
from cohortstream.staging import StagingStore
from cohortstream.synthetic import mr_study, write_study
from producers.dicom import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    DicomListener,
)
from tests.listener_settings import listener_settings

STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
AET = "COHORTSTREAM"

# SOP classes and the common transfer syntaxes (asked for by name), with the dcmtk storescu
# option that makes it propose the file's own (compressed) transfer syntax instead of trying
# to decompress it.
TEST_FILES = {
    "CT_small.dcm": ("1.2.840.10008.1.2.1", ""),  # explicit VR little endian
    "rtplan.dcm": ("1.2.840.10008.1.2", ""),  # implicit VR little endian
    "SC_rgb_small_odd_big_endian.dcm": ("1.2.840.10008.1.2.2", "-xb"),  # explicit VR big endian
    "test-SR.dcm": ("1.2.840.10008.1.2.1", ""),  # structured report
    "waveform_ecg.dcm": ("1.2.840.10008.1.2.1", ""),  # waveform
    "image_dfl.dcm": ("1.2.840.10008.1.2.1.99", "-xd"),  # deflated explicit VR little endian
    "SC_rgb_jpeg_dcmtk.dcm": ("1.2.840.10008.1.2.4.50", "-xy"),  # JPEG baseline
    "JPEG-lossy.dcm": ("1.2.840.10008.1.2.4.51", "-xx"),  # JPEG extended
    "SC_rgb_jpeg_gdcm.dcm": ("1.2.840.10008.1.2.4.70", "-xs"),  # JPEG lossless SV1
    "MR_small_jpeg_ls_lossless.dcm": ("1.2.840.10008.1.2.4.80", "-xt"),  # JPEG-LS lossless
    "GDCMJ2K_TextGBR.dcm": ("1.2.840.10008.1.2.4.90", "-xv"),  # JPEG 2000 lossless
    "JPEG2000.dcm": ("1.2.840.10008.1.2.4.91", "-xw"),  # JPEG 2000
    "MR_small_RLE.dcm": ("1.2.840.10008.1.2.5", "-xr"),  # RLE lossless
}

pytestmark = pytest.mark.skipif(not Path(STORESCU).exists(), reason="dcmtk is not installed (tests/run.sh installs it)")


def _settings(base: Settings, tmp_path: Path, **overrides: Any) -> Settings:
    return listener_settings(base, tmp_path, **{"dicom_scp_aet": AET, "dicom_scp_publish_timeout_s": 20.0, **overrides})


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return _settings(stack_settings, tmp_path)


@pytest.fixture
def listener(settings: Settings) -> Iterator[DicomListener]:
    asyncio.run(ensure_topics(settings))
    with DicomListener(settings) as running:
        yield running


def _copy_test_files(directory: Path, names: Iterable[str] = TEST_FILES) -> dict[str, Path]:
    """Copy pydicom's files, one folder per dcmtk transfer syntax option."""
    copies = {}
    for name in names:
        source = get_testdata_file(name)
        assert source is not None, name
        folder = directory / (TEST_FILES[name][1].lstrip("-") or "uncompressed")
        folder.mkdir(parents=True, exist_ok=True)
        copies[name] = Path(shutil.copy(source, folder / name))
    return copies


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# dcmtk leaves Nagle's algorithm on unless TCP_NODELAY=1 is set; with it on, every
# C-STORE waits ~40 ms for the receiver's delayed ACK (any receiver, dcmtk's own too).
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


async def _run(*argv: str, timeout_s: float = 90.0) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, list(argv), capture_output=True, text=True, timeout=timeout_s, env=DCMTK_ENV
    )


async def _dcmtk_store(
    port: int, path: Path, calling: str = "MODALITY", *options: str
) -> subprocess.CompletedProcess[str]:
    return await _run(
        STORESCU, "-R", "+sd", "+r", *options, "-aet", calling, "-aec", AET, "127.0.0.1", str(port), str(path)
    )


async def _events(settings: Settings, count: int, timeout_s: float = 60.0) -> list[DicomInstanceReceived]:
    """Read the instance-received topic from the start until ``count`` events arrived."""
    codec = EventCodec()
    consumer = AIOKafkaConsumer(
        settings.topic("dicom.instance-received"),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,  # no consumer group: no coordinator round trips, read from the start
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    events: list[DicomInstanceReceived] = []
    try:

        async def collect() -> None:
            async for message in consumer:
                event = codec.decode_event(message.value)
                assert isinstance(event, DicomInstanceReceived)
                assert message.key == event.series_instance_uid.encode()
                events.append(event)
                if len(events) >= count:
                    return

        await asyncio.wait_for(collect(), timeout_s)
    finally:
        await consumer.stop()
    return events


def _check_staged(listener: DicomListener, events: list[DicomInstanceReceived]) -> None:
    store = StagingStore(listener.store.root)
    for event in events:
        data = store.open_verified(event.sha256)  # hash of the staged bytes == event's sha256
        assert hashlib.sha256(data).hexdigest() == event.sha256
        assert len(data) == event.size_bytes
        assert event.staged_uri == store.path_for(event.sha256).as_uri()
        staged = pydicom.dcmread(store.path_for(event.sha256), stop_before_pixels=True)
        assert staged.SOPInstanceUID == event.sop_instance_uid
        assert staged.file_meta.TransferSyntaxUID == event.transfer_syntax_uid


async def test_dcmtk_storescu_pushes_test_files_and_a_study(
    listener: DicomListener, settings: Settings, tmp_path: Path
) -> None:
    port = listener.address[1]
    echo = await _run(ECHOSCU, "-aet", "MODALITY", "-aec", AET, "127.0.0.1", str(port))
    assert echo.returncode == 0, echo.stderr

    sent_dir = tmp_path / "send"
    files = _copy_test_files(sent_dir / "pydicom")
    study = mr_study(n_series=3, slices=60, rows=64, cols=64, seed=2024)
    write_study(study, sent_dir / "study")
    expected = {_sop_uid(p) for p in files.values()} | {ds.SOPInstanceUID for ds in study}
    sent = len(files) + len(study)  # MR_small_RLE and MR_small_jpeg_ls_lossless share one UID

    result = await _dcmtk_store(port, sent_dir / "study")
    assert result.returncode == 0, result.stderr
    for folder in sorted((sent_dir / "pydicom").iterdir()):
        options = [] if folder.name == "uncompressed" else [f"-{folder.name}"]
        result = await _dcmtk_store(port, folder, "MODALITY", *options)
        assert result.returncode == 0, f"{folder.name}: {result.stderr}"
    events = await _events(settings, sent)
    assert len(events) == sent
    assert {e.sop_instance_uid for e in events} == expected
    _check_staged(listener, events)

    by_uid = {(e.sop_instance_uid, e.transfer_syntax_uid): e for e in events}
    assert len(by_uid) == sent
    # Stored as they came: each file keeps its transfer syntax and its exact pixel bytes.
    for name, path in files.items():
        original = pydicom.dcmread(path)
        event = by_uid[(original.SOPInstanceUID, TEST_FILES[name][0])]
        staged = pydicom.dcmread(listener.store.path_for(event.sha256))
        if "PixelData" in original:
            assert staged.PixelData == original.PixelData, name
    first = by_uid[(study[0].SOPInstanceUID, "1.2.840.10008.1.2.1")]
    assert (first.modality, first.series_description, first.body_part_examined) == ("MR", "T1w", "HEAD")
    assert first.patient_id == "SYNTH-0001" and first.calling_aet == "MODALITY" and first.called_aet == AET
    assert first.study_date is not None and first.patient_age == study[0].PatientAge
    assert not any(settings.quarantine_dir.iterdir())


async def test_pynetdicom_storescu_pushes_files(listener: DicomListener, settings: Settings, tmp_path: Path) -> None:
    port = listener.address[1]
    sent_dir = tmp_path / "send"
    study = mr_study(n_series=2, slices=10, rows=32, cols=32, seed=77)
    write_study(study, sent_dir)
    extra = _copy_test_files(
        sent_dir / "pydicom", ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "image_dfl.dcm"]
    )
    expected = {ds.SOPInstanceUID for ds in study} | {_sop_uid(p) for p in extra.values()}

    result = await _run(
        sys.executable,
        "-m",
        "pynetdicom",
        "storescu",
        "-r",
        "-cx",
        "-aet",
        "PYNETDICOM",
        "-aec",
        AET,
        "127.0.0.1",
        str(port),
        str(sent_dir),
    )
    assert result.returncode == 0, result.stderr
    events = await _events(settings, len(expected))
    assert {e.sop_instance_uid for e in events} == expected and len(events) == len(expected)
    assert {e.calling_aet for e in events} == {"PYNETDICOM"}
    _check_staged(listener, events)


def _send_raw(port: int, path: Path, calling: str = "RAWSENDER") -> int:
    """Send a file's bytes as they are (no decoding on our side either), return the status."""
    ae = AE(ae_title=calling)
    meta = pydicom.filereader.read_file_meta_info(path)
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return int(status.Status)
    finally:
        assoc.release()


async def test_bad_input_is_refused_and_quarantined(
    listener: DicomListener, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = listener.address[1]
    # Send files "as they are": with STORE_SEND_CHUNKED_DATASET pynetdicom reads only the
    # file meta and streams the rest unparsed, so broken data sets really go on the wire.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    good = write_study(mr_study(n_series=1, slices=2, rows=16, cols=16, seed=5), tmp_path / "good")
    data = good[0].read_bytes()
    meta_end = 132 + 12 + int(pydicom.filereader.read_file_meta_info(good[0]).FileMetaInformationGroupLength)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(data[:meta_end] + bytes((i * 37 + 11) % 256 for i in range(3000)))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 700])
    no_uid_ds = mr_study(n_series=1, slices=1, rows=16, cols=16, seed=6)[0]
    del no_uid_ds.SOPInstanceUID
    no_uid = tmp_path / "no_uid.dcm"
    no_uid_ds.save_as(no_uid, enforce_file_format=True)

    for bad in (garbage, truncated, no_uid):
        status = await asyncio.to_thread(_send_raw, port, bad)
        assert 0xC000 <= status <= 0xCFFF, f"{bad.name}: 0x{status:04X}"
        assert status == STATUS_CANNOT_UNDERSTAND
    # Kept as received: pynetdicom's file meta for the negotiated context, then exactly
    # the data set bytes that were sent.
    kept = [p.read_bytes() for p in settings.quarantine_dir.glob("*.dcm")]
    assert len(kept) == 3
    for bad in (garbage, truncated, no_uid):
        sent = bad.read_bytes()
        sent_body = sent[132 + 12 + int(pydicom.filereader.read_file_meta_info(bad).FileMetaInformationGroupLength) :]
        assert sum(k.endswith(sent_body) for k in kept) == 1, bad.name
    assert len(list(settings.quarantine_dir.glob("*.json"))) == 3
    assert list(listener.store.iter_staged()) == []

    # A real-world file from pydicom's wheel that has no Study/Series Instance UID, sent
    # by dcmtk in its own JPEG-LS transfer syntax: refused (storescu fails), kept.
    no_study = get_testdata_file("JPEGLSNearLossless_16.dcm")
    assert no_study is not None
    refused = await _dcmtk_store(port, Path(no_study), "MODALITY", "-xu")
    assert refused.returncode != 0
    assert "0xc210" in (refused.stdout + refused.stderr).lower() or refused.returncode == 194
    assert len(list(settings.quarantine_dir.glob("*.json"))) == 4
    assert list(listener.store.iter_staged()) == []

    # A good instance afterwards is the first and only event: nothing bad was published.
    assert await asyncio.to_thread(_send_raw, port, good[1]) == STATUS_SUCCESS
    [event] = await _events(settings, 1)
    assert event.sop_instance_uid == _sop_uid(good[1])


async def test_refused_calling_ae_title(
    stack_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(stack_settings, tmp_path, dicom_scp_allowed_aets=["PACS"])
    await ensure_topics(settings)
    caplog.set_level(logging.INFO)
    source = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    with DicomListener(settings) as listener:
        port = listener.address[1]
        refused = await _dcmtk_store(port, source, calling="INTRUDER")
        assert refused.returncode != 0
        allowed = await _dcmtk_store(port, source, calling="PACS")
        assert allowed.returncode == 0, allowed.stderr
        [event] = await _events(settings, 1)
        assert event.calling_aet == "PACS"
    rejected = [r for r in caplog.records if r.getMessage() == "association rejected"]
    assert [(r.calling_aet, r.peer_address) for r in rejected] == [("INTRUDER", "127.0.0.1")]  # type: ignore[attr-defined]
    assert len(list(listener.store.iter_staged())) == 1


async def test_same_instance_twice(listener: DicomListener, settings: Settings, tmp_path: Path) -> None:
    port = listener.address[1]
    path = write_study(mr_study(n_series=1, slices=1, rows=16, cols=16, seed=9), tmp_path / "one")[0]
    for _ in range(2):
        result = await _dcmtk_store(port, path)
        assert result.returncode == 0, result.stderr
    events = await _events(settings, 2)
    assert events[0].sop_instance_uid == events[1].sop_instance_uid == _sop_uid(path)
    assert events[0].sha256 == events[1].sha256
    assert events[0].event_id != events[1].event_id
    assert [s.sha256 for s in listener.store.iter_staged()] == [events[0].sha256]


async def test_kafka_unreachable_answers_out_of_resources(
    stack_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(
        stack_settings,
        tmp_path,
        kafka_bootstrap="127.0.0.1:1",
        kafka_request_timeout_s=3.0,
        dicom_scp_publish_timeout_s=5.0,
    )
    caplog.set_level(logging.INFO)
    path = write_study(mr_study(n_series=1, slices=1, rows=16, cols=16, seed=10), tmp_path / "one")[0]
    with DicomListener(settings) as listener:
        assert listener.kafka_connected_at_start is False
        assert any(r.levelno == logging.ERROR and "Kafka is unreachable" in r.getMessage() for r in caplog.records)
        # Still answers C-ECHO, and C-STORE with a retryable failure.
        port = listener.address[1]
        echo = await _run(ECHOSCU, "-aec", AET, "127.0.0.1", str(port))
        assert echo.returncode == 0, echo.stderr
        for _ in range(2):  # the second one is inside the reconnect back-off
            status = await asyncio.to_thread(_send_raw, port, path)
            assert status == STATUS_OUT_OF_RESOURCES
        # Nothing half-recorded: no staged file, nothing quarantined.
        assert list(listener.store.iter_staged()) == []
        assert not any(settings.quarantine_dir.iterdir())


async def test_stop_is_clean_and_frees_the_port(stack_settings: Settings, tmp_path: Path) -> None:
    settings = _settings(stack_settings, tmp_path)
    await ensure_topics(settings)
    listener = DicomListener(settings)
    listener.start()
    port = listener.address[1]
    path = write_study(mr_study(n_series=1, slices=3, rows=16, cols=16, seed=12), tmp_path / "s")
    result = await _dcmtk_store(port, tmp_path / "s")
    assert result.returncode == 0, result.stderr
    await asyncio.to_thread(listener.stop)
    assert len(list(listener.store.iter_staged())) == len(path)
    ae = AE()
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert not assoc.is_established


async def test_too_many_associations_are_rejected_and_logged(
    stack_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(stack_settings, tmp_path, dicom_scp_max_associations=1)
    caplog.set_level(logging.INFO)
    with DicomListener(settings) as listener:
        port = listener.address[1]
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        held = await asyncio.to_thread(ae.associate, "127.0.0.1", port, ae_title=AET)
        assert held.is_established
        try:
            second = await _run(ECHOSCU, "-aet", "SECOND", "-aec", AET, "127.0.0.1", str(port))
            assert second.returncode != 0
        finally:
            held.release()
        third = await _run(ECHOSCU, "-aet", "THIRD", "-aec", AET, "127.0.0.1", str(port))
        assert third.returncode == 0, third.stderr
    [record] = [r for r in caplog.records if r.getMessage() == "association rejected"]
    assert record.calling_aet == "SECOND"  # type: ignore[attr-defined]
    assert "too many associations" in record.reason  # type: ignore[attr-defined]


async def test_an_object_above_the_size_limit_is_refused_with_a_clear_status_and_logged(
    stack_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """dcmtk's storescu and pynetdicom both get 0xA700 with an Error Comment naming the
    size; nothing is staged or published, and a small object on the same listener still
    goes through."""
    settings = _settings(stack_settings, tmp_path, dicom_scp_max_object_bytes=64 * 1024)
    await ensure_topics(settings)
    caplog.set_level(logging.INFO)
    big = write_study(mr_study(n_series=1, slices=1, rows=256, cols=256, seed=11), tmp_path / "big")[0]
    small = write_study(mr_study(n_series=1, slices=1, rows=16, cols=16, seed=12), tmp_path / "small")[0]
    assert big.stat().st_size > 64 * 1024 > small.stat().st_size
    with DicomListener(settings) as listener:
        port = listener.address[1]
        status, comment = await asyncio.to_thread(_send_with_comment, port, big)
        assert status == STATUS_OUT_OF_RESOURCES
        assert re.fullmatch(r"object too large: \d+ bytes, limit 65536", comment), comment
        dcmtk = await _dcmtk_store(port, big, "MODALITY", "-v")
        assert dcmtk.returncode != 0, "storescu reports the failure in its exit status"
        assert "Received Store Response (Refused: OutOfResources)" in dcmtk.stderr, dcmtk.stderr
        assert await asyncio.to_thread(_send_raw, port, small) == 0x0000
        events = await _events(settings, 1)
        assert [e.sop_instance_uid for e in events] == [_sop_uid(small)], "only the small one was published"
        assert len(list(listener.store.iter_staged())) == 1, "the refused object was not staged"
    refusals = [r for r in caplog.records if "object too large" in r.getMessage()]
    assert len(refusals) == 2 and all(r.levelno == logging.WARNING for r in refusals)


def _send_with_comment(port: int, path: Path) -> tuple[int, str]:
    ae = AE(ae_title="PYNETDICOM")
    meta = pydicom.filereader.read_file_meta_info(path)
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return int(status.Status), str(status.get("ErrorComment", ""))
    finally:
        assoc.release()
