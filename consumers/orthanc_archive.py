"""Store received DICOM instances in Orthanc, exactly once, from the staging store.

Idempotence has two layers: Orthanc keeps one copy of a SOP instance whatever happens
(``OverwriteInstances`` is off, a second POST answers ``AlreadyStored``), and before
reading the staged file the sink asks Orthanc whether the instance (whose id it can
compute) is already there, so a replay works after the staged file was removed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlparse

import httpx

from cohortstream.errors import CohortStreamError
from cohortstream.events import DicomInstanceReceived
from cohortstream.orthanc_ids import OrthancIds, orthanc_hash, orthanc_ids
from cohortstream.settings import Settings
from consumers.backoff import retry_transient

__all__ = ["ArchiveResult", "OrthancArchive", "OrthancRejectedError", "StagedFileError", "OrthancUnavailableError"]

T = TypeVar("T")
log = logging.getLogger(__name__)


class OrthancUnavailableError(CohortStreamError):
    """Orthanc did not answer, or answered 502/503/504: unreachable for now, retried as backpressure."""


class OrthancRejectedError(CohortStreamError):
    """Orthanc refused the request (4xx) or failed on it (other 5xx): not an outage; after
    ``sink_error_attempts`` tries the event is dead-lettered."""


class SeriesIncompleteError(CohortStreamError):
    """Orthanc does not hold every instance of a series (yet, or ever)."""


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
    """The staged bytes of ``event``, checked against its sha256."""
    path = staged_path(event.staged_uri)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise StagedFileError(f"staged file {path} is missing") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != event.sha256:
        raise StagedFileError(f"staged file {path} has sha256 {digest}, event says {event.sha256}")
    return data


_UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
"""Answers of a proxy or of a server that is starting or overloaded: Orthanc is
unreachable for now, which is backpressure like a refused connection."""


class OrthancArchive:
    """The Orthanc sink of ``dicom.instance-received``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: httpx.AsyncClient | None = None

    async def setup(self) -> None:
        """Open the HTTP client (connections are made on first use)."""
        self._client = httpx.AsyncClient(
            base_url=self._settings.orthanc_url,
            auth=(self._settings.orthanc_username, self._settings.orthanc_password.get_secret_value()),
            timeout=self._settings.orthanc_timeout_s,
        )

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("OrthancArchive.setup() was not awaited")
        return self._client

    async def _request(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        try:
            response = await self.client.request(method, url, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            raise OrthancUnavailableError(f"Orthanc {method} {url}: {exc!r}") from exc
        if response.status_code in _UNAVAILABLE_STATUSES:
            raise OrthancUnavailableError(f"Orthanc {method} {url}: HTTP {response.status_code}")
        if response.status_code >= 500:
            # An internal error is not an outage: the same object may fail the same way
            # each time. It is tried sink_error_attempts times, then dead-lettered.
            raise OrthancRejectedError(f"Orthanc {method} {url}: HTTP {response.status_code} {response.text[:200]}")
        return response

    async def has_instance(self, instance_id: str) -> bool:
        """Whether Orthanc holds the instance with this id."""
        response = await self._request("GET", f"/instances/{instance_id}")
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise OrthancRejectedError(f"Orthanc GET /instances/{instance_id}: HTTP {response.status_code}")
        return True

    async def _store_once(self, event: DicomInstanceReceived, ids: OrthancIds) -> ArchiveResult:
        if await self.has_instance(ids.instance):
            return ArchiveResult(ids, "AlreadyStored")
        data = read_staged(event)
        response = await self._request(
            "POST", "/instances", content=data, headers={"Content-Type": "application/dicom"}
        )
        if response.status_code != 200:
            raise OrthancRejectedError(
                f"Orthanc refused SOP instance {event.sop_instance_uid}: HTTP {response.status_code} {response.text[:200]}"
            )
        body = response.json()
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
        return await self._retrying(lambda: self._store_once(event, ids), "store instance in Orthanc")

    async def _retrying(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_transient(
            operation,
            what=what,
            transient=(OrthancUnavailableError,),
            pause_after=self._settings.sink_retry_attempts,
            max_delay_s=self._settings.sink_retry_max_delay_s,
            other_attempts=self._settings.sink_error_attempts,
        )

    async def store_bytes(self, data: bytes, what: str) -> str:
        """Store a DICOM object we made or were given (a SEG); returns its Orthanc id.

        Storing the same object again is a no-op in Orthanc (``AlreadyStored``), so this
        is idempotent for objects with deterministic UIDs.
        """

        async def once() -> str:
            response = await self._request(
                "POST", "/instances", content=data, headers={"Content-Type": "application/dicom"}
            )
            if response.status_code != 200:
                raise OrthancRejectedError(f"Orthanc refused {what}: HTTP {response.status_code} {response.text[:200]}")
            return str(response.json()["ID"])

        return await self._retrying(once, f"store {what} in Orthanc")

    async def series_instances(
        self, study_uid: str, series_uid: str, patient_id: str, *, expected: int = 0, wait_s: float = 120.0
    ) -> list[bytes]:
        """The DICOM files of a series, as Orthanc holds them (for the annotation worker).

        A series completes when the listener stopped receiving it, which can be before
        the archive agent stored its last instances: with ``expected`` this waits (up to
        ``wait_s``, polling with backoff) until Orthanc holds that many, and raises
        :class:`SeriesIncompleteError` if it never does (an instance was dead-lettered).
        """
        series_id = orthanc_hash(patient_id, study_uid, series_uid)
        deadline = asyncio.get_running_loop().time() + wait_s
        delay = 0.2
        while True:
            listing = await self._retrying(lambda: self._request("GET", f"/series/{series_id}"), "list series in Orthanc")
            held = len(listing.json().get("Instances", [])) if listing.status_code == 200 else 0
            if held and held >= expected:
                break
            if asyncio.get_running_loop().time() > deadline:
                raise SeriesIncompleteError(
                    f"Orthanc holds {held} of the {expected} instances of series {series_uid} after {wait_s:.0f} s"
                )
            await asyncio.sleep(delay)  # backoff between polls of Orthanc, not a test wait
            delay = min(delay * 2, 5.0)

        async def once() -> list[bytes]:
            files = []
            for instance_id in listing.json()["Instances"]:
                response = await self._request("GET", f"/instances/{instance_id}/file")
                if response.status_code != 200:
                    raise OrthancRejectedError(f"Orthanc GET instance {instance_id}: HTTP {response.status_code}")
                files.append(response.content)
            return files

        return await self._retrying(once, "read series from Orthanc")
