"""The Orthanc REST client every part of cohortstream uses: the archive sink, the API,
the annotation agents, the staging sweeper and the BIDS export.

Built on pyorthanc's :class:`pyorthanc.AsyncOrthanc` (an ``httpx.AsyncClient`` with a
generated method per REST route), created with ``return_raw_response=True`` so that each
call returns the HTTP response and this module decides what a status means. That
decision is the point of the module, and every caller relies on it:

- no answer (any ``httpx.TransportError``) or HTTP 502/503/504 →
  :class:`OrthancUnavailableError`: Orthanc is unreachable for now; sinks retry it
  without end as backpressure (:func:`cohortstream.backoff.retry_transient`);
- any other 5xx, and a 4xx where a 2xx was needed → :class:`OrthancRejectedError`: not an
  outage; it is tried ``sink_error_attempts`` times, then the caller dead-letters.

A 404 where absence is an answer (:meth:`OrthancClient.has_instance`) is not an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from pyorthanc import AsyncOrthanc

from cohortstream.backoff import retry_transient
from cohortstream.errors import CohortStreamError
from cohortstream.orthanc_ids import orthanc_hash
from cohortstream.settings import Settings

__all__ = [
    "OrthancClient",
    "OrthancError",
    "OrthancRejectedError",
    "OrthancUnavailableError",
    "SeriesIncompleteError",
]

T = TypeVar("T")

_UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
"""Answers of a proxy or of a server that is starting or overloaded: Orthanc is
unreachable for now, which is backpressure like a refused connection."""


class OrthancError(CohortStreamError):
    """Base class of the errors of :class:`OrthancClient`."""


class OrthancUnavailableError(OrthancError):
    """Orthanc did not answer, or answered 502/503/504: unreachable for now, retried as backpressure."""


class OrthancRejectedError(OrthancError):
    """Orthanc refused the request (4xx) or failed on it (other 5xx): not an outage; after
    ``sink_error_attempts`` tries the event is dead-lettered."""


class SeriesIncompleteError(OrthancError):
    """Orthanc does not hold every instance of a series (yet, or ever)."""


class OrthancClient:
    """One connection pool to Orthanc, opened by :meth:`setup` and closed by :meth:`close`
    (or used as ``async with``). Methods that say so retry while Orthanc is unavailable
    (the sink settings ``sink_retry_attempts``, ``sink_retry_max_delay_s`` and
    ``sink_error_attempts``); the others make one attempt and classify its outcome."""

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """``transport`` replaces the network (unit tests use ``httpx.MockTransport``)."""
        self._settings = settings
        self._transport = transport
        self._client: AsyncOrthanc | None = None

    async def setup(self) -> None:
        """Open the client (connections are made on first use)."""
        url = self._settings.orthanc_url.rstrip("/")
        self._client = AsyncOrthanc(
            url,
            username=self._settings.orthanc_username,
            password=self._settings.orthanc_password.get_secret_value(),
            return_raw_response=True,
            base_url=url,  # so that plain httpx calls on `client` may use relative routes
            timeout=self._settings.orthanc_timeout_s,
            transport=self._transport,
        )

    async def close(self) -> None:
        """Close the client's connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> OrthancClient:
        await self.setup()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def client(self) -> AsyncOrthanc:
        """The pyorthanc client (an ``httpx.AsyncClient`` whose base URL is Orthanc's)."""
        if self._client is None:
            raise RuntimeError("OrthancClient.setup() was not awaited")
        return self._client

    # --- one attempt, classified --------------------------------------------------------
    async def _classified(self, what: str, call: Callable[[], Awaitable[Any]]) -> httpx.Response:
        try:
            response = await call()
        except httpx.TransportError as exc:
            raise OrthancUnavailableError(f"Orthanc {what}: {exc!r}") from exc
        if not isinstance(response, httpx.Response):  # pragma: no cover - return_raw_response is set
            raise TypeError(f"pyorthanc returned {type(response).__name__} for {what}")
        if response.status_code in _UNAVAILABLE_STATUSES:
            raise OrthancUnavailableError(f"Orthanc {what}: HTTP {response.status_code}")
        if response.status_code >= 500:
            # An internal error is not an outage: the same object may fail the same way
            # each time. It is tried sink_error_attempts times, then dead-lettered.
            raise OrthancRejectedError(f"Orthanc {what}: HTTP {response.status_code} {response.text[:200]}")
        return response

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request to a route of Orthanc's REST API (relative to its URL).

        Raises :class:`OrthancUnavailableError` or :class:`OrthancRejectedError` (5xx);
        a 4xx answer is returned for the caller to judge."""
        return await self._classified(f"{method} {url}", lambda: self.client.request(method, url, **kwargs))

    async def has_instance(self, instance_id: str) -> bool:
        """Whether Orthanc holds the instance with this id."""
        response = await self._classified(
            f"GET /instances/{instance_id}", lambda: self.client.get_instances_id(instance_id)
        )
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise OrthancRejectedError(f"Orthanc GET /instances/{instance_id}: HTTP {response.status_code}")
        return True

    async def upload(self, data: bytes, what: str) -> dict[str, Any]:
        """Store one DICOM file (one attempt); Orthanc's answer (``ID``, ``Status``, parents).

        A SOP instance Orthanc already holds answers ``AlreadyStored`` (Orthanc keeps one copy)."""
        response = await self._classified("POST /instances", lambda: self.client.post_instances(data))
        if response.status_code != 200:
            raise OrthancRejectedError(f"Orthanc refused {what}: HTTP {response.status_code} {response.text[:200]}")
        body = response.json()
        if not isinstance(body, dict):
            raise OrthancRejectedError(
                f"Orthanc answered the upload of {what} with {type(body).__name__}, not one instance"
            )
        return body

    async def instance_file(self, instance_id: str) -> bytes:
        """The DICOM file of one instance (one attempt)."""
        response = await self._classified(
            f"GET /instances/{instance_id}/file", lambda: self.client.get_instances_id_file(instance_id)
        )
        if response.status_code != 200:
            raise OrthancRejectedError(f"Orthanc GET instance {instance_id}: HTTP {response.status_code}")
        return response.content

    async def series_instance_ids(self, series_id: str) -> list[str]:
        """The Orthanc ids of the instances of a series (one attempt); empty if Orthanc has no such series."""
        response = await self._classified(f"GET /series/{series_id}", lambda: self.client.get_series_id(series_id))
        if response.status_code != 200:
            return []
        return [str(i) for i in response.json().get("Instances", [])]

    async def lookup(self, dicom_uid: str) -> list[dict[str, Any]]:
        """The resources whose PatientID, Study/Series/SOP Instance UID is ``dicom_uid``
        (``/tools/lookup``: items with ``Type``, ``ID``, ``Path``), one attempt."""
        response = await self.request("POST", "/tools/lookup", content=dicom_uid)
        if response.status_code != 200:
            raise OrthancRejectedError(f"Orthanc POST /tools/lookup: HTTP {response.status_code}")
        return list(response.json())

    async def find(self, level: str, query: dict[str, str], **options: Any) -> list[Any]:
        """``/tools/find`` at ``level`` (``Patient``, ``Study``, ``Series``, ``Instance``) with a
        DICOM tag ``query``; ``options`` are further body fields (``Expand``, ``Limit``)."""
        body = {"Level": level, "Query": query, **options}
        response = await self._classified("POST /tools/find", lambda: self.client.post_tools_find(json=body))
        if response.status_code != 200:
            raise OrthancRejectedError(f"Orthanc POST /tools/find: HTTP {response.status_code} {response.text[:200]}")
        return list(response.json())

    async def _json(self, method: str, url: str, what: str, **kwargs: Any) -> Any:
        response = await self.request(method, url, **kwargs)
        if response.status_code != 200:
            raise OrthancRejectedError(f"Orthanc {what}: HTTP {response.status_code} {response.text[:200]}")
        return response.json()

    async def changes(self, since: int, limit: int) -> dict[str, Any]:
        """One page of Orthanc's change log after ``since`` (``/changes``: ``Changes``, each
        with ``Seq``, ``ChangeType``, ``ID``, ``ResourceType``, ``Date``; ``Done``; ``Last``),
        one attempt."""
        body = await self._json("GET", "/changes", "GET /changes", params={"since": since, "limit": limit})
        return dict(body)

    async def last_change(self) -> dict[str, Any]:
        """The newest change only (``/changes?last``), one attempt; ``Last`` is its sequence number."""
        return dict(await self._json("GET", "/changes", "GET /changes?last", params={"last": ""}))

    async def bulk_content(self, ids: list[str], *, metadata: bool = False) -> list[dict[str, Any]]:
        """What ``GET /{level}/{id}`` says about each resource, in one request
        (``/tools/bulk-content``, Orthanc ≥ 1.9.4; ``metadata`` adds each one's
        ``Metadata``: ``SopClassUid``, ``TransferSyntax``, ``RemoteAET``, ``Origin``,
        ``ReceptionDate`` …), one attempt. Resources Orthanc does not hold are left out."""
        if not ids:
            return []
        body = await self._json(
            "POST", "/tools/bulk-content", "POST /tools/bulk-content", json={"Resources": ids, "Metadata": metadata}
        )
        return [dict(item) for item in body]

    async def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """Every tag of one instance, by keyword (``/instances/{id}/tags?simplify``), one attempt."""
        return dict(
            await self._json("GET", f"/instances/{instance_id}/tags", "GET instance tags", params={"simplify": ""})
        )

    async def instance_ids(self, since: int, limit: int) -> list[str]:
        """A page of the ids of every instance Orthanc holds (``/instances?since=&limit=``), one attempt."""
        return [
            str(i)
            for i in await self._json("GET", "/instances", "GET /instances", params={"since": since, "limit": limit})
        ]

    # --- retried ---------------------------------------------------------------------
    async def retrying(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``operation`` with the sinks' retry policy: :class:`OrthancUnavailableError`
        is retried without end (backpressure), any other error ``sink_error_attempts`` times."""
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
            return str((await self.upload(data, what))["ID"])

        return await self.retrying(once, f"store {what} in Orthanc")

    async def series_instances(
        self, study_uid: str, series_uid: str, patient_id: str, *, expected: int = 0, wait_s: float = 120.0
    ) -> list[bytes]:
        """The DICOM files of a series, as Orthanc holds them.

        A series completes when the listener stopped receiving it, which can be before
        the archive agent stored its last instances: with ``expected`` this waits (up to
        ``wait_s``, polling with backoff) until Orthanc holds that many, and raises
        :class:`SeriesIncompleteError` if it never does (an instance was dead-lettered).
        """
        series_id = orthanc_hash(patient_id, study_uid, series_uid)
        deadline = asyncio.get_running_loop().time() + wait_s
        delay = 0.2
        while True:
            instance_ids = await self.retrying(lambda: self.series_instance_ids(series_id), "list series in Orthanc")
            held = len(instance_ids)
            if held and held >= expected:
                break
            if asyncio.get_running_loop().time() > deadline:
                raise SeriesIncompleteError(
                    f"Orthanc holds {held} of the {expected} instances of series {series_uid} after {wait_s:.0f} s"
                )
            await asyncio.sleep(delay)  # backoff between polls of Orthanc, not a test wait
            delay = min(delay * 2, 5.0)

        async def once() -> list[bytes]:
            return [await self.instance_file(instance_id) for instance_id in instance_ids]

        return await self.retrying(once, "read series from Orthanc")
