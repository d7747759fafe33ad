"""The rate-limit counter store: every process's counts meet in `rate_limit_counters` (SPEC §4).

One row per key, window and window start: the day rows start at 00:00 UTC, the minute
rows are 10-second buckets (`BUCKET`): a sync adds a key's requests of each second to the
bucket that second falls in, and reads back the buckets that hold any of the last 60
seconds (`minute_from`), so Postgres holds and reads 6-7 rows per key in use rather than
one per second with requests. A process never writes per request: `sync` adds everything
it counted since its last sync in one statement, and in the same statement reads back the
totals of the keys it is serving. `CounterStore` is the seam for another backend;
`PostgresCounters` is the one we ship.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol

import asyncpg

MINUTE = 60
DAY = 86_400
BUCKET = 10  # seconds in one minute-window row; divides MINUTE


def bucket(second: int) -> int:
    """The start of the minute-window row that counts requests made during `second`."""
    return second - second % BUCKET


def minute_from(second: int) -> int:
    """The first bucket a read of the minute ending at `second` takes: it can hold up to
    BUCKET - 1 seconds from before that minute."""
    return bucket(second - MINUTE + 1)


# A count to add: key id, window name ("minute" or "day"), window start (epoch seconds), n.
Delta = tuple[uuid.UUID, str, int, int]
# What Postgres holds for a key: requests in the buckets from `minute_from(second)` to
# `second`, and that day.
Totals = dict[uuid.UUID, tuple[int, int]]


class CounterStore(Protocol):
    async def sync(
        self, deltas: Sequence[Delta], keys: Sequence[uuid.UUID], second: int, day: int
    ) -> Totals:
        """Add `deltas`; return the totals of `keys` as they were just before."""

    async def load(self, second: int, day: int) -> Totals:
        """The totals of every key with counts in the buckets of the minute ending at
        `second` or on `day`."""

    async def expire(self, second: int, day: int) -> None:
        """Delete rows that no window can reach any more."""


# The totals are read from the statement's snapshot, which does not include its own
# writes: the limiter adds its deltas back itself (`SlidingWindowLimiter._apply`).
# Rows are written in one order in every process, so two syncs never deadlock.
_SYNC = """
WITH delta AS (
    SELECT d.key_id, d.window_name, to_timestamp(d.window_start) AS window_start, d.count
      FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[])
           AS d(key_id, window_name, window_start, count)
), written AS (
    INSERT INTO rate_limit_counters AS c (key_id, window_name, window_start, count)
    SELECT key_id, window_name, window_start, count FROM delta
     ORDER BY key_id, window_name, window_start
    ON CONFLICT (key_id, window_name, window_start)
    DO UPDATE SET count = c.count + EXCLUDED.count, updated_at = now()
)
SELECT key_id,
       coalesce(sum(count) FILTER (WHERE window_name = 'minute'), 0)::bigint AS minute,
       coalesce(sum(count) FILTER (WHERE window_name = 'day'), 0)::bigint AS day
  FROM rate_limit_counters
 WHERE key_id = ANY($5::uuid[])
   AND ((window_name = 'minute'
         AND window_start BETWEEN to_timestamp($6::bigint) AND to_timestamp($7::bigint))
        OR (window_name = 'day' AND window_start = to_timestamp($8::bigint)))
 GROUP BY key_id
"""

_LOAD = """
SELECT key_id,
       coalesce(sum(count) FILTER (WHERE window_name = 'minute'), 0)::bigint AS minute,
       coalesce(sum(count) FILTER (WHERE window_name = 'day'), 0)::bigint AS day
  FROM rate_limit_counters
 WHERE (window_name = 'minute'
        AND window_start BETWEEN to_timestamp($1::bigint) AND to_timestamp($2::bigint))
    OR (window_name = 'day' AND window_start = to_timestamp($3::bigint))
 GROUP BY key_id
"""

_EXPIRE = """
DELETE FROM rate_limit_counters
 WHERE (window_name = 'minute' AND window_start < to_timestamp($1::bigint))
    OR (window_name = 'day' AND window_start < to_timestamp($2::bigint))
"""


class PostgresCounters:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def sync(
        self, deltas: Sequence[Delta], keys: Sequence[uuid.UUID], second: int, day: int
    ) -> Totals:
        rows = await self._pool.fetch(
            _SYNC,
            [d[0] for d in deltas],
            [d[1] for d in deltas],
            [d[2] for d in deltas],
            [d[3] for d in deltas],
            list(keys),
            minute_from(second),
            second,
            day,
        )
        return {key_id: (minute, day) for key_id, minute, day in rows}

    async def load(self, second: int, day: int) -> Totals:
        rows = await self._pool.fetch(_LOAD, minute_from(second), second, day)
        return {row["key_id"]: (row["minute"], row["day"]) for row in rows}

    async def expire(self, second: int, day: int) -> None:
        # Two minutes and two days back: well behind any process's window, even one
        # whose clock runs a little late.
        await self._pool.execute(_EXPIRE, second - 2 * MINUTE, day - DAY)
