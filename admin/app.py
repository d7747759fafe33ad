"""`create_admin_app(config)`: the admin listener (default 127.0.0.1:8081). Wiring only.

Health, readiness and metrics live in `health.py`; the key-lifecycle API and the web page
are added beside it by their own issues.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.config import Config
from gateway.db import create_pool
from gateway.errors import error_middleware

from . import health
from .state import CONFIG, POOL


def create_admin_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024)
    app[CONFIG] = config
    app.cleanup_ctx.append(_database)
    health.add_routes(app)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    database = app[CONFIG].database
    pool = await create_pool(database, min_size=0, max_size=min(4, database.pool_max_size))
    app[POOL] = pool
    yield
    await pool.close()
