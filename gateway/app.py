"""`create_app(config)`: the public listener's application. Wiring only.

Each resource is set up and torn down in one async generator on `cleanup_ctx`, in
dependency order; aiohttp tears them down in reverse, after in-flight requests have
finished, so the final usage flush still has its database pool.
"""

from __future__ import annotations

import logging
import types
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
from aiohttp import web

from . import ingress, limit_events, metrics, reserved, secret_scanning
from .auth import Authenticator
from .background import running
from .cache import NotificationListener
from .clock import Clock, SystemClock
from .config import Config
from .counters import PostgresCounters
from .db import create_pool, sample_pool
from .keyformat import Hasher, KeyFormat
from .keys import KeyStore
from .logs import AccessLog
from .proxy import Proxy
from .ratelimit import RateLimiter, SlidingWindowLimiter
from .routes import RouteTable
from .throttle import FailedAuthThrottle
from .tls import upstream_context
from .upstream import UpstreamPool
from .usage import UsageRecorder

log = logging.getLogger("gateway")

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
VERIFY = web.AppKey("verify", ingress.VerifyEndpoint)

# The aiohttp server options this app must be served with (`gateway serve`, the tests).
# Bodies pass to the upstream as the client sent them: aiohttp would decode a gzip or
# deflate body as it reads it, and the upstream got the decoded bytes under the client's
# Content-Encoding, or a 502 when they no longer matched the Content-Length.
SERVER_OPTIONS: Mapping[str, Any] = types.MappingProxyType({"auto_decompress": False})


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
    # /_gateway/... before the proxy's catch-all, so never forwarded and no key asked;
    # its endpoints before the prefix's own catch-all 404 (reserved.py).
    secret_scanning.add_routes(app)
    ingress.add_routes(app, VERIFY)
    reserved.add_routes(app)
    # `expect_handler`: aiohttp's default answers `Expect: 100-continue` before the handler
    # runs; the proxy sends its 100 only once the request is authorised (SPEC §10).
    app.router.add_route("*", "/{path:.*}", _handle, expect_handler=_decide_later)
    return app


async def _handle(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].handle(request)


async def _decide_later(request: web.Request) -> None:
    return None


async def _metrics(app: web.Application) -> AsyncIterator[None]:
    # First set up, so last torn down: the final fold follows the last request.
    async with running(metrics.fold_every(), "metrics-fold"):
        yield


async def _database(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    pool = await create_pool(config.database)
    app[POOL] = pool
    app[STORE] = KeyStore(pool, KeyFormat(config.keys.prefix), Hasher(config.keys.argon2))
    async with running(sample_pool(pool, "proxy"), "pool-gauges"):
        yield
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
        ssl_context=upstream_context(proxy.upstream_ca) if proxy.upstream_ca else None,
    )
    app[UPSTREAM] = pool
    yield
    await pool.close()


async def _proxy(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    access_log = AccessLog.from_config(config.logging)
    routes = RouteTable(
        config.routes, config.permissions, unmatched_allowed=config.routes_unmatched == "allow"
    )
    if routes.unmatched_allowed:
        log.warning(
            "routes_unmatched: allow: requests that match no route are forwarded, needing"
            " no permission; set 'deny' to refuse them"
        )
    app[PROXY] = Proxy(
        config.proxy,
        app[AUTH],
        FailedAuthThrottle(config.rate_limits.failed_auth, app[CLOCK]),
        app[LIMITER],
        app[USAGE],
        app[UPSTREAM],
        routes,
        access_log=access_log,
    )
    app[VERIFY] = ingress.VerifyEndpoint(app[PROXY])
    yield
    if access_log is not None:
        access_log.flush()
