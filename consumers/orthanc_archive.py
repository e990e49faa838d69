"""Store received DICOM instances in Orthanc, exactly once, from the staging store.

The sink of ``dicom.instance-received``; it talks to Orthanc through the core client
(:mod:`cohortstream.orthanc`, which also classifies Orthanc's errors).

Idempotence has two layers: Orthanc keeps one copy of a SOP instance whatever happens
(``OverwriteInstances`` is off, a second POST answers ``AlreadyStored``), and before
reading the staged file the sink asks Orthanc whether the instance (whose id it can
compute) is already there, so a replay works after the staged file was removed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from cohortstream.errors import CohortStreamError
from cohortstream.events import DicomInstanceReceived
from cohortstream.orthanc import OrthancClient, OrthancRejectedError
from cohortstream.orthanc_ids import OrthancIds, orthanc_ids
from cohortstream.settings import Settings

__all__ = ["ArchiveResult", "OrthancArchive", "StagedFileError", "read_staged", "staged_path"]

log = logging.getLogger(__name__)


class StagedFileError(CohortStreamError):
    """The staged file is missing or its bytes do not match the event's sha256."""


@dataclass(frozen=True)
class ArchiveResult:
    """What Orthanc holds for an instance after :meth:`OrthancArchive.store`."""

    ids: OrthancIds
    status: str
    """``Success`` (stored now), ``AlreadyStored`` (found or told so by Orthanc)."""


def staged_path(uri: str) -> Path:
    """Local path of a ``file://`` staged URI."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise StagedFileError(f"staged_uri {uri!r} is not a file:// URI")
    return Path(unquote(parsed.path))


def read_staged(event: DicomInstanceReceived) -> bytes:
    """The staged bytes of ``event``, checked against its sha256.

    An event from Orthanc's change feed stages nothing: if Orthanc no longer holds its
    instance (deleted since), there is nothing to store it from."""
    if event.staged_uri is None or event.sha256 is None:
        raise StagedFileError(
            f"SOP instance {event.sop_instance_uid} came from Orthanc ({event.orthanc_instance_id}), which no longer "
            "holds it, and nothing was staged"
        )
    path = staged_path(event.staged_uri)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise StagedFileError(f"staged file {path} is missing") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != event.sha256:
        raise StagedFileError(f"staged file {path} has sha256 {digest}, event says {event.sha256}")
    return data


class OrthancArchive:
    """The Orthanc sink of ``dicom.instance-received``: staged file → Orthanc."""

    def __init__(self, settings: Settings, orthanc: OrthancClient | None = None) -> None:
        self.orthanc = orthanc or OrthancClient(settings)

    async def setup(self) -> None:
        """Open the Orthanc client (connections are made on first use)."""
        await self.orthanc.setup()

    async def close(self) -> None:
        """Close the Orthanc client."""
        await self.orthanc.close()

    async def _store_once(self, event: DicomInstanceReceived, ids: OrthancIds) -> ArchiveResult:
        # Upload first: Orthanc answers "AlreadyStored" for an instance it holds, so asking
        # it beforehand cost every instance a second request (the ingest profile's
        # GET-404-then-POST). Only a staged file that is gone or changed (removed after an
        # earlier store, when a message is replayed) makes us ask.
        try:
            data = read_staged(event)
        except StagedFileError:
            if await self.orthanc.has_instance(ids.instance):
                return ArchiveResult(ids, "AlreadyStored")
            raise
        body = await self.orthanc.upload(data, f"SOP instance {event.sop_instance_uid}")
        if body.get("ID") != ids.instance:
            # Orthanc derives ids from the tags it read; a mismatch means the event's
            # UIDs differ from the file's, which the views would then mislink.
            raise OrthancRejectedError(
                f"Orthanc stored SOP instance {event.sop_instance_uid} as {body.get('ID')}, expected {ids.instance}"
            )
        return ArchiveResult(ids, str(body.get("Status", "Success")))

    async def store(self, event: DicomInstanceReceived) -> ArchiveResult:
        """Make sure Orthanc holds the instance; retries while Orthanc is unavailable."""
        ids = orthanc_ids(event.patient_id, event.study_instance_uid, event.series_instance_uid, event.sop_instance_uid)
        if not event.staged:
            # From Orthanc's change feed: Orthanc announced it holds the instance, so there
            # is nothing to store and no need to ask again (one GET per instance less on an
            # Orthanc that is receiving at full speed).
            return ArchiveResult(ids, "AlreadyStored")
        return await self.orthanc.retrying(lambda: self._store_once(event, ids), "store instance in Orthanc")
