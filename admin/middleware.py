"""The admin listener's request middleware: request ids, field errors, database outages.

`gateway.errors.error_middleware` (outermost) renders every `GatewayError`; this one sits
inside it to add what only the admin API needs: the list of offending fields on a
`validation_error`, and a 503 instead of a 500 when Postgres cannot be reached.
"""

from __future__ import annotations

import json

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.db import UNAVAILABLE
from gateway.errors import REQUEST_ID, GatewayError, new_request_id

from .validation import ValidationError


@web.middleware
async def admin_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except ValidationError as exc:
        body = {
            "error": {
                "code": exc.code,
                "message": exc.message,
                "request_id": request_id,
                "fields": [{"field": field, "message": message} for field, message in exc.errors],
            }
        }
        return web.Response(
            status=400,
            text=json.dumps(body),
            content_type="application/json",
            headers={"X-Request-Id": request_id},
        )
    except (*UNAVAILABLE, asyncpg.exceptions.PostgresConnectionError) as exc:
        raise GatewayError(
            503,
            "database_unavailable",
            "The database cannot be reached right now; retry shortly.",
            headers={"Retry-After": "5"},
        ) from exc
    response.headers.setdefault("X-Request-Id", request_id)
    return response
