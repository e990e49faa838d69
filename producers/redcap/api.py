"""An async client for the part of the REDCap API the producer uses.

Every call is a form-encoded POST to the project's API endpoint with the project's token
(``format=json``, ``returnFormat=json`` so errors come back as ``{"error": "..."}``).

Failures are sorted for the caller: connection errors, timeouts and 5xx answers are
:class:`RedcapTransientApiError` and are retried with the shared backoff helper
(``sink_retry_attempts`` tries, delays doubling up to ``sink_retry_max_delay_s``), so one
call takes a bounded time and then fails; a 4xx answer or an ``{"error": ...}`` body (bad
token, unknown instrument) is :class:`RedcapPermanentApiError` and is not retried.

The data dictionary is cached per client for ``redcap_metadata_ttl_s``: a project's design
rarely changes, and a webhook would otherwise read it for every saved form.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import httpx

from cohortstream.backoff import retry_transient
from cohortstream.settings import RedcapProject, Settings
from producers.redcap.dictionary import DataDictionary
from producers.redcap.errors import RedcapPermanentApiError, RedcapTransientApiError

__all__ = ["RedcapApiClient", "array_params"]

log = logging.getLogger(__name__)


def array_params(name: str, items: Sequence[str] | None) -> dict[str, str]:
    """REDCap's array parameters: ``records[0]=a&records[1]=b``."""
    return {f"{name}[{i}]": item for i, item in enumerate(items or ())}


class RedcapApiClient:
    """Reads one project through the REDCap API. Use as ``async with`` or call :meth:`aclose`."""

    def __init__(
        self,
        settings: Settings,
        project: RedcapProject,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_first_delay_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.project = project
        self._attempts = settings.sink_retry_attempts
        self._max_delay_s = settings.sink_retry_max_delay_s
        self._first_delay_s = retry_first_delay_s
        self._metadata_ttl_s = settings.redcap_metadata_ttl_s
        self._clock = clock
        self._http = httpx.AsyncClient(timeout=settings.redcap_api_timeout_s, transport=transport)
        self._dictionary: DataDictionary | None = None
        self._dictionary_read_at = 0.0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    @property
    def _log_fields(self) -> dict[str, str]:
        return {"redcap_url": self.project.redcap_url, "redcap_project_id": self.project.project_id}

    async def _post_once(self, content: str, params: Mapping[str, str]) -> Any:
        data = {
            "token": self.project.api_token.get_secret_value(),
            "content": content,
            "format": "json",
            "returnFormat": "json",
            **params,
        }
        where = f"REDCap API {self.project.endpoint} (project {self.project.project_id}, content={content})"
        try:
            response = await self._http.post(self.project.endpoint, data=data)
        except httpx.TimeoutException as exc:
            raise RedcapTransientApiError(f"{where} timed out: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise RedcapTransientApiError(f"{where} unreachable: {type(exc).__name__}: {exc}") from exc
        try:
            body: Any = response.json()
        except ValueError:
            body = _NOT_JSON
        message = _error_message(response, body)
        if response.status_code >= 500:
            raise RedcapTransientApiError(
                f"{where} answered HTTP {response.status_code}: {message or 'no error message'}",
                status=response.status_code,
            )
        if response.status_code >= 400 or message is not None:
            raise RedcapPermanentApiError(
                f"{where} answered HTTP {response.status_code}: {message or 'no error message'}",
                status=response.status_code,
            )
        if body is _NOT_JSON:
            raise RedcapPermanentApiError(f"{where} answered with a body that is not JSON", status=response.status_code)
        return body

    async def _post(self, content: str, params: Mapping[str, str]) -> Any:
        return await retry_transient(
            lambda: self._post_once(content, params),
            what=f"redcap {content} export (project {self.project.project_id})",
            transient=(RedcapTransientApiError,),
            first_delay_s=self._first_delay_s,
            max_delay_s=self._max_delay_s,
            pause_after=self._attempts + 1,  # bounded retries: never the "sink paused" state
            max_attempts=self._attempts,
        )

    async def export_metadata(self) -> list[dict[str, str]]:
        """The data dictionary rows (``content=metadata``), uncached."""
        rows = await self._post("metadata", {})
        if not isinstance(rows, list):
            raise RedcapPermanentApiError(f"REDCap metadata of project {self.project.project_id} is not a JSON list")
        return rows

    async def data_dictionary(self) -> DataDictionary:
        """The project's :class:`DataDictionary`, read again after ``redcap_metadata_ttl_s``."""
        now = self._clock()
        if self._dictionary is None or now - self._dictionary_read_at >= self._metadata_ttl_s:
            self._dictionary = DataDictionary.from_metadata(await self.export_metadata())
            self._dictionary_read_at = now
            log.debug("REDCap data dictionary read", extra=self._log_fields)
        return self._dictionary

    def forget_dictionary(self) -> None:
        """Drop the cached dictionary (e.g. after a trigger names an instrument it lacks)."""
        self._dictionary = None

    async def export_records(
        self,
        *,
        records: Sequence[str] | None = None,
        forms: Sequence[str] | None = None,
        events: Sequence[str] | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[dict[str, str]]:
        """Flat JSON rows with raw codes (``content=record``, ``type=flat``, ``rawOrLabel=raw``).

        Data access group names are asked for (``exportDataAccessGroups``) so a full sync can
        fill ``data_access_group`` as a trigger does.
        """
        params = {
            "type": "flat",
            "rawOrLabel": "raw",
            "rawOrLabelHeaders": "raw",
            "exportCheckboxLabel": "false",
            "exportSurveyFields": "false",
            "exportDataAccessGroups": "true",
            **array_params("records", records),
            **array_params("forms", forms),
            **array_params("events", events),
            **array_params("fields", fields),
        }
        rows = await self._post("record", params)
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise RedcapPermanentApiError(
                f"REDCap records of project {self.project.project_id} are not a JSON list of rows"
            )
        return [{str(k): "" if v is None else str(v) for k, v in row.items()} for row in rows]

    async def export_record_ids(self, record_id_field: str) -> list[str]:
        """Every record id of the project, in export order, once each (longitudinal and
        repeating projects give one row per event and instance)."""
        rows = await self.export_records(fields=[record_id_field])
        seen: dict[str, None] = {}
        for row in rows:
            record_id = row.get(record_id_field, "")
            if record_id:
                seen.setdefault(record_id, None)
        return list(seen)


_NOT_JSON = object()


def _error_message(response: httpx.Response, body: Any) -> str | None:
    """REDCap's ``{"error": "..."}`` message, or the start of a non-JSON error body."""
    if body is _NOT_JSON:
        if response.status_code >= 400:
            return response.text[:200].strip() or None
        return None
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return None
