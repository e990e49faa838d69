"""Parse and trust-check REDCap's Data Entry Trigger (DET).

REDCap posts the DET as ``application/x-www-form-urlencoded`` each time a form is saved
(not on API or CSV imports): ``project_id``, ``username``, ``instrument``, ``record``,
``redcap_event_name`` (longitudinal projects only), ``redcap_repeat_instrument`` /
``redcap_repeat_instance`` (repeating instruments/events only),
``redcap_data_access_group`` (only when the record is in one), ``[instrument]_complete``,
``redcap_url`` and ``project_url``. Everything arrives as a string; record ids stay
strings because REDCap allows non-numeric ones.

The trigger carries no credentials and no signature, so the only things we can check are
where it comes from (``redcap_allowed_networks``), a shared secret in the trigger URL
(``redcap_trigger_secret``, set by the project admin as ``...?secret=...``) and that it
names a project of a server we are configured for. The trigger's content is never trusted
as data: it only tells us which record to pull through the API with our own token.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from cohortstream.events import RedcapCompletionStatus
from cohortstream.settings import RedcapProject, Settings
from producers.redcap.errors import TriggerInvalid, TriggerRejected

__all__ = [
    "COMPLETION_CODES",
    "DataEntryTrigger",
    "authorize_source",
    "match_project",
    "normalize_redcap_url",
]

log = logging.getLogger(__name__)

#: REDCap's ``[instrument]_complete`` codes.
COMPLETION_CODES: Mapping[str, RedcapCompletionStatus] = {
    "0": RedcapCompletionStatus.INCOMPLETE,
    "1": RedcapCompletionStatus.UNVERIFIED,
    "2": RedcapCompletionStatus.COMPLETE,
}

_REQUIRED = ("project_id", "instrument", "record", "redcap_url")
_KNOWN = frozenset(
    {
        *_REQUIRED,
        "username",
        "redcap_event_name",
        "redcap_repeat_instrument",
        "redcap_repeat_instance",
        "redcap_data_access_group",
        "project_url",
    }
)
# REDCap's unique names: lower-case letters, digits, underscores.
_UNIQUE_NAME = re.compile(r"^[a-z0-9_]+$")


def normalize_redcap_url(url: str) -> str:
    """Compare-ready form of a REDCap base URL: lower-case scheme and host, no default
    port, trailing slash. ``HTTPS://Redcap.Example.org:443/redcap`` and
    ``https://redcap.example.org/redcap/`` are the same server."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port is not None and not ((scheme == "https" and port == 443) or (scheme == "http" and port == 80)):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/") + "/"
    return urlunsplit((scheme, host, path, "", ""))


@dataclass(frozen=True)
class DataEntryTrigger:
    """One Data Entry Trigger, validated. Build it with :meth:`from_form`."""

    project_id: str
    instrument: str
    record: str
    redcap_url: str
    username: str | None = None
    event_name: str | None = None
    repeat_instrument: str | None = None
    repeat_instance: int | None = None
    data_access_group: str | None = None
    completion_status: RedcapCompletionStatus | None = None
    project_url: str | None = None
    extra_fields: tuple[str, ...] = ()
    """Names of fields we do not know (tolerated, logged): REDCap may add some."""

    @classmethod
    def from_form(cls, form: Mapping[str, str]) -> DataEntryTrigger:
        """Validate a decoded form body; raise :class:`TriggerInvalid` naming every bad field.

        Empty strings count as absent: REDCap sends ``redcap_event_name=`` in some setups.
        """

        def get(name: str) -> str | None:
            value = form.get(name)
            if value is None:
                return None
            value = value.strip()
            return value or None

        missing = [name for name in _REQUIRED if get(name) is None]
        invalid: list[str] = []
        instrument = get("instrument")
        if instrument is not None and not _UNIQUE_NAME.match(instrument):
            invalid.append("instrument")
        event_name = get("redcap_event_name")
        if event_name is not None and not _UNIQUE_NAME.match(event_name):
            invalid.append("redcap_event_name")
        repeat_instrument = get("redcap_repeat_instrument")
        if repeat_instrument is not None and not _UNIQUE_NAME.match(repeat_instrument):
            invalid.append("redcap_repeat_instrument")
        repeat_instance: int | None = None
        raw_instance = get("redcap_repeat_instance")
        if raw_instance is not None:
            if raw_instance.isdigit() and int(raw_instance) >= 1:
                repeat_instance = int(raw_instance)
            else:
                invalid.append("redcap_repeat_instance")
        redcap_url = get("redcap_url")
        if redcap_url is not None and not redcap_url.lower().startswith(("http://", "https://")):
            invalid.append("redcap_url")
        completion: RedcapCompletionStatus | None = None
        if instrument is not None:
            raw_complete = get(f"{instrument}_complete")
            if raw_complete is not None:
                if raw_complete in COMPLETION_CODES:
                    completion = COMPLETION_CODES[raw_complete]
                else:
                    invalid.append(f"{instrument}_complete")
        if missing or invalid:
            raise TriggerInvalid(missing=missing, invalid=invalid)
        assert instrument is not None and redcap_url is not None
        known = _KNOWN | {f"{instrument}_complete"}
        return cls(
            project_id=get("project_id") or "",
            instrument=instrument,
            record=get("record") or "",
            redcap_url=redcap_url,
            username=get("username"),
            event_name=event_name,
            repeat_instrument=repeat_instrument,
            repeat_instance=repeat_instance,
            data_access_group=get("redcap_data_access_group"),
            completion_status=completion,
            project_url=get("project_url"),
            extra_fields=tuple(sorted(name for name in form if name not in known)),
        )

    @property
    def log_fields(self) -> dict[str, object]:
        """What may be logged about this trigger: ids and names, no record values."""
        return {
            "redcap_project_id": self.project_id,
            "redcap_record": self.record,
            "redcap_instrument": self.instrument,
            "redcap_event": self.event_name,
            "redcap_repeat_instance": self.repeat_instance,
        }


def authorize_source(settings: Settings, client_host: str | None, secret: str | None) -> None:
    """Check the caller's address and the trigger URL's secret; raise :class:`TriggerRejected`.

    Done before the body is parsed, so an untrusted caller learns nothing about what a
    valid trigger looks like. Behind a reverse proxy the address is the proxy's: then
    restrict the network at the proxy and rely on the secret here.
    """
    if settings.redcap_allowed_networks:
        try:
            address = ipaddress.ip_address(client_host or "")
        except ValueError:
            raise TriggerRejected("source address unknown") from None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        networks = [ipaddress.ip_network(n, strict=False) for n in settings.redcap_allowed_networks]
        if not any(address.version == net.version and address in net for net in networks):
            raise TriggerRejected(f"source address {address} is not in redcap_allowed_networks")
    expected = settings.redcap_trigger_secret.get_secret_value()
    if expected:
        if secret is None:
            raise TriggerRejected("trigger URL carries no secret")
        if not hmac.compare_digest(secret.encode("utf-8"), expected.encode("utf-8")):
            raise TriggerRejected("trigger URL carries a wrong secret")


def match_project(projects: Sequence[RedcapProject], trigger: DataEntryTrigger) -> RedcapProject:
    """The configured project the trigger names, or :class:`TriggerRejected`."""
    wanted = normalize_redcap_url(trigger.redcap_url)
    for project in projects:
        if project.project_id == trigger.project_id and normalize_redcap_url(project.redcap_url) == wanted:
            return project
    raise TriggerRejected(f"project {trigger.project_id} of {wanted} is not configured")
