"""`gateway demo-upstream`: a stand-in for the GrowPanel REST API.

Plausible JSON on the routes the quick start shows, and `/v1/echo`, which answers with what
it received (method, path, query, headers, body size and SHA-256) so that tests and
curious users can see exactly what the gateway forwarded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from aiohttp import web

CUSTOMERS = [
    {"id": "cus_1001", "name": "Acme Analytics", "plan": "growth", "mrr": 49900, "currency": "USD"},
    {"id": "cus_1002", "name": "Birch & Co", "plan": "starter", "mrr": 9900, "currency": "USD"},
    {"id": "cus_1003", "name": "Cobalt Labs", "plan": "scale", "mrr": 129900, "currency": "USD"},
]
# The list never changes: encoded once, so a benchmark's load on this stand-in (which
# shares the machine with the gateway) costs the upstream as little as it can.
_CUSTOMERS_BODY = json.dumps({"items": CUSTOMERS, "next_cursor": None}).encode()


def _identity(request: web.Request) -> dict[str, Any]:
    return {
        "account_id": request.headers.get("X-GrowPanel-Account-Id"),
        "key_id": request.headers.get("X-GrowPanel-Key-Id"),
        "permissions": request.headers.get("X-GrowPanel-Key-Permissions", "").split(",")
        if request.headers.get("X-GrowPanel-Key-Permissions")
        else [],
    }


async def mrr(request: web.Request) -> web.Response:
    today = dt.date.today()
    months = []
    value = 152_300
    for back in range(5, -1, -1):
        month = (today.replace(day=1) - dt.timedelta(days=30 * back)).strftime("%Y-%m")
        months.append({"month": month, "mrr": value})
        value = int(value * 1.04)
    return web.json_response(
        {"metric": "mrr", "currency": "USD", "interval": "month", "data": months}
    )


async def customers(request: web.Request) -> web.Response:
    return web.Response(body=_CUSTOMERS_BODY, content_type="application/json", charset="utf-8")


async def data(request: web.Request) -> web.StreamResponse:
    """`/v1/data/...`: a JSON document, or `?bytes=N` streamed raw bytes (downloads)."""
    size = request.query.get("bytes")
    if size is not None and size.isascii() and size.isdigit():
        remaining = min(int(size), 1 << 30)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = remaining
        await response.prepare(request)
        chunk = b"g" * 65536
        while remaining > 0:
            await response.write(chunk[: min(remaining, len(chunk))])
            remaining -= min(remaining, len(chunk))
        await response.write_eof()
        return response
    return web.json_response(
        {"dataset": request.match_info["tail"], "rows": [{"date": "2026-11-01", "value": 42}]}
    )


async def account(request: web.Request) -> web.Response:
    return web.json_response({"account": _identity(request), "name": "Demo account"})


async def echo(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        digest.update(chunk)
        size += len(chunk)
    return web.json_response(
        {
            "method": request.method,
            "path": request.rel_url.raw_path,
            "query": request.rel_url.raw_query_string,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_bytes": size,
            "body_sha256": digest.hexdigest(),
            "identity": _identity(request),
        }
    )


async def status(request: web.Request) -> web.Response:
    """`/v1/status/{code}`: answers with that status (tests of pass-through)."""
    code = int(request.match_info["code"])
    return web.json_response({"status": code}, status=code)


def create_demo_app() -> web.Application:
    app = web.Application(client_max_size=1 << 30)
    app.router.add_get("/v1/reports/mrr", mrr)
    app.router.add_get("/v1/customers", customers)
    app.router.add_get("/v1/data/{tail:.+}", data)
    app.router.add_get("/v1/account", account)
    app.router.add_route("*", "/v1/echo", echo)
    app.router.add_route("*", "/v1/echo/{tail:.*}", echo)
    app.router.add_route("*", r"/v1/status/{code:[1-5]\d\d}", status)
    return app
