"""The whole pure path with the committed weights: phantom → DICOM bytes → volume →
inference → SEG → bytes → re-read SEG → mask, compared with the phantom's truth."""

from __future__ import annotations

import io
import random
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from consumers.annotation.errors import SegmentationBuildError
from consumers.annotation.inference import infer_volume, predict
from consumers.annotation.metrics import dice
from consumers.annotation.models import DEFAULT_MODEL_NAME, PHANTOM_SPEC, load_model
from consumers.annotation.phantoms import phantom_series
from consumers.annotation.seg import build_segmentation, derived_uid, read_label_map
from consumers.annotation.volume import SeriesVolume, volume_from_datasets

SHAPE = (32, 64, 64)


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def phantom() -> tuple[SeriesVolume, np.ndarray]:
    datasets, truth = phantom_series(424242, SHAPE)
    received = [pydicom.dcmread(io.BytesIO(_bytes(ds))) for ds in datasets]
    random.Random(0).shuffle(received)
    return volume_from_datasets(received), truth


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_model(PHANTOM_SPEC, device="cpu")


def test_end_to_end_dice_against_truth(phantom: tuple[SeriesVolume, np.ndarray], model) -> None:  # type: ignore[no-untyped-def]
    volume, truth = phantom
    result = predict(model, volume.array, volume.spacing, cpu_threads=1)
    assert result.labels.shape == truth.shape
    assert dice(result.labels, truth) >= 0.8
    assert 0.0 <= result.uncertainty < 0.5
    (segment,) = result.segments
    assert segment.voxel_count == int((result.labels == 1).sum()) > 0
    assert segment.volume_ml == pytest.approx(segment.voxel_count * volume.voxel_volume_ml, rel=1e-6)

    seg = build_segmentation(volume, result.labels, PHANTOM_SPEC)
    reread = pydicom.dcmread(io.BytesIO(_bytes(seg)))
    assert reread.SegmentationType == "BINARY"
    assert reread.SeriesInstanceUID == derived_uid(
        "seg-series", volume.reference.series_instance_uid, PHANTOM_SPEC.name, PHANTOM_SPEC.version
    )
    assert reread.StudyInstanceUID == volume.reference.study_instance_uid
    assert reread.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.reference.series_instance_uid
    (description,) = reread.SegmentSequence
    assert description.SegmentAlgorithmType == "AUTOMATIC"
    assert description.SegmentedPropertyTypeCodeSequence[0].CodeValue == PHANTOM_SPEC.segments[0].property_type.value
    assert description.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == PHANTOM_SPEC.name
    assert description.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == PHANTOM_SPEC.version

    mask = read_label_map(hd.seg.segread(io.BytesIO(_bytes(seg))), volume.reference.sop_instance_uids)
    np.testing.assert_array_equal(mask, result.labels)
    assert dice(mask, truth) >= 0.8


def test_reprocessing_gives_the_same_seg_uids(phantom: tuple[SeriesVolume, np.ndarray]) -> None:
    volume, truth = phantom
    first = build_segmentation(volume, truth, PHANTOM_SPEC)
    second = build_segmentation(volume, truth, PHANTOM_SPEC)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (second.SeriesInstanceUID, second.SOPInstanceUID)
    assert first.SeriesInstanceUID != first.SOPInstanceUID
    np.testing.assert_array_equal(read_label_map(first, volume.reference.sop_instance_uids), truth)


def test_seg_rejects_labels_the_model_does_not_define(phantom: tuple[SeriesVolume, np.ndarray]) -> None:
    volume, truth = phantom
    with pytest.raises(SegmentationBuildError, match=r"values \[2\]"):
        build_segmentation(volume, truth * 2, PHANTOM_SPEC)
    with pytest.raises(SegmentationBuildError, match="shape"):
        build_segmentation(volume, truth[:-1], PHANTOM_SPEC)


def test_infer_volume_takes_plain_arguments(phantom: tuple[SeriesVolume, np.ndarray]) -> None:
    volume, truth = phantom
    result = infer_volume(volume.array, volume.spacing, DEFAULT_MODEL_NAME, device="cpu", cpu_threads=1)
    assert result.device == "cpu"
    assert dice(result.labels, truth) >= 0.8


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) is not installed")
def test_seg_passes_dciodvfy_without_errors(phantom: tuple[SeriesVolume, np.ndarray], tmp_path: Path) -> None:
    volume, truth = phantom
    path = tmp_path / "seg.dcm"
    build_segmentation(volume, truth, PHANTOM_SPEC).save_as(path, enforce_file_format=True)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
    output = run.stdout + run.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert not errors, output
