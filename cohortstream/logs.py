"""Structured logging: one JSON object per line, or readable lines for people.

Fields passed with ``extra=`` become JSON keys. By project rule, log calls carry study,
series and SOP instance UIDs at most: never a patient name, id or birth date.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from cohortstream.redact import RedactCredentials, settings_secrets
from cohortstream.settings import Settings

__all__ = [
    "PROJECT_PACKAGES",
    "JsonFormatter",
    "LibraryQuietFilter",
    "LogProgress",
    "configure_logging",
    "logging_dict_config",
]

#: Top-level packages of this repository: their loggers are "ours", everything else is a
#: library (httpx, httpcore, aiokafka, pynetdicom, faust, mode, pymongo, urllib3, ...).
PROJECT_PACKAGES = frozenset(
    {"cohortstream", "producers", "consumers", "streams", "api", "export", "bench", "__main__"}
)

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Format a record as a single JSON line with its ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            # exc_text when set: RedactCredentials has already masked it
            payload["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class LibraryQuietFilter(logging.Filter):
    """Let through every record of the project's own loggers, and only WARNING and above
    from libraries: the quiet default of the CLI's one-shot commands (an export would
    otherwise print one httpx INFO line per fetched instance)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.partition(".")[0] in PROJECT_PACKAGES


def configure_logging(settings: Settings, *, quiet_libraries: bool = False) -> None:
    """Install one stderr handler on the root logger, as the settings ask.

    ``quiet_libraries`` drops libraries' records below WARNING (the CLI's default for
    commands that are not services; ``cohortstream -v`` turns it off). Services log as
    the settings say, libraries included.
    """
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)-7s %(name)s: %(message)s"))
    if quiet_libraries:
        handler.addFilter(LibraryQuietFilter())
    handler.addFilter(RedactCredentials(settings_secrets(settings)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)


class LogProgress(logging.Handler):
    """A progress bar (tqdm on stderr) fed by a logger's progress records.

    For commands whose library code reports progress only as log records carrying
    ``done`` and ``total`` in ``extra=`` (e.g. ``producers.redcap.sync``): attach it to
    that logger for the command's duration; each such record moves the bar (records the
    log level filters out, e.g. with ``COHORTSTREAM_LOG_LEVEL=WARNING``, do not). Disabled,
    it does nothing. Use as a context manager.
    """

    def __init__(self, logger_name: str, *, desc: str, unit: str, enabled: bool) -> None:
        super().__init__(logging.DEBUG)
        self.logger_name = logger_name
        self.desc, self.unit, self.enabled = desc, unit, enabled
        self._bar: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        done, total = getattr(record, "done", None), getattr(record, "total", None)
        if not isinstance(done, int) or not isinstance(total, int):
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(desc=self.desc, unit=self.unit, total=total, file=sys.stderr, mininterval=0.5)
        self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def __enter__(self) -> LogProgress:
        if self.enabled:
            logging.getLogger(self.logger_name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            logging.getLogger(self.logger_name).removeHandler(self)
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def logging_dict_config(settings: Settings) -> dict[str, Any]:
    """The same setup as :func:`configure_logging`, as a ``dictConfig`` for faust's worker,
    which configures logging itself when it starts."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"}
        if settings.log_format == "json"
        else {"format": "%(asctime)s %(process)d %(levelname)-7s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {"redact": {"()": RedactCredentials, "secrets": settings_secrets(settings)}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
                "filters": ["redact"],
            }
        },
        "root": {"handlers": ["stderr"], "level": settings.log_level},
    }
