"""Keep credentials out of logs: connection strings lose their password, known secrets vanish.

Every process installs :class:`RedactCredentials` on its log handler
(:func:`cohortstream.logs.configure_logging`), so neither our own messages nor a
library's (a driver echoing its URL, an exception quoting a setting) can write a
password, token or key to a log file or collector.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from pydantic import SecretStr

from cohortstream.settings import Settings, secret_field_names

__all__ = ["MASK", "RedactCredentials", "mask_url_credentials", "settings_secrets"]

MASK = "***"

# scheme://user:password@host  (the password may hold anything but '@', '/' and whitespace)
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@")

# ?secret=... in a logged request line (REDCap's trigger URL): masked even when it is a wrong guess,
# which may be a near-miss of the real one.
_QUERY_SECRET = re.compile(r"(?P<name>[?&](?:secret|token|api_key|password)=)[^&\s\"']+", re.IGNORECASE)

#: Shorter values are not masked as text: they would blank out ordinary words.
_MIN_SECRET_LENGTH = 6


def mask_url_credentials(text: str) -> str:
    """``mongodb://app:s3cret@host/`` → ``mongodb://app:***@host/`` (and ``?secret=x`` → ``?secret=***``)
    wherever it appears in ``text``."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['name']}{MASK}", text)


def settings_secrets(settings: Settings) -> list[str]:
    """The secret values of ``settings`` (passwords, tokens, keys, and the password in the MongoDB URL)."""
    values: list[str] = []
    for name in secret_field_names():
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            values.append(value.get_secret_value())
        elif isinstance(value, list):
            values.extend(project.api_token.get_secret_value() for project in value)
    url = settings.mongo_url.get_secret_value()
    match = _URL_USERINFO.search(url)
    if match:
        values.append(match["password"])
    return [v for v in values if len(v) >= _MIN_SECRET_LENGTH]


class RedactCredentials(logging.Filter):
    """Rewrite each record so that its message, ``extra`` fields and traceback hold no credentials."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted(set(secrets), key=len, reverse=True)

    def redact(self, text: str) -> str:
        text = mask_url_credentials(text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        for key, value in list(vars(record).items()):
            if isinstance(value, str) and key not in ("msg", "name", "levelname", "pathname", "filename", "module"):
                setattr(record, key, self.redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True
