"""What the export reads from Orthanc: the DICOM files of a series and of a SEG, through
the core client (:mod:`cohortstream.orthanc`).

A series view document names the series (``_id`` is its UID) and how many instances the
listener received. The exporter fetches a series' files at most once per export (mapping,
conversion and the derivatives all read them) and not at all when the manifest says the
outputs are intact.
"""

from __future__ import annotations

from typing import Any

from cohortstream.orthanc import OrthancClient, OrthancRejectedError
from cohortstream.settings import Settings
from export.bids.errors import ConversionError

__all__ = ["SERIES_WAIT_S", "OrthancFetcher"]

SERIES_WAIT_S = 30.0
"""How long the export waits for Orthanc to hold every instance the view counted."""


class OrthancFetcher:
    """DICOM files from Orthanc for the export, on a client opened by :meth:`open`."""

    def __init__(self, settings: Settings, orthanc: OrthancClient | None = None) -> None:
        self.orthanc = orthanc or OrthancClient(settings)

    async def open(self) -> None:
        await self.orthanc.setup()

    async def close(self) -> None:
        await self.orthanc.close()

    async def series_files(self, series: dict[str, Any]) -> list[bytes]:
        """The DICOM files of the series of a view document (waits briefly for missing instances)."""
        return await self.orthanc.series_instances(
            series["study_instance_uid"],
            series["_id"],
            series["patient_id"],
            expected=int(series.get("instance_count") or 0),
            wait_s=SERIES_WAIT_S,
        )

    async def seg_file(self, sop_instance_uid: str) -> bytes:
        """The DICOM file of a SEG, found by its SOP Instance UID."""
        found = await self.orthanc.lookup(sop_instance_uid)
        ids = [x["ID"] for x in found if x.get("Type") == "Instance"]
        if not ids:
            raise ConversionError(f"SEG {sop_instance_uid} is not in Orthanc")
        try:
            return await self.orthanc.instance_file(ids[0])
        except OrthancRejectedError as exc:
            raise ConversionError(f"Orthanc GET SEG {sop_instance_uid}: {exc}") from exc
