"""AI suggestions end to end on the real stack: a generated phantom MR series pushed by
dcmtk's storescu through the C-STORE listener is archived, completes, is segmented by
the annotation worker with the bundled model, and ends as a DICOM SEG in Orthanc
(served by DICOMweb) whose segment overlaps the true phantom with Dice >= 0.8, and as a
``suggested`` document in the ``annotations`` view. Accepting and correcting it through
the review API appends to its history and stores the correction in Orthanc.
"""

from __future__ import annotations

import asyncio
import io
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
from consumers.annotation.metrics import dice
from consumers.annotation.models import DEFAULT_MODEL_NAME, default_registry
from consumers.annotation.phantoms import phantom_series
from consumers.annotation.seg import build_segmentation, read_label_map
from consumers.annotation.volume import volume_from_datasets
from tests.annotation_api_data import dataset_bytes
from tests.annotation_stack import annotation_stack
from tests.dcmtk import STORESCU, start_storescu
from tests.integration.test_annotation_api import api_client
from tests.integration.test_dicom_pipeline import fresh_seed
from tests.listener_settings import listener_settings
from tests.polling import eventually


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return listener_settings(stack_settings, tmp_path, series_quiet_period_s=2.0, annotation_device="cpu")


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[Any]:
    """Listener, view worker and annotation worker; yields the views database."""
    async with annotation_stack(settings) as database:
        yield database


async def _storescu(settings: Settings, directory: Path) -> None:
    process = await start_storescu(settings, directory)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, output.decode(errors="replace")[-2000:]


@pytest.mark.skipif(not Path(STORESCU).exists(), reason="dcmtk is not installed (tests/run.sh installs it)")
async def test_a_pushed_phantom_becomes_a_seg_in_orthanc_and_a_suggestion_in_the_views(
    stack: Any, settings: Settings, tmp_path: Path
) -> None:
    database = stack
    datasets, truth = phantom_series(fresh_seed(), (32, 64, 64), patient_id=f"PHANTOM-{uuid.uuid4().hex[:6]}")
    series_dir = tmp_path / "phantom"
    series_dir.mkdir()
    for n, ds in enumerate(datasets):
        ds.save_as(series_dir / f"{n:03d}.dcm", enforce_file_format=True)
    series_uid = str(datasets[0].SeriesInstanceUID)
    study_uid = str(datasets[0].StudyInstanceUID)
    await _storescu(settings, series_dir)

    async def suggested() -> dict[str, Any] | None:
        return await database.annotations.find_one({"series_instance_uid": series_uid, "status": "suggested"})

    annotation = await eventually(suggested, timeout_s=240, what="the suggestion for the phantom series")
    assert annotation["model_name"] == "phantom-sphere-unet"
    assert 0.0 <= annotation["uncertainty"] <= 1.0
    (segment,) = annotation["segments"]
    assert segment["label"] == "Sphere" and segment["voxel_count"] > 0 and segment["volume_ml"] > 0
    assert [h["status"] for h in annotation["history"]] == ["suggested"]

    auth = (settings.orthanc_username, settings.orthanc_password.get_secret_value())
    async with httpx.AsyncClient(base_url=settings.orthanc_url, auth=auth, timeout=60) as orthanc:
        found = await orthanc.post("/tools/lookup", content=annotation["seg_sop_instance_uid"])
        (hit,) = [h for h in found.json() if h["Type"] == "Instance"]
        seg_bytes = (await orthanc.get(f"/instances/{hit['ID']}/file")).content
        seg = hd.seg.segread(io.BytesIO(seg_bytes))
        # Orthanc's DICOMweb serves the SEG like any other instance.
        metadata = await orthanc.get(
            f"/dicom-web/studies/{study_uid}/series/{seg.SeriesInstanceUID}/instances/{seg.SOPInstanceUID}/metadata"
        )
        assert metadata.status_code == 200
        assert metadata.json()[0]["00080060"]["Value"] == ["SEG"]

    # Slices in the volume's order: sorted along the normal, as the worker sorted them.
    order = sorted(
        datasets,
        key=lambda ds: float(
            np.dot(
                np.cross(
                    np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
                ),
                np.array(ds.ImagePositionPatient, float),
            )
        ),
    )
    mask = read_label_map(seg, [str(ds.SOPInstanceUID) for ds in order])
    assert dice(mask, truth) >= 0.8
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid

    # People review through the API: accept, then correct with their own SEG (the
    # phantom's truth). Each review is an event; the view keeps every step.
    volume = volume_from_datasets([pydicom.dcmread(io.BytesIO(dataset_bytes(ds))) for ds in datasets])
    correction = build_segmentation(
        volume, truth, default_registry().get(DEFAULT_MODEL_NAME), content_label="CORRECTED"
    )
    correction.SeriesInstanceUID = generate_uid()
    correction.SOPInstanceUID = correction.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    async with api_client(settings) as api:
        accepted = await api.post(f"/annotations/{annotation['_id']}/accept", json={"reviewer": "radiologist-1"})
        assert accepted.status_code == 202, accepted.text

        async def shows(status: str) -> Any:
            return await database.annotations.find_one({"_id": annotation["_id"], "status": status})

        await eventually(lambda: shows("accepted"), timeout_s=60, what="the acceptance in the annotations view")
        corrected = await api.post(
            f"/annotations/{annotation['_id']}/correct",
            data={"reviewer": "radiologist-2", "reason": "boundary"},
            files={"file": ("correction.dcm", dataset_bytes(correction), "application/dicom")},
        )
        assert corrected.status_code == 202, corrected.text
        after = await eventually(
            lambda: shows("corrected"), timeout_s=60, what="the correction in the annotations view"
        )
        listed = (await api.get("/annotations", params={"series": series_uid})).json()["items"]
    assert [h["status"] for h in sorted(after["history"], key=lambda h: h["at"])] == [
        "suggested",
        "accepted",
        "corrected",
    ]
    assert after["corrected_seg_sop_instance_uid"] == str(correction.SOPInstanceUID)
    assert after["seg_sop_instance_uid"] == annotation["seg_sop_instance_uid"]  # the suggestion is kept
    assert [item["status"] for item in listed] == ["corrected"]
    async with httpx.AsyncClient(base_url=settings.orthanc_url, auth=auth, timeout=60) as orthanc:
        found = await orthanc.post("/tools/lookup", content=str(correction.SOPInstanceUID))
        assert [h["Type"] for h in found.json()] == ["Instance"]
