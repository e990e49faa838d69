"""Orthanc for real: upload with pyorthanc, read back through DICOMweb (QIDO-RS, WADO-RS)."""

from __future__ import annotations

import email.parser
import email.policy
import io
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pyorthanc import Orthanc

from cohortstream.settings import Settings


@pytest.fixture
def orthanc(stack_settings: Settings) -> Orthanc:
    return Orthanc(
        stack_settings.orthanc_url,
        username=stack_settings.orthanc_username,
        password=stack_settings.orthanc_password.get_secret_value(),
    )


def _multipart_parts(response: httpx.Response) -> list[bytes]:
    """Bodies of a multipart/related WADO-RS response."""
    header = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + response.content)
    return [part.get_payload(decode=True) for part in message.iter_parts()]


def test_instance_uploaded_with_pyorthanc_reads_back_through_dicomweb(
    orthanc: Orthanc, stack_settings: Settings
) -> None:
    path = get_testdata_file("CT_small.dcm")
    original = pydicom.dcmread(path)
    data = Path(path).read_bytes()

    stored = orthanc.post_instances(data)
    again = orthanc.post_instances(data)  # storing the same SOP instance twice keeps one
    assert again["ID"] == stored["ID"]
    try:
        assert len(orthanc.get_series_id_instances(stored["ParentSeries"])) == 1

        auth = (stack_settings.orthanc_username, stack_settings.orthanc_password.get_secret_value())
        with httpx.Client(base_url=f"{stack_settings.orthanc_url}/dicom-web", auth=auth, timeout=30) as web:
            studies = web.get("/studies", params={"StudyInstanceUID": original.StudyInstanceUID})
            studies.raise_for_status()
            assert studies.json()[0]["0020000D"]["Value"] == [original.StudyInstanceUID]

            url = (
                f"/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
                f"/instances/{original.SOPInstanceUID}"
            )
            response = web.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'})
            response.raise_for_status()
            (part,) = _multipart_parts(response)
            retrieved = pydicom.dcmread(io.BytesIO(part))
            assert retrieved.SOPInstanceUID == original.SOPInstanceUID
            assert retrieved.pixel_array.tolist() == original.pixel_array.tolist()
    finally:
        orthanc.delete_instances_id(stored["ID"])


def test_orthanc_refuses_requests_without_credentials(stack_settings: Settings) -> None:
    response = httpx.get(f"{stack_settings.orthanc_url}/system", timeout=10)
    assert response.status_code == 401
