"""Accepted annotations as a BIDS derivative dataset of discrete segmentations (dseg).

Why the source image's grid, not ours: a dseg must overlay the exported image voxel for
voxel. The SEG label map comes out of highdicom as (slice, row, column) with the LPS
affine of :mod:`consumers.annotation.volume`; NIfTI wants (i, j, k) with an RAS affine.
The label map is transposed to (column, row, slice), its affine flipped LPS→RAS, and
then reoriented onto the grid dcm2niix chose for the source image (which may flip
axes); the two affines must then agree within 1e-3 mm, or the series is reported and
skipped rather than exported misaligned.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform
from pydicom import dcmread

from consumers.annotation.seg import read_label_map
from consumers.annotation.volume import volume_from_datasets
from export.bids.errors import ConversionError

__all__ = ["LPS_TO_RAS", "dseg_nifti", "label_map_image", "label_rows"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def label_map_image(label_map: np.ndarray, affine_krc_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, r, c) label map + LPS affine → (i=c, j=r, k) array + RAS affine."""
    data = np.ascontiguousarray(np.transpose(label_map, (2, 1, 0)))
    affine_ijk = np.eye(4)
    affine_ijk[:3, 0] = affine_krc_lps[:3, 2]
    affine_ijk[:3, 1] = affine_krc_lps[:3, 1]
    affine_ijk[:3, 2] = affine_krc_lps[:3, 0]
    affine_ijk[:3, 3] = affine_krc_lps[:3, 3]
    return data, LPS_TO_RAS @ affine_ijk


def dseg_nifti(source_files: Sequence[bytes], seg_file: bytes, source_nifti_gz: bytes, series_uid: str) -> bytes:
    """The SEG of ``series_uid`` as a gzip NIfTI on the grid of the exported source image."""
    datasets = [dcmread(io.BytesIO(data)) for data in source_files]
    try:
        volume = volume_from_datasets(datasets)
        label_map = read_label_map(dcmread(io.BytesIO(seg_file)), volume.reference.sop_instance_uids)
    except (ValueError, KeyError, AttributeError) as exc:
        raise ConversionError(f"SEG of series {series_uid} cannot be read onto the series: {exc}") from exc
    data, affine = label_map_image(np.asarray(label_map), volume.affine)
    original_shape = data.shape
    source = nib.Nifti1Image.from_bytes(gzip.decompress(source_nifti_gz))
    target_affine = source.affine
    transform = ornt_transform(io_orientation(affine), io_orientation(target_affine))
    data = apply_orientation(data, transform)
    affine = affine @ inv_ornt_aff(transform, original_shape)
    if data.shape[:3] != source.shape[:3] or not np.allclose(affine, target_affine, atol=1e-3):
        raise ConversionError(
            f"SEG of series {series_uid} does not line up with the dcm2niix image "
            f"(shape {data.shape} vs {source.shape[:3]}, "
            f"max affine difference {np.abs(affine - target_affine).max():.4f} mm)"
        )
    image = nib.Nifti1Image(data.astype(np.uint8 if data.max(initial=0) < 256 else np.uint16), target_affine)
    image.header.set_qform(target_affine, code=int(source.header["qform_code"]) or 1)
    image.header.set_sform(target_affine, code=int(source.header["sform_code"]) or 1)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def label_rows(segments: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of ``dseg.tsv``: index (the SEG segment number) and name."""
    rows = [{"index": 0, "name": "background"}]
    rows += [
        {"index": int(s["segment_number"]), "name": str(s.get("label") or f"segment{s['segment_number']}")}
        for s in sorted(segments, key=lambda s: int(s["segment_number"]))
    ]
    return rows
