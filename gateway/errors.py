"""The gateway's own errors: one small family, rendered as JSON in one place.

Handlers raise `GatewayError`; `error_response` renders it as
`{"error": {"code", "message", "request_id", ...details}}` for both listeners: the proxy
calls it from its pipeline, the admin app through `error_middleware`. Anything else that
escapes a handler becomes a 500 `internal_error` and is logged with its traceback, never
shown.

Each error also carries the request's `Outcome`: the label it is counted under (metrics,
access log, and for the first six, the key's hourly usage).
"""

from __future__ import annotations

import enum
import json
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .headers import SERVER_NAME

log = logging.getLogger("gateway")

REQUEST_ID = web.RequestKey("request_id", str)


def new_request_id() -> str:
    return secrets.token_hex(12)


class Outcome(enum.StrEnum):
    """How a request ended, as metrics, the access log and usage counters name it."""

    OK = "ok"
    UPSTREAM_4XX = "upstream_4xx"
    UPSTREAM_5XX = "upstream_5xx"
    RATE_LIMITED = "rate_limited"
    DENIED = "denied"  # a known key refused: disabled, expired, address, scope
    FAILED_AUTH = "failed_auth"  # a wrong secret for a known key id
    UNAUTHENTICATED = "unauthenticated"  # no key, or not one of ours
    UNAVAILABLE = "unavailable"  # keys cannot be verified (database down)
    THROTTLED = "throttled"  # too many failed authentications
    BAD_REQUEST = "bad_request"
    INTERNAL_ERROR = "internal_error"

    @classmethod
    def of_status(cls, status: int) -> Outcome:
        """The outcome of an answer the upstream gave."""
        if status >= 500:
            return cls.UPSTREAM_5XX
        return cls.UPSTREAM_4XX if status >= 400 else cls.OK


# The outcomes kept per key and hour (SPEC §5), in the order the usage API lists them;
# the others count as `denied` there.
USAGE_OUTCOMES = (
    Outcome.OK,
    Outcome.UPSTREAM_4XX,
    Outcome.UPSTREAM_5XX,
    Outcome.RATE_LIMITED,
    Outcome.DENIED,
    Outcome.FAILED_AUTH,
)


def _default_outcome(status: int) -> Outcome:
    if status in (502, 504):
        return Outcome.UPSTREAM_5XX
    if status in (400, 413, 417, 431):
        return Outcome.BAD_REQUEST
    return Outcome.INTERNAL_ERROR if status >= 500 else Outcome.DENIED


class GatewayError(Exception):
    """An error the gateway answers itself, with its HTTP status and a stable code.

    `details` are extra members of the error object (a validation error's `fields`).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        outcome: Outcome | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.outcome = outcome or _default_outcome(status)
        self.details = details


def error_body(exc: GatewayError, request_id: str) -> str:
    """The JSON body of an error (ASCII, one line: it also travels in a header to nginx)."""
    error: dict[str, Any] = {"code": exc.code, "message": exc.message, "request_id": request_id}
    if exc.details:
        error.update(exc.details)
    return json.dumps({"error": error})


def error_response(request: web.Request, exc: GatewayError) -> web.Response:
    """The one JSON rendering of an error, for both listeners."""
    request_id = request.get(REQUEST_ID) or new_request_id()
    response = web.Response(
        status=exc.status,
        text=error_body(exc, request_id),
        content_type="application/json",
        headers=exc.headers,
    )
    response.headers["X-Request-Id"] = request_id
    response.headers["Server"] = SERVER_NAME  # not aiohttp's versions
    return response


def internal_error() -> GatewayError:
    return GatewayError(500, "internal_error", "Internal error.")


def head_too_large() -> GatewayError:
    """A request head over the gateway's bounds, as every listener answers it."""
    message = "The request headers are too large."
    return GatewayError(431, "request_header_fields_too_large", message)


def unreadable_request(status: int = 400) -> GatewayError:
    """A request the HTTP/1.1 parser refuses, as every listener answers it."""
    return GatewayError(status, "invalid_request", "The request is not valid HTTP/1.1.")


# aiohttp's own HTTP errors (404 from the router, 405, 413 from client_max_size...)
# are given the same JSON shape so that clients parse exactly one error format.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    431: "request_header_fields_too_large",
}


def http_error(exc: web.HTTPException) -> GatewayError:
    """aiohttp's own HTTP error as the gateway's."""
    code = _HTTP_CODES.get(exc.status, "http_error")
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    return GatewayError(exc.status, code, exc.reason, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        return error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(request, http_error(exc))
    except ConnectionResetError:
        raise  # the client is gone: nothing to answer
    except Exception:
        log.exception("unhandled error", extra={"request_id": request.get(REQUEST_ID)})
        return error_response(request, internal_error())
