"""DICOM series → NIfTI + JSON sidecar with dcm2niix, with every identifier removed.

Why dcm2niix: it is the converter the BIDS community uses and knows vendor quirks
(slice timing, phase encoding, mosaics) that a home-made converter would get wrong.
Why scrub afterwards although dcm2niix runs with ``-ba y``: ``-ba`` drops the patient
fields but keeps institution, station, device serial number and acquisition dates;
this module deletes those (and anything that looks like them) itself, and blanks the
NIfTI header's free-text fields (``descrip``, ``aux_file``, ``db_name``, ``intent_name``)
so that nothing identifying hides in the image files either.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
from pydicom import dcmread
from pydicom.dataset import Dataset

from export.bids.errors import ConversionError, Dcm2niixNotFoundError

__all__ = [
    "ConvertedSeries",
    "clean_nifti",
    "convert_series",
    "read_datasets",
    "require_dcm2niix",
    "scrub_sidecar",
    "series_attributes",
]

log = logging.getLogger(__name__)

#: Sidecar keys removed whatever their value: direct or indirect identifiers, real dates.
_DROP_KEYS = {
    "AcquisitionDateTime",
    "AcquisitionDate",
    "ContentDate",
    "SeriesDate",
    "StudyDate",
    "InstanceCreationDate",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "AccessionNumber",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "ImageComments",
    "StudyComments",
    "PatientComments",
    "ProcedureStepDescription",
    "RequestedProcedureDescription",
    "PerformedProcedureStepDescription",
    "StudyDescription",
    "FrameOfReferenceUID",
    "ReferencedSOPInstanceUID",
}
#: Any key matching this goes too (PatientName, PatientBirthDate, PatientWeight …).
_DROP_PATTERN = re.compile(r"(?i)^patient|birth|physician|operator|institution|accession|serialnumber|date")
_BLANK_HEADER_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")


@dataclass(frozen=True)
class ConvertedSeries:
    """One converted series: gzip-compressed NIfTI bytes and the scrubbed sidecar."""

    nifti_gz: bytes
    sidecar: dict[str, Any]
    ndim: int


def read_datasets(files: list[bytes]) -> list[Dataset]:
    return [dcmread(io.BytesIO(data), stop_before_pixels=True) for data in files]


def series_attributes(first: Dataset) -> dict[str, str]:
    """The attributes the mapping rules look at (none of them identifies a patient)."""
    image_type = first.get("ImageType", [])
    return {
        "SeriesDescription": str(first.get("SeriesDescription", "") or ""),
        "ProtocolName": str(first.get("ProtocolName", "") or ""),
        "Modality": str(first.get("Modality", "") or ""),
        "ImageType": "\\".join(str(v) for v in image_type) if not isinstance(image_type, str) else image_type,
    }


def scrub_sidecar(sidecar: dict[str, Any]) -> dict[str, Any]:
    """A copy of a dcm2niix sidecar without identifying keys or real dates."""
    return {k: v for k, v in sidecar.items() if k not in _DROP_KEYS and not _DROP_PATTERN.search(k)}


def clean_nifti(nifti_gz: bytes) -> tuple[bytes, int]:
    """The NIfTI with blank free-text header fields, gzip with no name or time (deterministic),
    and its number of dimensions."""
    try:
        image = nib.Nifti1Image.from_bytes(gzip.decompress(nifti_gz))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"dcm2niix output is not a readable NIfTI: {exc}") from exc
    for name in _BLANK_HEADER_FIELDS:
        image.header[name] = b""
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0), len(image.shape)


def require_dcm2niix(dcm2niix: str = "dcm2niix") -> str:
    """The path of the dcm2niix executable, or :class:`Dcm2niixNotFoundError` with a
    one-line reason naming the setting and how to install it."""
    found = shutil.which(dcm2niix)
    if found is None:
        raise Dcm2niixNotFoundError(
            f"dcm2niix executable {dcm2niix!r} not found: install dcm2niix (apt-get install dcm2niix, "
            f"or pip install dcm2niix) or set COHORTSTREAM_BIDS_DCM2NIIX to its path"
        )
    return found


def convert_series(
    files: list[bytes], series_uid: str, *, dcm2niix: str = "dcm2niix", timeout_s: float = 600
) -> ConvertedSeries:
    """Run dcm2niix on the series' files in a private temporary directory.

    A series that dcm2niix splits into several volumes (echoes, phase maps, different
    orientations) is refused: naming each part needs rules this export does not have,
    and a guessed name could mislabel data."""
    with tempfile.TemporaryDirectory(prefix="cohortstream-bids-") as tmp:
        source, out = Path(tmp) / "dicom", Path(tmp) / "nifti"
        source.mkdir()
        out.mkdir()
        for index, data in enumerate(files):
            (source / f"{index:05d}.dcm").write_bytes(data)
        command = [dcm2niix, "-b", "y", "-ba", "y", "-z", "y", "-f", "series", "-o", str(out), str(source)]
        try:
            done = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
        except FileNotFoundError as exc:
            raise ConversionError(
                f"dcm2niix executable {dcm2niix!r} not found (setting COHORTSTREAM_BIDS_DCM2NIIX)"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise ConversionError(f"dcm2niix ran longer than {timeout_s:.0f} s on series {series_uid}") from exc
        niftis = sorted(out.glob("*.nii.gz"))
        if done.returncode != 0 or not niftis:
            tail = done.stderr.decode("utf-8", "replace")[-300:] or done.stdout.decode("utf-8", "replace")[-300:]
            raise ConversionError(f"dcm2niix failed on series {series_uid} (exit {done.returncode}): {tail}")
        if len(niftis) != 1:
            raise ConversionError(
                f"dcm2niix split series {series_uid} into {len(niftis)} volumes; not exported (no rule to name each)"
            )
        sidecar_path = niftis[0].with_name(niftis[0].name.removesuffix(".nii.gz") + ".json")
        try:
            sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConversionError(f"dcm2niix sidecar of series {series_uid} is unreadable: {exc}") from exc
        nifti, ndim = clean_nifti(niftis[0].read_bytes())
    log.info("series converted", extra={"series_instance_uid": series_uid, "instances": len(files)})
    return ConvertedSeries(nifti, scrub_sidecar(sidecar), ndim)
