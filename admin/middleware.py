"""The admin listener's request middleware: request ids and database outages.

`gateway.errors.error_middleware` (outermost) renders every `GatewayError`, a validation
error's `fields` included; this one sits inside it to give each request its id and to
answer 503 instead of 500 when Postgres cannot be reached.
"""

from __future__ import annotations

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.db import UNAVAILABLE
from gateway.errors import REQUEST_ID, GatewayError, new_request_id


@web.middleware
async def admin_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except (*UNAVAILABLE, asyncpg.exceptions.PostgresConnectionError) as exc:
        raise GatewayError(
            503,
            "database_unavailable",
            "The database cannot be reached right now; retry shortly.",
            headers={"Retry-After": "5"},
        ) from exc
    response.headers.setdefault("X-Request-Id", request_id)
    return response
