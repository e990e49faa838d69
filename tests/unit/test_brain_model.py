"""The brain-extraction model: which series it applies to (from metadata only), its
bundle config, the weights' sha256 pin, orientation handling, the plausibility flag,
and one real run on nilearn's MNI152 template after a DICOM round trip."""

from __future__ import annotations

import io
import shutil
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import numpy as np
import pydicom
import pytest

from consumers.annotation.applicability import SeriesFacts, SeriesRule
from consumers.annotation.brain import BRAIN_MODEL_NAME, BRAIN_SPEC, bundle_metadata, from_ras, to_ras
from consumers.annotation.errors import ModelLoadError
from consumers.annotation.inference import IMPLAUSIBLE, SegmentStats, plausibility
from consumers.annotation.models import (
    PHANTOM_SPEC,
    PackagedFile,
    PackagedWeights,
    default_registry,
    packaged_files,
    select_model,
)
from consumers.annotation.series_writer import SeriesInfo, lps_slices_from_nifti, series_from_volume
from consumers.annotation.volume import volume_from_datasets


@pytest.mark.parametrize(
    ("facts", "chosen", "why"),
    [
        (SeriesFacts("MR", "HEAD", "T1w 3D"), BRAIN_MODEL_NAME, "BodyPartExamined HEAD"),
        (SeriesFacts("MR", "brain", None), BRAIN_MODEL_NAME, "BodyPartExamined BRAIN"),
        (SeriesFacts("MR", None, "T1 MPRAGE brain"), BRAIN_MODEL_NAME, "matches"),
        (SeriesFacts("MR", None, None, "t1_mprage_sag"), BRAIN_MODEL_NAME, "matches"),
        (SeriesFacts("MR", None, "T1 3D"), None, "no series description/protocol matches"),
        (SeriesFacts("MR", "KNEE", "T1 brain"), None, "BodyPartExamined KNEE"),
        (SeriesFacts("MR", "PHANTOM", "Phantom T1w"), PHANTOM_SPEC.name, "PHANTOM"),
        (SeriesFacts("CT", "HEAD", "Head"), None, "modality CT"),
        (SeriesFacts("MR", "HEAD", "AAHead_Scout"), None, "excluded"),
        (SeriesFacts("MR", "HEAD", "ep2d_diff DWI"), None, "excluded"),
        (SeriesFacts("MR", "HEAD", None, "localizer"), None, "excluded"),
        (SeriesFacts("MR", "HEAD", "resting state BOLD"), None, "excluded"),
    ],
)
def test_the_brain_model_applies_to_head_mr_only_by_metadata(facts: SeriesFacts, chosen: str | None, why: str) -> None:
    selection = select_model(default_registry(), facts)
    assert (selection.model.name if selection.model else None) == chosen, selection.reason
    assert why in selection.reason


def test_facts_from_the_views_and_from_orthanc() -> None:
    doc = {"modality": "MR", "body_part_examined": " HEAD ", "series_description": ""}
    assert SeriesFacts.from_view(doc) == SeriesFacts("MR", "HEAD", None, None)
    assert SeriesFacts.from_view(None, modality="MR") == SeriesFacts("MR")
    tags = {"Modality": "MR", "SeriesDescription": "T1", "ProtocolName": "t1_mprage", "BodyPartExamined": ""}
    assert SeriesFacts.from_orthanc(tags) == SeriesFacts("MR", None, "T1", "t1_mprage")
    with pytest.raises(ValueError, match="invalid pattern"):
        SeriesRule(frozenset({"MR"}), description_patterns=("(",))


def test_the_bundle_config_describes_the_model_with_snomed_brain() -> None:
    meta = bundle_metadata()
    assert meta["name"] == BRAIN_MODEL_NAME and meta["version"] == BRAIN_SPEC.version == "1.0.2"
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "brain"}
    (segment,) = BRAIN_SPEC.segments
    assert (segment.label, segment.property_type.scheme_designator, segment.property_type.value) == (
        "Brain",
        "SCT",
        "12738006",
    )
    assert segment.plausible_volume_ml == (800.0, 2200.0)
    assert "MIT" in BRAIN_SPEC.weights_license
    assert BRAIN_SPEC.packaged is not None and BRAIN_SPEC.packaged.distribution == "deepbet"


def test_packaged_weights_are_checked_by_sha256_and_a_changed_file_is_refused(tmp_path: Path) -> None:
    assert BRAIN_SPEC.packaged is not None
    files = packaged_files(BRAIN_SPEC.packaged)
    assert set(files) == {"bbox", "brain"} and all(p.is_file() for p in files.values())
    root = Path(str(metadata.distribution("deepbet").locate_file("")))
    assert all(root in p.parents for p in files.values())  # from the installed wheel, not the repo

    # The same check on a copy that differs by one byte (the installed file is left alone).
    original = BRAIN_SPEC.packaged.files[0]
    changed = tmp_path / "model.pt"
    shutil.copyfile(files[original.key], changed)
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    moved = PackagedFile(original.key, str(changed), original.sha256, original.size)
    with pytest.raises(ModelLoadError, match="sha256 .* differs .* refused"):
        packaged_files(replace(BRAIN_SPEC.packaged, files=(moved,)))
    with pytest.raises(ModelLoadError, match="bytes, expected"):
        packaged_files(replace(BRAIN_SPEC.packaged, files=(replace(moved, size=original.size + 1),)))
    with pytest.raises(ModelLoadError, match="deepbet 1.0.2 is installed"):
        packaged_files(replace(BRAIN_SPEC.packaged, version="9.9"))
    with pytest.raises(ModelLoadError, match="not installed"):
        packaged_files(PackagedWeights("no-such-distribution-here", "1", ()))


@pytest.mark.parametrize("axes", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_to_ras_and_back_is_the_identity_for_any_orientation(axes: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    array = rng.random((5, 6, 7)).astype(np.float32)
    affine = np.eye(4)
    affine[:3, :3] = np.eye(3)[:, list(axes)] * np.array([1.0, -1.0, 1.0])
    ras, ornt = to_ras(array, affine)
    assert sorted(ras.shape) == [5, 6, 7]
    np.testing.assert_array_equal(from_ras(ras, ornt), array)


def test_plausibility_flags_a_volume_outside_the_range() -> None:
    def stats(ml: float) -> tuple[SegmentStats, ...]:
        return (SegmentStats(segment_number=1, label="Brain", voxel_count=1, volume_ml=ml),)

    assert plausibility(BRAIN_SPEC, stats(1400.0)) == ((), ())
    assert plausibility(BRAIN_SPEC, stats(800.0)) == ((), ())
    flags, reasons = plausibility(BRAIN_SPEC, stats(240.5))
    assert flags == (IMPLAUSIBLE,) and reasons == ("Brain volume 240.5 mL is outside the plausible 800–2200 mL",)
    assert plausibility(BRAIN_SPEC, stats(2500.0))[0] == (IMPLAUSIBLE,)
    assert plausibility(PHANTOM_SPEC, stats(1e6)) == ((), ())  # no range, no check


def _round_trip(array: np.ndarray, affine: np.ndarray, descending: bool) -> list[pydicom.Dataset]:
    out = []
    for ds in series_from_volume(array, affine, SeriesInfo("P", "study", f"s{descending}"), descending=descending):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
    return out


@pytest.mark.parametrize("descending", [False, True])
def test_series_writer_round_trips_geometry_and_values(descending: bool) -> None:
    rng = np.random.default_rng(1)
    data = rng.random((6, 5, 4)) * 100  # NIfTI (i, j, k), RAS affine with a flip and an offset
    affine_ras = np.array([[-2.0, 0, 0, 10], [0, 1.5, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]])
    array, affine = lps_slices_from_nifti(data, affine_ras)
    volume = volume_from_datasets(_round_trip(array, affine, descending))
    np.testing.assert_allclose(volume.affine, affine, atol=1e-4)
    np.testing.assert_allclose(volume.array, array, atol=100 / 4000)
    assert volume.spacing == pytest.approx((3.0, 1.5, 2.0))
    # NIfTI voxel (0, 0, 0) sits at RAS (10, -20, 5), i.e. LPS (-10, 20, 5), wherever it moved.
    (where,) = np.argwhere(array == data[0, 0, 0])
    assert (affine @ np.array([*where, 1.0]))[:3] == pytest.approx([-10.0, 20.0, 5.0])


def test_the_model_finds_the_mni152_brain_after_a_dicom_round_trip() -> None:
    """A real run on CPU (about 3 s on 2 cores): Dice >= 0.95 against nilearn's mask."""
    datasets = pytest.importorskip("nilearn.datasets")
    from consumers.annotation.inference import predict
    from consumers.annotation.metrics import dice
    from consumers.annotation.models import load_model

    template = datasets.load_mni152_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    array, affine = lps_slices_from_nifti(template.get_fdata(), template.affine)
    reference, _ = lps_slices_from_nifti(mask.get_fdata() > 0.5, mask.affine)
    volume = volume_from_datasets(_round_trip(array, affine, descending=True))
    result = predict(load_model(BRAIN_SPEC), volume.array, volume.spacing, affine=volume.affine, cpu_threads=2)
    assert dice(result.labels, reference) >= 0.95
    (segment,) = result.segments
    assert 1500 < segment.volume_ml < 2200 and result.flags == ()
    assert 0.0 <= result.uncertainty < 0.2
