"""The reserved prefix `/_gateway/` on the public listener: the gateway's own endpoints.

Nothing under it is ever forwarded upstream, and nothing under it asks for an API key:
the routes here are registered before the proxy's catch-all route, so aiohttp's router
answers them first. `/_gateway/ready` is the load balancers' readiness check; any other
path under the prefix is a JSON 404. Further endpoints (`/_gateway/verify`,
`/_gateway/secret-scanning/github`) are added beside `ready` in `add_routes`.

Readiness here is the process's, not the database's: a replica is ready once it has
started (pool, notification listener, flushers) and until it starts shutting down. A
Postgres outage is not a reason to take every replica out of the balancer, since cached
keys keep working through it; the admin listener's /readyz reports the database.
"""

from __future__ import annotations

import dataclasses
import json

from aiohttp import web

from .errors import GatewayError, error_response
from .headers import SERVER_NAME

PREFIX = "/_gateway/"


@dataclasses.dataclass(slots=True)
class Readiness:
    # Set on start-up, cleared when shutdown begins (SIGTERM): balancers stop sending new
    # requests while the in-flight ones finish.
    ready: bool = False


READINESS = web.AppKey("readiness", Readiness)

_READY_BODY = json.dumps({"status": "ready"}).encode()
_NOT_READY_BODY = json.dumps({"status": "not_ready"}).encode()


def add_routes(app: web.Application) -> None:
    """Register the reserved routes; call before adding the proxy's catch-all route."""
    app[READINESS] = Readiness()
    app.on_startup.append(_started)
    app.on_shutdown.append(_stopping)
    app.router.add_route("*", PREFIX + "ready", ready)
    app.router.add_route("*", PREFIX.rstrip("/"), not_found)
    app.router.add_route("*", PREFIX + "{rest:.*}", not_found)


async def _started(app: web.Application) -> None:
    app[READINESS].ready = True


async def _stopping(app: web.Application) -> None:
    app[READINESS].ready = False


async def ready(request: web.Request) -> web.Response:
    if request.method not in ("GET", "HEAD"):
        refused = GatewayError(
            405, "method_not_allowed", "Method not allowed.", {"Allow": "GET, HEAD"}
        )
        return error_response(request, refused)
    is_ready = request.app[READINESS].ready
    return web.Response(
        status=200 if is_ready else 503,
        body=_READY_BODY if is_ready else _NOT_READY_BODY,
        content_type="application/json",
        headers={"Server": SERVER_NAME, "Cache-Control": "no-store"},
    )


async def not_found(request: web.Request) -> web.Response:
    return error_response(request, GatewayError(404, "not_found", "No such gateway endpoint."))
