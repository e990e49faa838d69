"""BIDS export on the real stack: Orthanc holds the images, the views are built by the
real sinks, dcm2niix converts, and the official validator checks every export.

The cohort: four subjects linked by the registry rules (REDCap ``mrn`` → DICOM
PatientID, ``ehr_id`` → MIMIC subject). Subject A has two MR studies (T1w twice, T2w,
FLAIR; then T1w, T2w and a 4D "task-rest bold" series) and an accepted AI segmentation
of its first T1w; subject B has one study whose third series is a "DTI" series no rule
maps; subject C has one T1w and no EHR; subject D has questionnaires only. Every direct
identifier put in (names, PatientIDs, birth dates, REDCap record ids, EHR subject ids)
is then searched for in every file of the export, NIfTI headers and JSON included, and
so are the original study, lab and REDCap dates (they must be shifted), every DICOM UID
of the source studies and the SEG (they must be replaced or left out) and the free text
put into the DICOM headers and a REDCap notes field (dropped by default). The cohort
CSV and NDJSON exports of the API get the same search.
"""

from __future__ import annotations

import copy
import csv
import gzip
import hashlib
import io
import json
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest
from pydantic import SecretStr
from pydicom.dataset import Dataset

from cohortstream.dicom_attributes import instance_event as listener_event
from cohortstream.dicom_attributes import read_instance_attributes
from cohortstream.events import (
    AnnotationReviewed,
    AnnotationSuggested,
    EhrRecord,
    EhrRecordType,
    RedcapCompletionStatus,
    RedcapRecordChanged,
    RedcapTrigger,
    ReviewDecision,
    SuggestedSegment,
)
from cohortstream.features.spec import default_spec as default_feature_spec
from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.orthanc import OrthancClient
from cohortstream.settings import Settings, SubjectLinkRule
from cohortstream.staging import StagingStore
from cohortstream.synthetic import mr_study, write_study
from consumers.annotation.models import default_registry
from consumers.annotation.seg import build_segmentation
from consumers.annotation.volume import volume_from_datasets
from consumers.annotation_views import ReviewViews, SuggestionViews
from consumers.dicom_views import DicomViews
from consumers.ehr_views import EhrViews
from consumers.features.views import FeatureViews
from consumers.redcap_views import RedcapViews
from export.bids import export_bids
from export.bids.mapping import DEFAULT_RULES
from export.bids.writer import MANIFEST_NAME
from producers.dicom import PRODUCER
from tests.bids_validation import validate_bids, validator_path

pytestmark = [
    pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix is not installed (apt-get install dcm2niix)"),
    pytest.mark.skipif(
        validator_path() is None, reason="bids-validator-deno is not installed (pip install bids-validator-deno)"
    ),
]

REDCAP_URL = "https://redcap.example.org/"
SLICES, ROWS, COLS = 12, 32, 32


def _uid(*parts: object) -> str:
    return "2.25." + str(int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:16], "big"))


# (PatientID, name, birth date, REDCap record id, MIMIC subject id)
PEOPLE = [
    ("PIDXQ0001", "Zorbanova^Kasimira", "19580417", "REC-88123", "77001234"),
    ("PIDXQ0002", "Wendelmoor^Ottokar", "19611103", "REC-88124", "77005678"),
    ("PIDXQ0003", "Quillfeather^Bertrand", "19700229", "REC-88125", None),
    (None, None, "19451201", "REC-88126", "77009012"),
]


#: Free text a technician or a coordinator may type: must never leave in an export.
FREE_TEXT_DICOM = "Came with daughter Ilsebill, lives at Quendelweg 7"
FREE_TEXT_REDCAP = "Neighbour Fridolin drove her; phone number on the paper form"
#: The dates put in (study, lab and REDCap dates): an export holds them shifted only.
ORIGINAL_DATES = [date(2021, 3, 4), date(2022, 3, 8), date(2021, 5, 1), date(2020, 7, 9)]
REDCAP_DATES = ["2024-03-01", "2024-04-02"]
LAB_DATES = ["2021-01-01", "2021-01-02"]


def _personalise(datasets: list[Dataset], person: tuple[Any, ...], study_date: date) -> list[Dataset]:
    pid, name, birth, *_ = person
    for ds in datasets:
        ds.PatientID, ds.PatientName, ds.PatientBirthDate = pid, name, birth
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date.strftime("%Y%m%d")
        ds.OtherPatientIDs = f"{pid}-ALT"
        ds.ImageComments = ds.StudyComments = FREE_TEXT_DICOM
    return datasets


def _bold(study: list[Dataset], seed: int, volumes: int = 4) -> list[Dataset]:
    """A 4D series: the first series' slices repeated over time, as fMRI is acquired."""
    base = [ds for ds in study if int(ds.SeriesNumber) == 1]
    series_uid = _uid("bold", seed)
    out = []
    for t in range(volumes):
        for ds0 in base:
            ds = copy.deepcopy(ds0)
            ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, 9
            ds.SeriesDescription = ds.ProtocolName = "task-rest bold"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid("bold", seed, t, ds0.InstanceNumber)
            ds.AcquisitionNumber = ds.TemporalPositionIdentifier = t + 1
            ds.NumberOfTemporalPositions = volumes
            ds.InstanceNumber = t * 100 + int(ds0.InstanceNumber)
            ds.RepetitionTime, ds.EchoTime = 2000.0, 30.0
            ds.AcquisitionTime = ds.ContentTime = f"0920{2 * t:02d}"
            out.append(ds)
    return out


def _studies() -> list[tuple[int, list[Dataset]]]:
    a1 = _personalise(mr_study(4, SLICES, ROWS, COLS, seed=100, patient_id=PEOPLE[0][0]), PEOPLE[0], date(2021, 3, 4))
    a2 = _personalise(mr_study(2, SLICES, ROWS, COLS, seed=101, patient_id=PEOPLE[0][0]), PEOPLE[0], date(2022, 3, 8))
    a2 += _bold(a2, 101)
    b = _personalise(mr_study(3, SLICES, ROWS, COLS, seed=200, patient_id=PEOPLE[1][0]), PEOPLE[1], date(2021, 5, 1))
    for ds in b:
        if int(ds.SeriesNumber) == 3:
            ds.SeriesDescription = "DTI 30dir"
    c = _personalise(mr_study(1, SLICES, ROWS, COLS, seed=300, patient_id=PEOPLE[2][0]), PEOPLE[2], date(2020, 7, 9))
    return [(0, a1), (0, a2), (1, b), (2, c)]


def _redcap_events() -> list[RedcapRecordChanged]:
    events = []
    for n, (pid, _, birth, record, mimic) in enumerate(PEOPLE):
        common = {
            "producer": "test",
            "redcap_url": REDCAP_URL,
            "project_id": "42",
            "record_id": record,
            "completion_status": RedcapCompletionStatus.COMPLETE,
            "trigger": RedcapTrigger.FULL_SYNC,
        }
        sex, label = ("2", "Female") if n % 2 == 0 else ("1", "Male")
        events.append(
            RedcapRecordChanged(
                **common,
                event_name="baseline_arm_1",
                instrument="demographics",
                values={
                    "mrn": pid or f"NOIMG{n}",
                    "ehr_id": mimic or "",
                    "sex": sex,
                    "dob": f"{birth[:4]}-{birth[4:6]}-{birth[6:]}",
                    "visit_date": "2024-03-01",
                    "coordinator_notes": FREE_TEXT_REDCAP,
                },
                labels={"sex": label},
            )
        )
        for event_name, score in (("baseline_arm_1", 10 + n), ("followup_1_arm_1", 12 + n)):
            events.append(
                RedcapRecordChanged(
                    **common,
                    event_name=event_name,
                    instrument="moca",
                    values={
                        "moca_total": score,
                        "moca_smoker": n % 2 == 0,
                        "moca_date": "2024-04-02",
                    },
                    labels={"moca_smoker": "Yes" if n % 2 == 0 else "No"},
                )
            )
    return events


def _ehr_events() -> list[EhrRecord]:
    records = []
    for n, person in enumerate(PEOPLE):
        mimic = person[4]
        if mimic is None:
            continue
        common = {"producer": "test", "source": "mimic-iv", "subject_id": mimic}
        records.append(
            EhrRecord(
                **common,
                source_file="patients.csv",
                source_row_id=f"p{mimic}",
                record_type=EhrRecordType.PATIENT,
                attributes={"gender": "F" if n % 2 == 0 else "M", "anchor_age": str(60 + n)},
            )
        )
        for k, value in enumerate((1.1 + n / 10, 0.9 + n / 10)):
            records.append(
                EhrRecord(
                    **common,
                    source_file="labevents.csv",
                    source_row_id=f"l{mimic}{k}",
                    record_type=EhrRecordType.LAB,
                    code_system="mimic-itemid",
                    code="50912",
                    display="Creatinine",
                    value_number=value,
                    unit="mg/dL",
                    effective_at=datetime(2021, 1, 1 + k, tzinfo=UTC),
                )
            )
        records.append(
            EhrRecord(
                **common,
                source_file="diagnoses_icd.csv",
                source_row_id=f"d{mimic}",
                record_type=EhrRecordType.DIAGNOSIS,
                code_system="ICD-10",
                code="I10",
                display="Essential (primary) hypertension",
            )
        )
    return records


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return stack_settings.model_copy(
        update={
            "staging_dir": tmp_path / "staging",
            "bids_pseudonym_key": SecretStr("test-key-" + uuid.uuid4().hex),
            "bids_dataset_license": "CC0",
            "bids_dataset_authors": ["cohortstream test suite"],
            "subject_link_rules": [
                SubjectLinkRule(redcap_field="mrn", target="dicom_patient_id"),
                SubjectLinkRule(redcap_field="ehr_id", target="ehr_subject_id", ehr_source="mimic-iv"),
            ],
        }
    )


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Any]:
    client = mongo_client(settings)
    yield mongo_database(client, settings)
    await client.drop_database(settings.mongo_database)
    await client.close()


async def _apply(sink: Any, events: list[Any], applied: list[Any] | None = None) -> None:
    await sink.setup()
    try:
        await sink.apply(events)
    finally:
        await sink.close()
    if applied is not None:
        applied.extend(events)


async def _build_features(settings: Settings, events: list[Any]) -> None:
    """The features lane's sink over the same events, flushed at once (phenotype/features.tsv)."""
    sink = FeatureViews(settings)
    await sink.setup()
    try:
        await sink.apply(events)
        await sink.flush_due(everything=True)
    finally:
        await sink.close()


async def _load_cohort(settings: Settings, tmp_path: Path) -> dict[str, Any]:
    store = StagingStore(settings.staging_dir)
    archive = OrthancClient(settings)
    await archive.setup()
    events = []
    t1_first: list[Dataset] = []
    uids: set[str] = set()
    try:
        for index, (_person, datasets) in enumerate(_studies()):
            if index == 0:
                t1_first = [ds for ds in datasets if int(ds.SeriesNumber) == 1]
            uids |= _uids_of(datasets)
            for path in write_study(datasets, tmp_path / f"study{index}"):
                await archive.store_bytes(path.read_bytes(), f"test instance of study {index}")
                staged = store.stage_file(path)
                events.append(
                    listener_event(
                        read_instance_attributes(staged.path),
                        staged,
                        producer=PRODUCER,
                        calling_aet="TESTSCU",
                        called_aet="COHORTSTREAM",
                        received_at=datetime.now(UTC),
                    )
                )
        # An accepted AI segmentation of subject A's first T1w: an off-centre block, so a
        # flipped or transposed export would not line up.
        volume = volume_from_datasets(t1_first)
        labels = np.zeros(volume.array.shape, dtype=np.uint8)
        labels[2:6, 4:14, 8:24] = 1
        spec = default_registry().get("phantom-sphere-unet")
        seg = build_segmentation(volume, labels, spec)
        seg_path = tmp_path / "seg.dcm"
        seg.save_as(seg_path)
        uids |= _uids_of([seg])
        await archive.store_bytes(seg_path.read_bytes(), "test SEG")
    finally:
        await archive.close()
    applied: list[Any] = []
    await _apply(DicomViews(settings), events, applied)
    await _apply(RedcapViews(settings), _redcap_events(), applied)
    await _apply(EhrViews(settings), _ehr_events(), applied)
    annotation_id = uuid.uuid4()
    await _apply(
        SuggestionViews(settings),
        [
            AnnotationSuggested(
                producer="test",
                annotation_id=annotation_id,
                study_instance_uid=volume.reference.study_instance_uid,
                series_instance_uid=volume.reference.series_instance_uid,
                model_name=spec.name,
                model_version=spec.version,
                seg_sop_instance_uid=str(seg.SOPInstanceUID),
                device="cpu",
                inference_s=0.1,
                uncertainty=0.2,
                segments=[
                    SuggestedSegment(
                        segment_number=1, label=spec.segments[0].label, voxel_count=int(labels.sum()), volume_ml=1.0
                    )
                ],
            )
        ],
        applied,
    )
    await _apply(
        ReviewViews(settings),
        [
            AnnotationReviewed(
                producer="test",
                annotation_id=annotation_id,
                study_instance_uid=volume.reference.study_instance_uid,
                series_instance_uid=volume.reference.series_instance_uid,
                reviewer="dr-test",
                decision=ReviewDecision.ACCEPTED,
                reviewed_at=datetime.now(UTC) + timedelta(seconds=1),
            )
        ],
        applied,
    )
    # Features: the packaged spec, measuring this model's segment.
    feature_spec = default_feature_spec().model_dump(mode="json")
    feature_spec["imaging"]["measurements"] = [
        {"name": "brain_volume", "model": spec.name, "segment": spec.segments[0].label}
    ]
    (tmp_path / "features.json").write_text(json.dumps(feature_spec))
    await _build_features(settings.model_copy(update={"features_spec_file": str(tmp_path / "features.json")}), applied)
    return {"labels": labels, "t1_series": volume.reference.series_instance_uid, "volume": volume, "uids": uids}


def _uids_of(datasets: list[Dataset]) -> set[str]:
    """Every instance-identifying UID the data sets carry (not the standard's class and
    transfer syntax UIDs, which are the same for everyone)."""
    names = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
    return {str(ds[name].value) for ds in datasets for name in names if name in ds}


def _dates_put_in() -> list[str]:
    """The original dates, in every spelling an export might use."""
    spelled = [d.strftime(fmt) for d in ORIGINAL_DATES for fmt in ("%Y%m%d", "%Y-%m-%d")]
    return spelled + REDCAP_DATES + LAB_DATES


def assert_nothing_identifying(files: dict[str, bytes], uids: set[str]) -> None:
    """No direct identifier, original date, source UID or free text in any file (names included)."""
    searched = {
        "identifier": _identifiers(),
        "original date": _dates_put_in(),
        "DICOM UID": sorted(uids),
        "free text": [FREE_TEXT_DICOM, FREE_TEXT_REDCAP, "Quendelweg", "Fridolin"],
    }
    for kind, needles in searched.items():
        for needle_text in needles:
            needle = needle_text.encode().lower()
            hits = [name for name, data in files.items() if needle in data.lower() or needle in name.lower().encode()]
            assert not hits, f"{kind} {needle_text!r} found in {hits}"


def _identifiers() -> list[str]:
    found = []
    for pid, name, birth, record, mimic in PEOPLE:
        found += [record, birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"]
        if pid:
            found += [pid, *name.split("^"), name]
        if mimic:
            found.append(mimic)
    return found


def _files(root: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            out[str(path.relative_to(root))] = gzip.decompress(data) if path.suffix == ".gz" else data
    return out


async def test_bids_export_validates_holds_no_identifiers_and_is_incremental(
    settings: Settings, database: Any, tmp_path: Path
) -> None:
    cohort = await _load_cohort(settings, tmp_path)
    out = tmp_path / "bids"
    stages: list[str] = []
    report = await export_bids(settings, out, progress=lambda stage, done, total: stages.append(stage))
    print(json.dumps({k: v for k, v in report.to_dict().items() if k != "files_written"}, indent=1, default=str))
    validate_bids(out)
    validate_bids(out / "derivatives" / "cohortstream-annotations", recursive=False)

    # Layout: 3 participants with imaging (D has questionnaires only), sessions per study.
    assert len(report.participants) == 3 and stages[-1] == "done"
    assert [s["reason"] for s in report.skipped_subjects] == ["no exportable MR series"]
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz"))
    anat = [n for n in names if "/anat/" in n and not n.startswith("derivatives")]
    assert (
        sum(n.endswith("_run-1_T1w.nii.gz") for n in anat) == 1
        and sum(n.endswith("_run-2_T1w.nii.gz") for n in anat) == 1
    )
    assert sum(n.endswith("_T2w.nii.gz") for n in anat) == 3 and sum(n.endswith("_FLAIR.nii.gz") for n in anat) == 1
    bold = [n for n in names if n.endswith("_task-rest_bold.nii.gz")]
    assert len(bold) == 1 and "/ses-02/func/" in bold[0] and nib.load(out / bold[0]).shape[3] == 4
    assert json.loads((out / bold[0].replace(".nii.gz", ".json")).read_text())["TaskName"] == "rest"
    assert [s.series_description for s in report.skipped_series] == ["DTI 30dir"]
    assert all(p.startswith("sub-p") for p in report.participants)
    participants = (out / "participants.tsv").read_text().splitlines()
    assert participants[0] == "participant_id\tage\tsex" and len(participants) == 4
    for name in ("moca_baseline_arm_1", "moca_followup_1_arm_1", "demographics", "labs", "diagnoses"):
        assert (out / "phenotype" / f"{name}.tsv").exists() and (out / "phenotype" / f"{name}.json").exists()
    demographics = (out / "phenotype" / "demographics.tsv").read_text().splitlines()[0].split("\t")
    assert "mrn" not in demographics and "dob" not in demographics and "ehr_id" not in demographics
    assert "visit_date" in demographics and "sex" in demographics
    # The feature matrix as a phenotype table: one row per participant, every column described.
    features = (out / "phenotype" / "features.tsv").read_text().splitlines()
    header = features[0].split("\t")
    assert header[:3] == ["participant_id", "age", "sex"] and "subject_id" not in header and len(features) == 4
    assert {line.split("\t")[0] for line in features[1:]} == set(report.participants)
    features_sidecar = json.loads((out / "phenotype" / "features.json").read_text())
    assert set(header) <= set(features_sidecar) and features_sidecar["img_brain_volume_ml"]["Units"] == "mL"
    accepted = [line.split("\t") for line in features[1:]]
    assert sorted(row[header.index("img_brain_volume_status")] for row in accepted).count("accepted") == 1
    moca_sidecar = json.loads((out / "phenotype" / "moca_followup_1_arm_1.json").read_text())
    assert moca_sidecar["moca_smoker"]["Levels"] == {"0": "No", "1": "Yes"}
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.10.0" and description["DatasetType"] == "raw"

    # The accepted segmentation lies on the source image's grid, voxel for voxel.
    dseg = [n for n in names if n.endswith("_dseg.nii.gz")]
    assert len(dseg) == 1 and dseg[0].startswith("derivatives/cohortstream-annotations/")
    seg_img, source_img = (
        nib.load(out / dseg[0]),
        nib.load(out / next(n for n in anat if n.endswith("_run-1_T1w.nii.gz"))),
    )
    assert np.allclose(seg_img.affine, source_img.affine, atol=1e-3) and seg_img.shape == source_img.shape[:3]
    expected_ras = set()
    volume = cohort["volume"]
    for k, r, c in zip(*np.nonzero(cohort["labels"]), strict=True):
        lps = volume.affine @ np.array([k, r, c, 1.0])
        ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
        expected_ras.add(tuple(np.rint(np.linalg.inv(seg_img.affine) @ ras)[:3].astype(int)))
    found_voxels = {tuple(v) for v in np.argwhere(np.asarray(seg_img.dataobj) == 1)}
    assert found_voxels == expected_ras
    assert (out / dseg[0].replace(".nii.gz", ".tsv")).read_text().startswith("index\tname\n0\tbackground\n1\t")

    # No direct identifier, original date, source UID or free text anywhere: names of
    # files, contents, decompressed NIfTI, JSON.
    files = _files(out)
    assert len(cohort["uids"]) > 100
    assert_nothing_identifying(files, cohort["uids"])
    # The dates are shifted, not dropped: the REDCap visit date is still a date, and the
    # sidecar says it was shifted; the free-text field is gone, and the sidecar says why.
    rows = [line.split("\t") for line in (out / "phenotype" / "demographics.tsv").read_text().splitlines()]
    visit = [row[rows[0].index("visit_date")] for row in rows[1:]]
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", v) and v != REDCAP_DATES[0] for v in visit), visit
    demographics_sidecar = json.loads((out / "phenotype" / "demographics.json").read_text())
    assert "date shifted" in demographics_sidecar["visit_date"]["Description"]
    assert "coordinator_notes" not in rows[0] and "coordinator_notes" not in demographics_sidecar
    assert any("coordinator_notes" in w and "free text" in w for w in report.warnings), report.warnings

    for name, data in files.items():
        if name.endswith(".nii"):
            header = nib.Nifti1Image.from_bytes(data).header
            assert header["descrip"].item() == b"" and header["aux_file"].item() == b""

    # Incremental: a second export writes nothing; a removed file comes back alone.
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert set(manifest["files"]) == {n for n in files if n != MANIFEST_NAME}
    again = await export_bids(settings, out)
    assert again.files_written == [] and again.files_removed == [] and again.files_unchanged == len(manifest["files"])
    victim = next(n for n in anat if n.endswith("_T2w.nii.gz"))
    (out / victim).unlink()
    third = await export_bids(settings, out)
    assert sorted(third.files_written) == sorted([victim, "CHANGES"])
    validate_bids(out)
    assert not list(out.rglob("*.part"))

    # A rule change renames files from what is already exported: no Orthanc read, no
    # dcm2niix (a missing executable would make every conversion fail).
    rules = [r.model_dump() | ({"acq": "tse"} if r.suffix == "T2w" else {}) for r in DEFAULT_RULES]
    renamed = await export_bids(
        settings.model_copy(update={"bids_mapping_rules": rules, "bids_dcm2niix": "/nonexistent"}), out
    )
    assert len(renamed.scans) == len(report.scans) and not [s for s in renamed.skipped_series if "dcm2niix" in s.reason]
    assert sum("_acq-tse_T2w.nii.gz" in n for n in renamed.files_written) == 3
    assert sum(n.endswith("_T2w.nii.gz") for n in renamed.files_removed) == 3
    validate_bids(out)

    # A cohort of one subject (by identifier): the others' files are removed.
    only = await export_bids(settings, out, subjects=[f"dicom:{PEOPLE[2][0]}"])
    assert len(only.participants) == 1 and only.files_removed
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("sub-")) == [only.participants[0]]
    validate_bids(out)


async def test_bids_export_as_an_api_job_with_progress_admin_only(
    settings: Settings, database: Any, tmp_path: Path
) -> None:
    from api.auth import Role
    from cohortstream.admin import ensure_topics
    from tests.integration.test_annotation_api import api_client, create_key
    from tests.polling import eventually

    await _load_cohort(settings, tmp_path)
    settings = settings.model_copy(update={"bids_export_root": tmp_path / "exports"})
    await ensure_topics(settings)  # the job's start is audited on the audit topic
    researcher = await create_key(settings, Role.RESEARCHER, name="reader")
    async with api_client(settings, key=researcher) as api:
        refused = await api.post("/exports/bids", json={"name": "all"})
        assert refused.status_code == 403
    async with api_client(settings) as api:
        bad = await api.post("/exports/bids", json={"name": "../escape"})
        assert bad.status_code == 422 and bad.json()["field"] == "name"
        unknown = await api.post("/exports/bids", json={"name": "x", "cohrt": {}})
        assert unknown.status_code == 422 and unknown.json()["field"] == "cohrt"
        started = await api.post("/exports/bids", json={"name": "all"})
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]

        async def finished() -> dict[str, Any] | None:
            job = (await api.get(f"/exports/{job_id}")).json()
            return job if job["status"] != "running" else None

        job = await eventually(finished, timeout_s=300, what="the export job to finish")
    assert job["status"] == "done", job.get("error")
    assert job["progress"]["stage"] == "done" and job["report"]["participants"] == 3
    assert job["requested_by"] == "test-admin"
    out = tmp_path / "exports" / "all"
    assert Path(job["outdir"]) == out
    validate_bids(out)


async def test_the_cohort_and_feature_exports_hold_nothing_identifying_either(
    settings: Settings, database: Any, tmp_path: Path
) -> None:
    """The same cohort, the same search, on the API's cohort export (CSV, NDJSON) and its
    feature matrix (CSV, Parquet): the other exports that leave the system with personal
    data."""
    from api.app import create_api
    from api.auth import Role
    from cohortstream.admin import ensure_topics
    from tests.integration.test_annotation_api import create_key

    cohort = await _load_cohort(settings, tmp_path)
    await ensure_topics(settings)
    key = await create_key(settings, Role.RESEARCHER, "exporter")
    app = create_api(settings)
    files: dict[str, bytes] = {}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api", headers={"X-API-Key": key}, timeout=120
        ) as client,
    ):
        for fmt in ("csv", "ndjson"):
            response = await client.post(f"/cohorts/export?format={fmt}", json={})
            assert response.status_code == 200, response.text
            files[f"cohort.{fmt}"] = response.content
        for fmt in ("csv", "parquet"):
            response = await client.post(f"/cohorts/features?format={fmt}", json={})
            assert response.status_code == 200, response.text
            files[f"features.{fmt}"] = response.content
    rows = list(csv.DictReader(io.StringIO(files["cohort.csv"].decode())))
    assert len(rows) == 4 and all(re.fullmatch(r"S[0-9A-F]{15}", row["subject_id"]) for row in rows)
    assert {"sources", "modalities", "sex", "age_years"} <= set(rows[0]), "the research columns stay"
    assert [json.loads(line)["subject_id"] for line in files["cohort.ndjson"].splitlines()] == [
        row["subject_id"] for row in rows
    ]
    features = list(csv.DictReader(io.StringIO(files["features.csv"].decode())))
    assert len(features) == 4 and {row["subject_id"] for row in features} == {row["subject_id"] for row in rows}
    assert_nothing_identifying(files, cohort["uids"])
