"""`key.limit_reached`: the first 429 of a window for a key, once per key and window.

The limiter tells `LimitEvents.refused` of every refusal, on the request path: that costs a
set lookup. Once a second the new (key, window, window start) marks are written, each in
its own transaction with its event: the mark's primary key makes the event fire once
across every process and replica, and only for accounts with an endpoint listening. The
minute window here is the UTC minute of the refusal (the limit itself slides), the day
window the UTC day. Marks that cannot be written wait for the next flush; on shutdown a
flush under way is let finish, and the last one retries for a bounded time
(`background.Periodic.drain`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from .background import Periodic
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
        self._periodic: Periodic | None = None

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

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> bool:
        """Queue the pending events; True when none of them is left pending."""
        pending, self._pending = self._pending, []
        queued = 0
        try:
            for key, window, start in pending:
                await self._queue(key, window, start)
                queued += 1
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            log.warning("cannot queue key.limit_reached events: %s", exc)
        finally:
            # Kept for the next flush, also when cancelled midway (the shutdown's bound).
            # With those refused meanwhile, within the one bound: the newest beyond it are
            # dropped, and forgotten, so that a later refusal in their window queues them.
            self._pending[:0] = pending[queued:]
            for key, window, start in self._pending[MAX_PENDING:]:
                self._marks.discard((key.id, window, start))
            del self._pending[MAX_PENDING:]
        return queued == len(pending)

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

    def start(self) -> None:
        self._periodic = Periodic(self.interval, self.flush, "limit-events")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the periodic flush (one under way finishes), then queue what is left,
        retrying; all within `timeout`."""
        periodic, self._periodic = self._periodic, None
        if periodic is not None and not await periodic.drain(self.flush, timeout):
            log.error("could not queue key.limit_reached events before exit: %d", self.pending)


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
        events.start()
        yield
        limiter.on_refused = None
        await events.stop()

    app.cleanup_ctx.append(context)
