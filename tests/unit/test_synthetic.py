"""The synthetic MR study: deterministic, consistent geometry, valid Part-10 files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from cohortstream.synthetic import mr_study, slice_normal, write_study


@pytest.fixture(scope="module")
def study() -> list[pydicom.Dataset]:
    return mr_study(n_series=3, slices=20, rows=32, cols=32, seed=7)


def test_shape_and_identity(study: list[pydicom.Dataset]) -> None:
    assert len(study) == 60
    assert len({ds.SOPInstanceUID for ds in study}) == 60
    assert len({ds.StudyInstanceUID for ds in study}) == 1
    series = {ds.SeriesInstanceUID for ds in study}
    assert len(series) == 3
    assert [ds.SeriesDescription for ds in study[::20]] == ["T1w", "T2w", "FLAIR"]
    assert [ds.SeriesNumber for ds in study[::20]] == [1, 2, 3]
    for ds in study:
        assert ds.SOPClassUID == MRImageStorage
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "MR" and ds.BodyPartExamined == "HEAD"
        assert ds.PatientID == "SYNTH-0001"
        assert ds.PatientSex in {"M", "F"}
        assert len(ds.PatientAge) == 4 and ds.PatientAge.endswith("Y")
        assert len(ds.StudyDate) == 8
        assert pydicom.uid.UID(ds.SOPInstanceUID).is_valid


def test_deterministic() -> None:
    a = mr_study(n_series=2, slices=3, rows=8, cols=8, seed=1)
    b = mr_study(n_series=2, slices=3, rows=8, cols=8, seed=1)
    c = mr_study(n_series=2, slices=3, rows=8, cols=8, seed=2)
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    assert [d.PixelData for d in a] == [d.PixelData for d in b]
    assert not {d.SOPInstanceUID for d in a} & {d.SOPInstanceUID for d in c}
    other_patient = mr_study(n_series=1, slices=1, rows=8, cols=8, seed=1, patient_id="SYNTH-0002")
    assert other_patient[0].StudyInstanceUID != a[0].StudyInstanceUID


def test_geometry_steps_along_the_slice_normal(study: list[pydicom.Dataset]) -> None:
    for s in range(3):
        series = study[s * 20 : (s + 1) * 20]
        assert [ds.InstanceNumber for ds in series] == list(range(1, 21))
        iop = [float(v) for v in series[0].ImageOrientationPatient]
        row, col = np.array(iop[:3]), np.array(iop[3:])
        assert (
            abs(np.dot(row, col)) < 1e-6 and np.isclose(np.linalg.norm(row), 1) and np.isclose(np.linalg.norm(col), 1)
        )
        normal = slice_normal(iop)
        thickness = float(series[0].SliceThickness)
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in series])
        steps = np.diff(positions, axis=0)
        assert np.allclose(steps, normal * thickness, atol=1e-3)
        # Slice locations increase monotonically along the normal.
        assert np.all(np.diff([float(ds.SliceLocation) for ds in series]) > 0)
        assert all(list(ds.ImageOrientationPatient) == list(series[0].ImageOrientationPatient) for ds in series)
        assert len({ds.FrameOfReferenceUID for ds in study}) == 1
    # Three different orientations (axial, coronal, sagittal).
    normals = {
        tuple(np.round(slice_normal([float(v) for v in study[i].ImageOrientationPatient]), 3)) for i in (0, 20, 40)
    }
    assert len(normals) == 3


def test_pixels_have_structure(study: list[pydicom.Dataset]) -> None:
    middle = study[10]
    pixels = middle.pixel_array
    assert pixels.dtype == np.int16 and pixels.shape == (32, 32)
    assert pixels[16, 16] > pixels[0, 0] + 200  # bright head in the middle, air at the edge


def test_write_study_round_trips(tmp_path: Path) -> None:
    datasets = mr_study(n_series=2, slices=4, rows=16, cols=16, seed=3)
    paths = write_study(datasets, tmp_path)
    assert len(paths) == 8
    assert paths[0] == tmp_path / "series-01" / "IM-0001.dcm"
    for ds, path in zip(datasets, paths, strict=True):
        back = pydicom.dcmread(path)
        assert path.read_bytes()[128:132] == b"DICM"
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(back.pixel_array, ds.pixel_array)
        assert list(back.ImagePositionPatient) == list(ds.ImagePositionPatient)


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        mr_study(n_series=0)
