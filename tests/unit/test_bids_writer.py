"""Atomic writes, the manifest, incremental re-exports and the SEG geometry helper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.bids.derivatives import label_map_image, label_rows
from export.bids.errors import BidsExportError
from export.bids.writer import MANIFEST_NAME, ExportWriter, atomic_write, sha256_bytes


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.txt"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two" and [p.name for p in target.parent.iterdir()] == ["b.txt"]


def test_second_run_writes_only_what_changed_and_removes_what_is_gone(tmp_path: Path) -> None:
    first = ExportWriter(tmp_path)
    assert first.write("x.txt", b"x", ["series:1"]) and first.write("sub/y.txt", b"y")
    first.finish()
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["files"]["x.txt"] == {"sha256": sha256_bytes(b"x"), "size": 1, "sources": ["series:1"]}

    second = ExportWriter(tmp_path)
    assert not second.write("x.txt", b"x") and second.write("z.txt", b"z")
    second.finish()
    assert second.written == ["z.txt"] and second.unchanged == ["x.txt"] and second.removed == ["sub/y.txt"]
    assert not (tmp_path / "sub").exists()

    (tmp_path / "x.txt").write_bytes(b"tampered")  # a changed file is rewritten, not trusted
    third = ExportWriter(tmp_path)
    assert third.write("x.txt", b"x") and third.read_previous("z.txt") == b"z"
    third.keep("z.txt")
    with pytest.raises(BidsExportError, match="missing.txt"):
        third.keep("missing.txt")


def test_interrupted_export_resumes_from_the_saved_manifest(tmp_path: Path) -> None:
    run = ExportWriter(tmp_path)
    run.write("a.nii.gz", b"a")
    run.save()  # saved after each series; the process then dies before finish()
    (tmp_path / ".b.nii.gz.123.part").write_bytes(b"half")
    resumed = ExportWriter(tmp_path)
    assert not list(tmp_path.glob("*.part"))
    assert not resumed.write("a.nii.gz", b"a") and resumed.previous_entry("a.nii.gz") is not None


def test_unreadable_manifest_names_the_file(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BidsExportError, match=MANIFEST_NAME):
        ExportWriter(tmp_path)


def test_label_map_goes_from_krc_lps_to_ijk_ras() -> None:
    labels = np.zeros((3, 4, 5), dtype=np.uint8)
    labels[1, 2, 3] = 1
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = [0, 0, 2.0], [0, 1.5, 0], [1.0, 0, 0], [10, 20, 30]
    data, ras = label_map_image(labels, affine)
    assert data.shape == (5, 4, 3) and data[3, 2, 1] == 1
    lps = affine @ np.array([1, 2, 3, 1.0])
    assert np.allclose(ras @ np.array([3, 2, 1, 1.0]), [-lps[0], -lps[1], lps[2], 1])
    assert label_rows([{"segment_number": 2, "label": "b"}, {"segment_number": 1, "label": "a"}]) == [
        {"index": 0, "name": "background"},
        {"index": 1, "name": "a"},
        {"index": 2, "name": "b"},
    ]
