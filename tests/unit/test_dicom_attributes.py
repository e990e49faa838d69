"""The shared attribute reader (cohortstream.dicom_attributes) and the structural check
(cohortstream.dicom_integrity): attributes → event, leniency, truncation and garbage."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from cohortstream.dicom_attributes import (
    DATASET_FIELDS,
    UnreadableInstanceError,
    dataset_attributes,
    instance_event,
    read_instance_attributes,
)
from cohortstream.dicom_integrity import IncompleteDicomError, check_part10_structure
from cohortstream.events import DicomInstanceReceived
from cohortstream.staging import StagingStore
from cohortstream.synthetic import mr_study, write_study

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
    assert attrs["transfer_syntax_uid"] == transfer_syntax
    assert attrs["sop_instance_uid"] == full.SOPInstanceUID
    assert attrs["sop_class_uid"] == full.SOPClassUID
    assert attrs["study_instance_uid"] == full.StudyInstanceUID
    assert attrs["series_instance_uid"] == full.SeriesInstanceUID
    assert attrs["patient_id"] == str(full.get("PatientID", "") or "")
    if modality is not None:
        assert attrs["modality"] == modality
    if "SeriesNumber" in full and full.SeriesNumber not in (None, ""):
        assert attrs["series_number"] == int(full.SeriesNumber)


def test_event_from_a_ct_file(tmp_path: Path) -> None:
    path = _testfile("CT_small.dcm")
    staged = StagingStore(tmp_path).stage_file(path)
    attrs = read_instance_attributes(path)
    received = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    event = instance_event(
        attrs, staged, producer="dicom-scp", calling_aet="CTSCANNER", called_aet="COHORTSTREAM", received_at=received
    )
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
    ds = _mr(
        PatientAge="about forty",
        PatientSex="X",
        StudyDate="2024-13-45",
        SeriesNumber=None,
        Modality=None,
        SeriesDescription="  ",
    )
    attrs = read_instance_attributes(_write(ds, tmp_path / "a.dcm"))
    assert attrs["patient_age"] is None and attrs["patient_sex"] is None and attrs["study_date"] is None
    assert attrs["series_number"] is None and attrs["series_description"] is None
    assert attrs["modality"] == ""
    assert attrs["instance_number"] == 1
    assert attrs["body_part_examined"] == "HEAD"


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


def test_dataset_fields_are_derived_from_the_event_model() -> None:
    """The mapping is computed from DicomInstanceReceived; pinned here so that a new event
    field named after a DICOM keyword (read from the object from then on) is noticed."""
    assert dict(DATASET_FIELDS) == {
        "sop_class_uid": "SOPClassUID",
        "sop_instance_uid": "SOPInstanceUID",
        "study_instance_uid": "StudyInstanceUID",
        "series_instance_uid": "SeriesInstanceUID",
        "transfer_syntax_uid": "TransferSyntaxUID",
        "patient_id": "PatientID",
        "patient_sex": "PatientSex",
        "patient_age": "PatientAge",
        "study_date": "StudyDate",
        "study_description": "StudyDescription",
        "series_description": "SeriesDescription",
        "series_number": "SeriesNumber",
        "instance_number": "InstanceNumber",
        "modality": "Modality",
        "body_part_examined": "BodyPartExamined",
    }
    # Every other field of the event is set by whoever builds it (instance_event's keywords
    # or the Event base class): together they are the whole model, nothing twice.
    rest = {
        "event_id",
        "emitted_at",
        "producer",
        "calling_aet",
        "called_aet",
        "size_bytes",
        "sha256",
        "staged_uri",
        "received_at",
        "orthanc_instance_id",
        "orthanc_origin",
        "orthanc_change_seq",
    }
    assert set(DATASET_FIELDS) | rest == set(DicomInstanceReceived.model_fields)
    assert not set(DATASET_FIELDS) & rest


def test_in_memory_dataset_reads_like_its_file(tmp_path: Path) -> None:
    ds = _mr(PatientSex="f", PatientAge="042y")
    path = _write(ds, tmp_path / "a.dcm")
    from_file = read_instance_attributes(path)
    assert dataset_attributes(pydicom.dcmread(path)) == from_file
    assert (from_file["patient_sex"], from_file["patient_age"]) == ("F", "042Y")
    assert from_file["sop_instance_uid"] == ds.SOPInstanceUID
    assert isinstance(from_file["study_date"], date) and isinstance(from_file["series_number"], int)


def _attributes_by_dcmread(path: Path) -> Any:
    """The reference: pydicom parses the whole header and converts each value itself."""
    try:
        transfer_syntax = check_part10_structure(path)
        return dataset_attributes(pydicom.dcmread(path, stop_before_pixels=True), transfer_syntax_uid=transfer_syntax)
    except Exception as exc:
        return type(exc).__name__


def _attributes_by_scan(path: Path) -> Any:
    try:
        return read_instance_attributes(path)
    except UnreadableInstanceError as exc:
        cause = exc.__cause__
        return type(cause).__name__ if cause is not None and not isinstance(cause, IncompleteDicomError) else "x"


def test_the_scan_reads_what_dcmread_reads_for_every_pydicom_test_file() -> None:
    """The listener reads the attributes from the raw bytes its structural walk collected
    (no second parse): on every file pydicom ships, character-set files included, that
    gives exactly what dcmread + the same rules give."""
    from pydicom.data import get_charset_files, get_testdata_files

    compared = 0
    for name in sorted({*get_testdata_files("*.dcm"), *get_charset_files("*.dcm")}):
        path = Path(name)
        try:
            check_part10_structure(path)
        except (IncompleteDicomError, OSError):
            continue  # refused before any attribute is read, by both paths alike
        expected = _attributes_by_dcmread(path)
        if isinstance(expected, str):
            assert isinstance(_attributes_by_scan(path), str), path.name
            continue
        assert _attributes_by_scan(path) == expected, path.name
        compared += 1
    assert compared > 50


@pytest.mark.parametrize(
    ("charset", "description", "patient_id"),
    [
        ("ISO_IR 192", "Hirnvolumen Größe – 脳", "PAT-Ü1"),
        ("ISO_IR 100", "Étude cérébrale", "PAT-É2"),
        (["", "ISO 2022 IR 87"], "脳のＭＲＩ", "PAT-3"),
    ],
)
def test_the_scan_decodes_text_in_the_declared_character_set(
    tmp_path: Path, charset: Any, description: str, patient_id: str
) -> None:
    """Descriptions and IDs in the Specific Character Set the data set declares, also
    ISO 2022 with escape sequences, and multi-valued text."""
    ds = _mr(
        SpecificCharacterSet=charset,
        StudyDescription=description,
        SeriesDescription=["first", description],
        PatientID=patient_id,
    )
    path = _write(ds, tmp_path / "charset.dcm")
    attrs = read_instance_attributes(path)
    assert attrs["study_description"] == description
    assert attrs["series_description"] == f"first\\{description}"
    assert attrs["patient_id"] == patient_id
    assert attrs == _attributes_by_dcmread(path)
