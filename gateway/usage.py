"""Last used and hourly usage counters: counted in memory, written in batches (SPEC §5).

The request path only touches two dicts. Every `usage.flush_interval_seconds` one flush
writes all keys' `last_used_at` in one statement and all usage counts in another. A flush
that fails puts its batch back (merged with what arrived meanwhile) for the next try, so
an outage loses nothing. On shutdown a flush under way is let finish, and the final flush
retries for a bounded time (`background.Periodic.drain`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict

import asyncpg

from . import metrics
from .background import Periodic, Written, write_batch
from .clock import Clock
from .config import UsageConfig
from .db import array_literal, for_live_keys
from .errors import USAGE_OUTCOMES
from .keys import KeyStore

log = logging.getLogger("gateway.usage")

OUTCOMES = tuple(outcome.value for outcome in USAGE_OUTCOMES)

UsageKey = tuple[uuid.UUID, int, str]  # key id, hour (epoch seconds), outcome


class UsageRecorder:
    def __init__(
        self, store: KeyStore, pool: asyncpg.Pool, config: UsageConfig, clock: Clock
    ) -> None:
        self._store = store
        self._pool = pool
        self._config = config
        self._clock = clock
        self._last_used: dict[uuid.UUID, float] = {}
        self._counts: defaultdict[UsageKey, int] = defaultdict(int)
        self._lock = asyncio.Lock()
        self._periodic: Periodic | None = None
        self.dropped = 0

    # -- the request path -------------------------------------------------------------

    def mark_used(self, key_id: uuid.UUID) -> None:
        now = self._clock.time()
        if self._last_used.get(key_id, 0.0) < now:
            self._last_used[key_id] = now

    def count(self, key_id: uuid.UUID, outcome: str) -> None:
        hour = int(self._clock.time() // 3600) * 3600
        key = (key_id, hour, outcome)
        if key not in self._counts and len(self._counts) >= self._config.max_pending_keys:
            self.dropped += 1  # bounded memory during a very long outage
            return
        self._counts[key] += 1

    @property
    def pending(self) -> tuple[int, int]:
        return len(self._last_used), len(self._counts)

    # -- flushing ---------------------------------------------------------------------

    async def start(self) -> None:
        self._periodic = Periodic(self._config.flush_interval_seconds, self.flush, "usage flush")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the periodic flush (one under way finishes), then flush what is left,
        retrying; all within `timeout`."""
        if self._periodic is not None and not await self._periodic.drain(self.flush, timeout):
            last_used, counts = self.pending
            log.error(
                "could not write usage before exit",
                extra={"pending_last_used": last_used, "pending_counts": counts},
            )

    async def flush(self) -> bool:
        """Write everything pending; True when nothing is left pending."""
        async with self._lock:
            last_used, self._last_used = self._last_used, {}
            counts, self._counts = self._counts, defaultdict(int)
            if not last_used and not counts:
                return True
            kept = True  # also when a write is cancelled midway (the shutdown's bound)
            try:
                written = Written.DONE
                if last_used:
                    written, _ = await write_batch("last_used", self._write_last_used(last_used))
                if counts and written is not Written.KEPT:
                    written, _ = await write_batch("usage", self._write_counts(counts))
                kept = written is Written.KEPT
            finally:
                if kept:
                    self._restore(last_used, counts)
            metrics.FLUSH_PENDING.labels("last_used").set(len(self._last_used))
            metrics.FLUSH_PENDING.labels("usage").set(len(self._counts))
            return not kept

    async def _write_last_used(self, last_used: dict[uuid.UUID, float]) -> None:
        await self._store.record_last_used(last_used)
        last_used.clear()  # written: a later failure of the counts must not restore these

    async def _write_counts(self, counts: dict[UsageKey, int]) -> None:
        await for_live_keys(
            self._pool.execute,
            """
            INSERT INTO key_usage_hourly AS u (key_id, hour, outcome, count)
            SELECT c.key_id, to_timestamp(c.hour), c.outcome, c.count
              FROM unnest($1::text::uuid[], $2::text::bigint[], $3::text::text[],
                          $4::text::bigint[]) AS c(key_id, hour, outcome, count)
              {live_keys}
             -- One row order in every process and replica: concurrent flushes of the same
             -- keys wait for each other instead of deadlocking.
             ORDER BY c.key_id, c.hour, c.outcome
            ON CONFLICT (key_id, hour, outcome) DO UPDATE SET count = u.count + EXCLUDED.count
            """,
            "c.key_id",
            array_literal(k[0] for k in counts),
            array_literal(k[1] for k in counts),
            array_literal(k[2] for k in counts),
            array_literal(counts.values()),
        )

    def _restore(
        self, last_used: dict[uuid.UUID, float], counts: defaultdict[UsageKey, int]
    ) -> None:
        for key_id, at in last_used.items():
            if self._last_used.get(key_id, 0.0) < at:
                self._last_used[key_id] = at
        # The batch comes back first; what arrived while it was out of memory fits in the
        # bound's room, like any new count: else each failed flush could add a bound more.
        arrived, self._counts = self._counts, counts
        for key, n in arrived.items():
            if key in counts or len(counts) < self._config.max_pending_keys:
                counts[key] += n
            else:
                self.dropped += n
