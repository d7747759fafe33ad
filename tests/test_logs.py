"""Log formatting: JSON lines for machines, plain text for people, one setup for both."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from gateway.config import LoggingConfig
from gateway.logs import AccessLog, JsonFormatter, TextFormatter, _ClientErrors, configure_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logger = logging.getLogger("test.logs")
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    out.handler = handler  # type: ignore[attr-defined]
    yield out
    logger.removeHandler(handler)


def test_json_line_has_the_standard_fields_and_the_extras(stream: io.StringIO) -> None:
    stream.handler.setFormatter(JsonFormatter())  # type: ignore[attr-defined]
    logging.getLogger("test.logs").info("request", extra={"status": 200, "key_id": "k-1"})
    entry = json.loads(stream.getvalue())
    assert entry["level"] == "info"
    assert entry["logger"] == "test.logs"
    assert entry["message"] == "request"
    assert isinstance(entry["pid"], int)
    assert entry["time"].endswith("+00:00")
    assert (entry["status"], entry["key_id"]) == (200, "k-1")


def test_json_line_carries_the_traceback_on_one_line(stream: io.StringIO) -> None:
    stream.handler.setFormatter(JsonFormatter())  # type: ignore[attr-defined]
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("test.logs").exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert "ValueError: boom" in json.loads(lines[0])["exception"]


def test_text_line_is_readable_with_its_extras(stream: io.StringIO) -> None:
    stream.handler.setFormatter(TextFormatter())  # type: ignore[attr-defined]
    logging.getLogger("test.logs").warning("listening", extra={"url": "http://x:1"})
    line = stream.getvalue().strip()
    assert "WARNING" in line and "test.logs[" in line
    assert line.endswith("listening url=http://x:1")


def test_a_body_that_does_not_decode_is_logged_as_the_clients_error(
    stream: io.StringIO,
) -> None:
    """After answering 400, aiohttp reads the rest of the body and logs its decoding error
    as an unhandled exception (no arguments): one INFO line, no traceback."""
    stream.handler.setFormatter(JsonFormatter())  # type: ignore[attr-defined]
    stream.handler.addFilter(_ClientErrors())  # type: ignore[attr-defined]
    try:
        raise web.RequestPayloadError("Can not decode content-encoding: deflate")
    except web.RequestPayloadError as exc:
        logging.getLogger("test.logs").exception("Unhandled exception", exc_info=exc)
    entry = json.loads(stream.getvalue())
    assert (entry["level"], entry["error"]) == ("info", "RequestPayloadError")
    assert "exception" not in entry


@pytest.mark.parametrize(("level", "shown"), [("INFO", True), ("WARNING", False)])
def test_logging_level_filters(capsys: pytest.CaptureFixture[str], level: str, shown: bool) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(LoggingConfig(level=level, format="json"))  # type: ignore[arg-type]
        logging.getLogger("gateway.test").info("hello")
        for handler in root.handlers:
            handler.flush()
        assert ("hello" in capsys.readouterr().out) is shown
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def request_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": "r-1",
        "account_id": "6f1c2a47-0b1e-4c57-9a43-4d1c9d6a0f3e",
        "key_id": None,
        "method": "GET",
        "path": "/v1/x",
        "status": 200,
        "latency_ms": 0.412,
        "client_ip": "127.0.0.1",
        "outcome": "ok",
    }
    fields.update(changes)
    return fields


async def test_access_log_lines_of_one_loop_pass_go_out_together_as_json_lines() -> None:
    out = io.StringIO()
    access = AccessLog(stream=out)
    access.write(**request_fields(request_id="r-1"))
    access.write(**request_fields(request_id="r-2", status=401))
    assert out.getvalue() == ""  # written once the loop has run this pass
    await asyncio.sleep(0)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == ["r-1", "r-2"]
    for line in lines:
        assert (line["level"], line["logger"], line["message"]) == (
            "info",
            "gateway.access",
            "request",
        )
        assert isinstance(line["pid"], int)
        parsed = dt.datetime.fromisoformat(line["time"])
        assert parsed.utcoffset() == dt.timedelta(0)
        assert abs((dt.datetime.now(dt.UTC) - parsed).total_seconds()) < 60


@pytest.mark.parametrize(
    "hostile",
    ['/v1/"quoted"', "/v1/back\\slash", "/v1/line\nbreak", "/v1/caf\u00e9/\u2603", "/\x00\x1f"],
)
def test_access_log_json_lines_are_the_fields_exactly_whatever_the_client_sent(
    hostile: str,
) -> None:
    """The JSON line is written by hand (for speed): it must still be one JSON object with
    every field as given, in JsonFormatter's order, whatever a client put in the path,
    method or request id."""
    out = io.StringIO()
    fields = request_fields(path=hostile, method=hostile, request_id=hostile, key_id=None)
    AccessLog(stream=out).write(**fields)
    [line] = out.getvalue().splitlines()
    assert line.isascii()
    entry = json.loads(line)
    assert list(entry)[:5] == ["time", "level", "logger", "pid", "message"]
    assert {k: entry[k] for k in list(entry)[5:]} == fields
    assert list(entry)[5:] == list(fields)


def test_access_log_text_lines_read_like_the_other_text_lines() -> None:
    out = io.StringIO()
    AccessLog(text=True, stream=out).write(**request_fields())
    line = out.getvalue().strip()  # no running loop: written at once
    assert " INFO    gateway.access[" in line
    assert line.endswith(
        "request request_id=r-1 account_id=6f1c2a47-0b1e-4c57-9a43-4d1c9d6a0f3e method=GET"
        " path=/v1/x status=200 latency_ms=0.412 client_ip=127.0.0.1 outcome=ok"
    )


@pytest.mark.parametrize(
    ("config", "on"),
    [
        (LoggingConfig(), True),
        (LoggingConfig(access_log=False), False),
    ],
)
def test_access_log_follows_its_setting(config: LoggingConfig, on: bool) -> None:
    logger = logging.getLogger(AccessLog.LOGGER)
    saved = logger.level
    try:
        logger.setLevel(logging.INFO)
        assert (AccessLog.from_config(config) is not None) is on
        logger.setLevel(logging.WARNING)  # logging.level: WARNING hides the access lines too
        assert AccessLog.from_config(config) is None
    finally:
        logger.setLevel(saved)
