"""`create_app(config)`: the public listener's application. Wiring only.

Each resource is set up and torn down in one async generator on `cleanup_ctx`, in
dependency order; aiohttp tears them down in reverse, after in-flight requests have
finished, so the final usage flush still has its database pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from . import limit_events, metrics, secret_scanning
from .auth import Authenticator
from .cache import NotificationListener
from .clock import Clock, SystemClock
from .config import Config
from .counters import PostgresCounters
from .db import create_pool, sample_pool
from .keys import Hasher, KeyFormat, KeyStore
from .logs import AccessLog
from .proxy import Proxy
from .ratelimit import RateLimiter, SlidingWindowLimiter
from .upstream import UpstreamPool
from .usage import UsageRecorder

CONFIG = web.AppKey("config", Config)
CLOCK = web.AppKey("clock", Clock)
POOL = web.AppKey("pool", asyncpg.Pool)
STORE = web.AppKey("store", KeyStore)
AUTH = web.AppKey("authenticator", Authenticator)
LISTENER = web.AppKey("listener", NotificationListener)
LIMITER = web.AppKey("limiter", RateLimiter)
USAGE = web.AppKey("usage", UsageRecorder)
UPSTREAM = web.AppKey("upstream", UpstreamPool)
PROXY = web.AppKey("proxy", Proxy)


def create_app(
    config: Config,
    *,
    clock: Clock | None = None,
    limiter: RateLimiter | None = None,
) -> web.Application:
    # No middleware and no response signal: Proxy.handle answers every request itself,
    # errors included, and names each response (`headers.copy_response_headers`).
    app = web.Application()
    app[CONFIG] = config
    app[CLOCK] = clock or SystemClock()
    app[LIMITER] = limiter or SlidingWindowLimiter(config.rate_limits, app[CLOCK])
    app.cleanup_ctx.extend(
        [_metrics, _database, _authentication, _limits, _usage, _upstream, _proxy]
    )
    limit_events.add_to(app)  # key.limit_reached webhook events
    secret_scanning.add_routes(app)  # the reserved /_gateway/ prefix, before the catch-all
    app.router.add_route("*", "/{path:.*}", _handle)
    return app


async def _handle(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].handle(request)


async def _metrics(app: web.Application) -> AsyncIterator[None]:
    # First set up, so last torn down: the final fold follows the last request.
    folder = asyncio.create_task(metrics.fold_every(), name="metrics-fold")
    yield
    folder.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await folder


async def _database(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    pool = await create_pool(config.database)
    app[POOL] = pool
    app[STORE] = KeyStore(pool, KeyFormat(config.keys.prefix), Hasher(config.keys.argon2))
    sampler = asyncio.create_task(sample_pool(pool, "proxy"), name="pool-gauges")
    yield
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    await pool.close()


async def _authentication(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    auth = Authenticator(app[STORE], config.keys, app[CLOCK])
    listener = NotificationListener(config.database, auth.key_changed, auth.listener_reconnected)
    await listener.start()
    auth.start()
    app[AUTH] = auth
    app[LISTENER] = listener
    yield
    await listener.stop()
    await auth.close()


async def _limits(app: web.Application) -> AsyncIterator[None]:
    await app[LIMITER].start(PostgresCounters(app[POOL]))
    yield
    await app[LIMITER].stop()


async def _usage(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    usage = UsageRecorder(app[STORE], app[POOL], config.usage, app[CLOCK])
    await usage.start()
    app[USAGE] = usage
    yield
    await usage.stop()


async def _upstream(app: web.Application) -> AsyncIterator[None]:
    proxy = app[CONFIG].proxy
    pool = UpstreamPool(
        proxy.upstream,
        limit=proxy.max_upstream_connections,
        connect_timeout=proxy.connect_timeout_seconds,
    )
    app[UPSTREAM] = pool
    yield
    await pool.close()


async def _proxy(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    access_log = AccessLog.from_config(config.logging)
    app[PROXY] = Proxy(
        config.proxy,
        app[AUTH],
        app[LIMITER],
        app[USAGE],
        app[UPSTREAM],
        access_log=access_log,
    )
    yield
    if access_log is not None:
        access_log.flush()
