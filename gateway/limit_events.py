"""`key.limit_reached`: the first 429 of a window for a key, once per key and window.

The limiter tells `LimitEvents.refused` of every refusal, on the request path: that costs a
set lookup. Once a second the new (key, window, window start) marks are written, each in
its own transaction with its event: the mark's primary key makes the event fire once
across every process and replica, and only for accounts with an endpoint listening. The
minute window here is the UTC minute of the refusal (the limit itself slides), the day
window the UTC day.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from .config import RateLimitConfig
from .counters import DAY, MINUTE
from .db import UNAVAILABLE
from .keys import KeyStore
from .records import KeyRecord
from .webhooks import emit, key_data, rfc3339

log = logging.getLogger("gateway.webhooks")

MAX_MARKS = 100_000  # remembered per process; beyond, Postgres still dedupes
MAX_PENDING = 10_000

_MARK = """
INSERT INTO webhook_key_notices (key_id, kind, marker)
SELECT $1, $2, $3
 WHERE EXISTS (SELECT 1 FROM webhook_endpoints
                WHERE account_id = $4 AND enabled AND 'key.limit_reached' = ANY (events))
ON CONFLICT DO NOTHING
RETURNING 1
"""


class LimitEvents:
    def __init__(self, store: KeyStore, limits: RateLimitConfig, interval: float = 1.0) -> None:
        self.store = store
        self.limits = limits
        self.interval = interval
        self._marks: set[tuple[object, str, int]] = set()
        self._pending: list[tuple[KeyRecord, str, int]] = []

    def refused(self, key: KeyRecord, window: str, now: float) -> None:
        size = MINUTE if window == "minute" else DAY
        start = int(now // size * size)
        mark = (key.id, window, start)
        if mark in self._marks or len(self._pending) >= MAX_PENDING:
            return
        if len(self._marks) >= MAX_MARKS:
            self._marks.clear()
        self._marks.add(mark)
        self._pending.append((key, window, start))

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        for i, (key, window, start) in enumerate(pending):
            try:
                await self._queue(key, window, start)
            except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
                log.warning("cannot queue key.limit_reached events: %s", exc)
                self._pending[:0] = pending[i:]  # kept for the next flush
                return

    async def _queue(self, key: KeyRecord, window: str, start: int) -> None:
        async with self.store.pool.acquire() as conn, conn.transaction():
            marked = await conn.fetchval(_MARK, key.id, f"limit_{window}", start, key.account_id)
            if not marked:
                return
            info = await self.store.get(key.account_id, key.id, conn=conn)
            if info is None:
                return
            limit = (
                (key.rate_limit_per_minute or self.limits.per_minute)
                if window == "minute"
                else (key.rate_limit_per_day or self.limits.per_day)
            )
            await emit(
                conn,
                key.account_id,
                "key.limit_reached",
                f"key:{key.id}",
                {
                    "key": key_data(info),
                    "window": window,
                    "limit": limit,
                    "window_start": rfc3339(dt.datetime.fromtimestamp(start, dt.UTC)),
                },
            )

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                await self.flush()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())


EVENTS = web.AppKey("limit_events", LimitEvents)


def add_to(app: web.Application) -> None:
    """Hook the limiter's refusals (when it reports them) to the events, flushed each second."""
    from .app import CONFIG, LIMITER, STORE  # the app module imports this one

    limiter = app[LIMITER]
    if not hasattr(limiter, "on_refused"):
        return  # a limiter without refusals to report (tests' Unlimited)

    async def context(app: web.Application) -> AsyncIterator[None]:
        events = LimitEvents(app[STORE], app[CONFIG].rate_limits)
        app[EVENTS] = events
        limiter.on_refused = events.refused
        task = asyncio.create_task(events.run(), name="limit-events")
        yield
        limiter.on_refused = None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(context)
