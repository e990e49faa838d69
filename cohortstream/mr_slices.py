"""One generated MR slice as a DICOM data set: the part every generator here shares.

Three places make MR series from arrays: the synthetic studies of tests and benchmarks
(:mod:`cohortstream.synthetic`), the demo model's sphere phantoms and the brain model's
real volumes (``consumers/annotation``). Each chooses its own description, dates, patient
and sequence attributes; the identity, the geometry and the 16-bit monochrome pixel module
are the same, and live here so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, MRImageStorage

__all__ = ["mr_slice_dataset"]


def mr_slice_dataset(
    *,
    sop_instance_uid: str,
    study_instance_uid: str,
    series_instance_uid: str,
    frame_of_reference_uid: str,
    image_position: Sequence[float],
    image_orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    pixels: np.ndarray,
    image_type: Sequence[str],
    implementation_version_name: str | None = None,
) -> Dataset:
    """An MR Image Storage slice (explicit VR little endian) with its file meta, UIDs,
    position and orientation (LPS, as given), pixel spacing and ``pixels`` (2-D int16 or
    uint16: PixelRepresentation follows the dtype). The caller adds the rest."""
    if pixels.ndim != 2 or pixels.dtype not in (np.int16, np.uint16):
        raise ValueError(f"pixels must be a 2-D int16 or uint16 array, not {pixels.ndim}-D {pixels.dtype}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if implementation_version_name is not None:
        meta.ImplementationVersionName = implementation_version_name

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(image_type)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.Modality = "MR"
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid
    ds.StudyID = "1"
    ds.ImagePositionPatient = list(image_position)
    ds.ImageOrientationPatient = list(image_orientation)
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.PixelSpacing = list(pixel_spacing)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds
