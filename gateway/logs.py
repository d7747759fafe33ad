"""Logging: one JSON object per line on stdout (or plain text for local runs).

Everything logs through the standard `logging` module; fields passed with `extra=` become
JSON keys. Secrets never reach a log call: the pipeline logs key ids, never keys, and the
`Authorization` header is never logged.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from .config import LoggingConfig

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s[%(process)d]: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items() if v is not None)
        return line


class _ClientErrors(logging.Filter):
    """aiohttp logs a request it cannot parse at ERROR, with the parser's message, which
    quotes the offending bytes: an `Authorization` header among them. A malformed request
    (or a client gone mid-request) is the client's doing: one INFO line naming the error,
    never quoting the request."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | ConnectionResetError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.client_ip = record.args[0] if isinstance(record.args, tuple) else None
            record.msg, record.args = "refused a request it could not read", ()
            record.error = type(exc).__name__
            record.exc_info = record.exc_text = None
        return True


def configure_logging(config: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level)
    # aiohttp's own access log is replaced by ours (one JSON line with the outcome).
    logging.getLogger("aiohttp.access").disabled = True
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ClientErrors) for f in server_log.filters):
        server_log.addFilter(_ClientErrors())
