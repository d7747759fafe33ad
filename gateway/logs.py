"""Logging: one JSON object per line on stdout (or plain text for local runs).

Everything logs through the standard `logging` module; fields passed with `extra=` become
JSON keys. Secrets never reach a log call: the pipeline logs key ids, never keys, and the
`Authorization` header is never logged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import sys
import time
from json.encoder import encode_basestring_ascii
from typing import Any, TextIO

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import RequestPayloadError

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


def _string(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


class AccessLog:
    """The access log: one line per proxied request (SPEC §5), in the shape of the
    formatters above, on the same stream, written once per event-loop pass.

    It is the one log written on every request, so it skips what `logging` does per call
    (a LogRecord, the handler's lock, the formatter's scan of the record, a write and a
    flush): each line is made with one `json.dumps` and joined to the lines of the same
    loop pass, which go out in one write as soon as the loop has run that pass's ready
    callbacks. Lines wait for less than one pass and are written before the process exits.
    """

    LOGGER = "gateway.access"

    def __init__(self, text: bool = False, stream: TextIO | None = None) -> None:
        self._text = text
        self._stream = stream or sys.stdout
        self._lines: list[str] = []
        self._pid = os.getpid()
        self._second = -1
        self._utc = self._local = ""

    @classmethod
    def from_config(cls, config: LoggingConfig) -> AccessLog | None:
        """An access log unless it is turned off, or INFO lines are not wanted."""
        if not config.access_log or not logging.getLogger(cls.LOGGER).isEnabledFor(logging.INFO):
            return None
        return cls(text=config.format == "text")

    def write(
        self,
        *,
        request_id: str,
        account_id: str | None,
        key_id: str | None,
        method: str,
        path: str,
        status: int,
        latency_ms: float,
        client_ip: str,
        outcome: str,
    ) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # the date and time to the second, made once a second
            self._second = second
            self._utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        millis = int((now - second) * 1000)
        if self._text:
            # As TextFormatter renders a record: local time, level, logger[pid], fields.
            fields = {
                "request_id": request_id,
                "account_id": account_id,
                "key_id": key_id,
                "method": method,
                "path": path,
                "status": status,
                "latency_ms": latency_ms,
                "client_ip": client_ip,
                "outcome": outcome,
            }
            pairs = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
            line = f"{self._local},{millis:03d} INFO    {self.LOGGER}[{self._pid}]: request {pairs}"
        else:
            # As JsonFormatter renders a record (ASCII-escaped: still JSON), written out
            # field by field: json.dumps of the same dict costs four times as much. Every
            # string a client can influence goes through the JSON string encoder.
            line = (
                f'{{"time": "{self._utc}.{millis:03d}+00:00", "level": "info", '
                f'"logger": "{self.LOGGER}", "pid": {self._pid}, "message": "request", '
                f'"request_id": {_string(request_id)}, "account_id": {_string(account_id)}, '
                f'"key_id": {_string(key_id)}, "method": {_string(method)}, '
                f'"path": {_string(path)}, "status": {int(status)}, '
                f'"latency_ms": {float(latency_ms)!r}, "client_ip": {_string(client_ip)}, '
                f'"outcome": {_string(outcome)}}}'
            )
        if not self._lines:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a test calling in directly): write it now
                self._lines.append(line)
                self.flush()
                return
        self._lines.append(line)

    def flush(self) -> None:
        if not self._lines:
            return
        data = "\n".join(self._lines) + "\n"
        self._lines.clear()
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):
            pass  # stdout closed or full: like logging, never fail a request over its log


class _ClientErrors(logging.Filter):
    """aiohttp logs a request it cannot parse at ERROR, with the parser's message, which
    quotes the offending bytes: an `Authorization` header among them. A malformed request
    (or a client gone mid-request, or a body that does not decode under its
    Content-Encoding, which aiohttp meets again reading the rest of it after the handler's
    400) is the client's doing: one INFO line naming the error, never quoting the request."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | ConnectionResetError | RequestPayloadError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            args = record.args
            record.client_ip = args[0] if isinstance(args, tuple) and args else None
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
