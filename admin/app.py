"""`create_admin_app(config)`: the admin listener (default 127.0.0.1:8081).

For now it serves health and metrics; the key-lifecycle API and the web page are added
here by their own issues.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.config import Config
from gateway.db import UNAVAILABLE, create_pool, pending_migrations
from gateway.errors import error_middleware

CONFIG = web.AppKey("config", Config)
POOL = web.AppKey("pool", asyncpg.Pool)


def create_admin_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024)
    app[CONFIG] = config
    app.cleanup_ctx.append(_database)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    database = app[CONFIG].database
    pool = await create_pool(database, min_size=0, max_size=min(4, database.pool_max_size))
    app[POOL] = pool
    yield
    await pool.close()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; this process's registry (the proxy runs in it too)."""
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        async with request.app[POOL].acquire(timeout=2) as conn:
            pending = await pending_migrations(conn)
        checks["database"] = "ok"
        checks["migrations"] = "ok" if not pending else f"{len(pending)} pending"
    except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status=200 if ready else 503,
    )
