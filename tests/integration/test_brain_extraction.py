"""Brain extraction on a real MR volume, end to end on the real stack.

nilearn's MNI152 T1 template (1 mm, a real MR average) is written as DICOM MR series by
the project's own code (LPS geometry), twice: slices numbered and sent foot to head, and
head to foot with no BodyPartExamined (the series description rule must pick the model
then). A third series is the 2 mm template labelled as 1 mm: a brain of about 240 mL,
which the plausibility check must flag. dcmtk's storescu pushes all three through the
C-STORE listener; each series completes, the annotation worker runs the brain model, and
a DICOM SEG lands in Orthanc that passes dciodvfy and matches nilearn's MNI152 brain mask
with Dice >= 0.95. The suggestions show in ``GET /subjects/{id}`` and in the review queue
with their uncertainty (the implausible one flagged), and accept and correct work as
for the demo model.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from cohortstream.settings import Settings
from consumers.annotation.brain import BRAIN_MODEL_NAME, BRAIN_SPEC
from consumers.annotation.metrics import dice
from consumers.annotation.seg import build_segmentation, read_label_map
from consumers.annotation.series_writer import SeriesInfo, lps_slices_from_nifti, series_from_volume
from consumers.annotation.volume import volume_from_datasets
from tests.annotation_api_data import dataset_bytes
from tests.annotation_stack import annotation_stack
from tests.dcmtk import STORESCU, start_storescu
from tests.integration.test_annotation_api import api_client
from tests.listener_settings import listener_settings
from tests.polling import eventually

nilearn_datasets = pytest.importorskip("nilearn.datasets", reason="nilearn (dev extra) ships the MNI152 template")
DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return listener_settings(
        stack_settings, tmp_path, series_quiet_period_s=2.0, annotation_device="cpu", annotation_cpu_threads=2
    )


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[Any]:
    """Listener, view worker and annotation worker; yields the views database."""
    async with annotation_stack(settings) as database:
        yield database


def _by_position(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Slices along the normal, as the worker's volume orders them (here: axial, +z)."""
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def _write(datasets: list[pydicom.Dataset], directory: Path) -> None:
    directory.mkdir(parents=True)
    for n, ds in enumerate(datasets):  # file names follow the list: the stacking order under test
        ds.save_as(directory / f"{n:04d}.dcm", enforce_file_format=True)


@pytest.mark.skipif(not Path(STORESCU).exists(), reason="dcmtk is not installed (tests/run.sh installs it)")
@pytest.mark.skipif(
    DCIODVFY is None, reason="dciodvfy (Debian dicom3tools) is not installed (tests/run.sh installs it)"
)
async def test_real_mr_series_get_a_brain_mask_suggestion_reviewed_through_the_api(
    stack: Any, settings: Settings, tmp_path: Path
) -> None:
    database = stack
    template = nilearn_datasets.load_mni152_template(resolution=1)
    mask = nilearn_datasets.load_mni152_brain_mask(resolution=1)
    image, affine = lps_slices_from_nifti(template.get_fdata(), template.affine)
    reference, _ = lps_slices_from_nifti(mask.get_fdata() > 0.5, mask.affine)
    small = nilearn_datasets.load_mni152_template(resolution=2)
    small_image, small_affine = lps_slices_from_nifti(small.get_fdata(), small.affine)
    small_affine[:3, :3] /= 2.0  # 2 mm voxels labelled as 1 mm: a brain an eighth of its size

    patient_id = f"BRAIN-{uuid.uuid4().hex[:8]}"
    study_key = uuid.uuid4().hex
    ascending = series_from_volume(image, affine, SeriesInfo(patient_id, study_key, "asc", series_number=1))
    descending = series_from_volume(
        image,
        affine,
        SeriesInfo(
            patient_id,
            study_key,
            "desc",
            series_number=2,
            body_part=None,
            series_description="T1 MPRAGE brain",
            protocol_name="t1_mprage",
        ),
        descending=True,
    )
    shrunk = series_from_volume(small_image, small_affine, SeriesInfo(patient_id, study_key, "small", series_number=3))
    assert [int(ds.InstanceNumber) for ds in descending[:2]] == [1, 2]
    assert descending[0].ImagePositionPatient[2] > descending[1].ImagePositionPatient[2]  # head to foot
    for name, datasets in (("asc", ascending), ("desc", descending), ("small", shrunk)):
        _write(datasets, tmp_path / "study" / name)
    process = await start_storescu(settings, tmp_path / "study")
    output, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    assert process.returncode == 0, output.decode(errors="replace")[-2000:]

    uids = {name: str(ds[0].SeriesInstanceUID) for name, ds in (("asc", ascending), ("desc", descending))}
    uids["small"] = str(shrunk[0].SeriesInstanceUID)

    async def suggestions() -> dict[str, dict[str, Any]] | None:
        docs = await database.annotations.find({"series_instance_uid": {"$in": list(uids.values())}}).to_list()
        found = {d["series_instance_uid"]: d for d in docs if d.get("status") == "suggested"}
        return found if len(found) == len(uids) else None

    found = await eventually(suggestions, timeout_s=420, what="brain suggestions for the three series")
    docs = {name: found[uid] for name, uid in uids.items()}
    for name, doc in docs.items():
        assert doc["model_name"] == BRAIN_MODEL_NAME and doc["model_version"] == BRAIN_SPEC.version, name
        assert 0.0 <= doc["uncertainty"] <= 1.0, name
        (segment,) = doc["segments"]
        assert segment["label"] == "Brain" and segment["property_type"].startswith("SCT:12738006:"), name
    for name in ("asc", "desc"):
        assert docs[name]["flags"] == [], docs[name]["flag_reasons"]
        assert 1500 < docs[name]["segments"][0]["volume_ml"] < 2200
    assert docs["small"]["flags"] == ["implausible"]
    assert "outside the plausible 800–2200 mL" in docs["small"]["flag_reasons"][0]

    auth = (settings.orthanc_username, settings.orthanc_password.get_secret_value())
    async with httpx.AsyncClient(base_url=settings.orthanc_url, auth=auth, timeout=120) as orthanc:
        for name, datasets in (("asc", ascending), ("desc", descending)):
            found_seg = await orthanc.post("/tools/lookup", content=docs[name]["seg_sop_instance_uid"])
            (hit,) = [h for h in found_seg.json() if h["Type"] == "Instance"]
            seg_bytes = (await orthanc.get(f"/instances/{hit['ID']}/file")).content
            seg_path = tmp_path / f"{name}-seg.dcm"
            seg_path.write_bytes(seg_bytes)
            run = subprocess.run([str(DCIODVFY), str(seg_path)], capture_output=True, text=True, timeout=120)
            report = run.stdout + run.stderr
            assert not [line for line in report.splitlines() if line.startswith("Error")], report[-3000:]
            seg = hd.seg.segread(io.BytesIO(seg_bytes))
            assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uids[name]
            labels = read_label_map(seg, [str(ds.SOPInstanceUID) for ds in _by_position(datasets)])
            score = dice(labels, reference)
            assert score >= 0.95, f"{name}: Dice {score:.4f} against the MNI152 brain mask"

    correction_volume = volume_from_datasets([pydicom.dcmread(io.BytesIO(dataset_bytes(ds))) for ds in descending])
    correction = build_segmentation(
        correction_volume, reference.astype(np.uint8), BRAIN_SPEC, content_label="CORRECTED"
    )
    correction.SeriesInstanceUID = generate_uid()
    correction.SOPInstanceUID = correction.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    async with api_client(settings) as api:
        subject = await api.get(f"/subjects/dicom%3A{patient_id}")
        assert subject.status_code == 200, subject.text
        series_rows = [s for p in subject.json()["imaging"] for st in p["studies"] for s in st["series"]]
        shown = {s["series_instance_uid"]: s["annotations"] for s in series_rows}
        for name, uid in uids.items():
            (brief,) = shown[uid]
            assert brief["annotation_id"] == docs[name]["_id"] and brief["model_name"] == BRAIN_MODEL_NAME
            assert brief["uncertainty"] == pytest.approx(docs[name]["uncertainty"])
        assert shown[uids["small"]][0]["flags"] == ["implausible"]

        queue = (await api.get("/annotations/queue", params={"model": BRAIN_MODEL_NAME, "limit": 500})).json()
        queued = {item["annotation_id"]: item for item in queue["items"]}
        for name in uids:
            item = queued[docs[name]["_id"]]
            assert item["uncertainty"] == pytest.approx(docs[name]["uncertainty"])
        assert queued[docs["small"]["_id"]]["flags"] == ["implausible"]
        uncertainties = [item["uncertainty"] for item in queue["items"]]
        assert uncertainties == sorted(uncertainties, reverse=True)  # least certain first

        accepted = await api.post(f"/annotations/{docs['asc']['_id']}/accept", json={"reviewer": "neuroradiologist"})
        assert accepted.status_code == 202, accepted.text
        corrected = await api.post(
            f"/annotations/{docs['desc']['_id']}/correct",
            data={"reviewer": "neuroradiologist", "reason": "reference mask"},
            files={"file": ("correction.dcm", dataset_bytes(correction), "application/dicom")},
        )
        assert corrected.status_code == 202, corrected.text

        async def shows(annotation_id: str, status: str) -> Any:
            return await database.annotations.find_one({"_id": annotation_id, "status": status})

        await eventually(lambda: shows(docs["asc"]["_id"], "accepted"), timeout_s=60, what="the acceptance")
        after = await eventually(lambda: shows(docs["desc"]["_id"], "corrected"), timeout_s=60, what="the correction")
        queue_after = (await api.get("/annotations/queue", params={"model": BRAIN_MODEL_NAME, "limit": 500})).json()
    assert [h["status"] for h in sorted(after["history"], key=lambda h: h["at"])] == ["suggested", "corrected"]
    assert after["corrected_seg_sop_instance_uid"] == str(correction.SOPInstanceUID)
    pending = {item["annotation_id"] for item in queue_after["items"]}
    assert docs["small"]["_id"] in pending and docs["asc"]["_id"] not in pending and docs["desc"]["_id"] not in pending
