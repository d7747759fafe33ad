"""Unauthenticated operational endpoints of the admin listener: /healthz, /readyz, /metrics.

With `serve --workers N` the proxy runs in N processes and this listener in the parent:
metrics are then read from prometheus-client's multiprocess directory (summed over every
worker), and readiness asks the supervisor whether every worker's notification listener
is connected. In one process both come from this process's own state.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gateway import metrics as gateway_metrics
from gateway.db import UNAVAILABLE, pending_migrations

from .state import POOL

# Returns None when the notification listener(s) are connected, else what is wrong.
ListenerCheck = Callable[[], str | None]
LISTENER_CHECK: web.AppKey[ListenerCheck] = web.AppKey("listener_check")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count admin requests by route template (never the raw path: ids are unbounded)."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        gateway_metrics.ADMIN_REQUESTS.labels(route, method, f"{status // 100}xx").inc()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def registry() -> CollectorRegistry:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return REGISTRY
    collected = CollectorRegistry()
    collected.register(WorkerFiles(Path(directory)))
    return collected


class WorkerFiles(Collector):
    """Every worker's metrics from the multiprocess directory, as prometheus-client's
    `MultiProcessCollector` reads them, but for the files no worker has sized yet.

    A process creates its file empty and sizes it a moment later; the library's merge
    raises on an empty file and fails the whole read (prometheus/client_python#1199), so
    a worker starting during a scrape or a readiness check made it a 500, and one killed
    in that moment made every later one fail. An empty file holds no sample: left out.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        files = [str(f) for f in self.directory.glob("*.db") if _sized(f)]
        merge = multiprocess.MultiProcessCollector.merge
        return merge(files, accumulate=True)  # type: ignore[no-any-return,no-untyped-call]


def _sized(file: Path) -> bool:
    try:
        return file.stat().st_size > 0
    except FileNotFoundError:  # its process has gone and it was removed
        return False


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format: every worker's metrics, summed where that makes sense."""
    gateway_metrics.fold()  # this process's proxy updates (other workers fold each second)
    return web.Response(
        body=generate_latest(registry()), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        async with request.app[POOL].acquire(timeout=2) as conn:
            pending = await pending_migrations(conn)
        checks["database"] = "ok"
        checks["migrations"] = "ok" if not pending else f"{len(pending)} pending"
    except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    listener_check = request.app.get(LISTENER_CHECK)
    if listener_check is not None:
        problem = listener_check()
        checks["notifications"] = "ok" if problem is None else problem
    ready = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status=200 if ready else 503,
    )
