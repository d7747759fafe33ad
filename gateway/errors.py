"""The gateway's own errors: one small family, rendered as JSON in one place.

Handlers raise `GatewayError`; `error_middleware` turns it into
`{"error": {"code", "message", "request_id"}}`. Anything else that escapes a handler
becomes a 500 `internal_error` and is logged with its traceback, never shown.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler

from .headers import SERVER_NAME

log = logging.getLogger("gateway")

REQUEST_ID = web.RequestKey("request_id", str)


def new_request_id() -> str:
    return secrets.token_hex(12)


class GatewayError(Exception):
    """An error the gateway answers itself, with its HTTP status and a stable code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    request: web.Request,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    request_id = request.get(REQUEST_ID) or new_request_id()
    body = json.dumps({"error": {"code": code, "message": message, "request_id": request_id}})
    response = web.Response(
        status=status, text=body, content_type="application/json", headers=headers
    )
    response.headers["X-Request-Id"] = request_id
    response.headers["Server"] = SERVER_NAME  # not aiohttp's versions
    return response


def render(request: web.Request, exc: GatewayError) -> web.Response:
    return error_response(request, exc.status, exc.code, exc.message, exc.headers)


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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        return render(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(request, exc.status, code, exc.reason, headers)
    except ConnectionResetError:
        raise  # the client is gone: nothing to answer
    except Exception:
        log.exception("unhandled error", extra={"request_id": request.get(REQUEST_ID)})
        return error_response(request, 500, "internal_error", "Internal error.")
