"""`create_admin_app(config)`: the admin listener (default 127.0.0.1:8081). Wiring only.

Health, readiness and metrics live in `health.py`; the JSON API under `/v1` is one module
per resource (`accounts`, `members`, `keys`, `usage`, `audit`), with authentication and
SPEC §6's role table in `auth.py`, input checks in `validation.py` and the OpenAPI
document in `openapi.py`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping

from aiohttp import web

from gateway.background import running
from gateway.config import Config
from gateway.db import create_pool, sample_pool
from gateway.deliverer import Deliverer, watch_backlog
from gateway.errors import error_middleware
from gateway.headers import name_the_server
from gateway.keyformat import Hasher, KeyFormat
from gateway.keys import KeyStore

from . import accounts, audit, health, keys, members, openapi, page, permissions, usage, webhooks
from .auth import AUTHENTICATOR, AdminAuthenticator, enforce_policy
from .middleware import admin_errors
from .state import CONFIG, HASHER, POOL, STORE

log = logging.getLogger("admin")

OPERATOR_TOKEN_ENV = "GATEWAY_OPERATOR_TOKEN"  # noqa: S105 - a variable name, not a secret
_OPERATOR_TOKEN = web.AppKey("operator_token", str)


def create_admin_app(
    config: Config, *, environ: Mapping[str, str] | None = None
) -> web.Application:
    """The admin app; the operator token is read from `environ` (default: the process's)."""
    app = web.Application(
        # Outermost, the request counter sees the status of every rendered error too.
        middlewares=[health.metrics_middleware, error_middleware, admin_errors, enforce_policy],
        client_max_size=64 * 1024,
    )
    app.on_response_prepare.append(name_the_server)
    app[CONFIG] = config
    app[_OPERATOR_TOKEN] = (
        (os.environ if environ is None else environ).get(OPERATOR_TOKEN_ENV, "").strip()
    )
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_authentication)
    if config.webhooks.deliver:
        app.cleanup_ctx.append(_deliverer)
    else:
        app.cleanup_ctx.append(_webhook_backlog)
    health.add_routes(app)
    openapi.add_routes(app)
    accounts.add_routes(app)
    members.add_routes(app)
    keys.add_routes(app)
    usage.add_routes(app)
    permissions.add_routes(app)
    audit.add_routes(app)
    webhooks.add_routes(app)
    page.add_routes(app)  # the web page at / and its files under /static/
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    database = app[CONFIG].database
    pool = await create_pool(database, min_size=0, max_size=min(4, database.pool_max_size))
    app[POOL] = pool
    app[HASHER] = Hasher(app[CONFIG].keys.argon2)
    app[STORE] = KeyStore(pool, KeyFormat(app[CONFIG].keys.prefix), app[HASHER])
    async with running(sample_pool(pool, "admin"), "admin-pool-gauges"):
        yield
    await pool.close()


DELIVERER = web.AppKey("deliverer", Deliverer)


async def _webhook_backlog(app: web.Application) -> AsyncIterator[None]:
    """No deliverer here, but the backlog gauges still: the alert on a growing outbox
    (GatewayWebhookBacklogGrowing) must fire when no replica delivers at all."""
    interval = app[CONFIG].webhooks.poll_interval_seconds
    async with running(watch_backlog(app[POOL], interval), "webhook-backlog-gauges"):
        yield


async def _deliverer(app: web.Application) -> AsyncIterator[None]:
    """The webhook deliverer: one per admin listener, so one per replica (docs/webhooks.md)."""
    deliverer = Deliverer(app[CONFIG], app[STORE])
    await deliverer.start()
    app[DELIVERER] = deliverer
    yield
    await deliverer.stop()


async def _authentication(app: web.Application) -> AsyncIterator[None]:
    operator_token = app[_OPERATOR_TOKEN]
    if operator_token and len(operator_token) < 32:
        log.warning("%s is shorter than 32 characters: use a long random token", OPERATOR_TOKEN_ENV)
    authenticator = AdminAuthenticator(
        app[POOL],
        app[HASHER],
        operator_token or None,
        failed_auth=app[CONFIG].rate_limits.failed_auth,
    )
    app[AUTHENTICATOR] = authenticator
    yield
    authenticator.close()
