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

import dataclasses
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


@dataclasses.dataclass(slots=True)
class Deltas:
    """Counts to add, in the columns Postgres receives them: (key, bucket start, n) for
    the minute's buckets, (key, n) for the day of the sync. Columns rather than one tuple
    per count: a sync of a few thousand keys is sent without a tuple or a window name a
    count, and asyncpg checks every array element it encodes."""

    minute_keys: list[uuid.UUID] = dataclasses.field(default_factory=list)
    minute_starts: list[int] = dataclasses.field(default_factory=list)
    minute_counts: list[int] = dataclasses.field(default_factory=list)
    day_keys: list[uuid.UUID] = dataclasses.field(default_factory=list)
    day_counts: list[int] = dataclasses.field(default_factory=list)

    def add_minute(self, key_id: uuid.UUID, start: int, n: int) -> None:
        self.minute_keys.append(key_id)
        self.minute_starts.append(start)
        self.minute_counts.append(n)

    def add_day(self, key_id: uuid.UUID, n: int) -> None:
        self.day_keys.append(key_id)
        self.day_counts.append(n)


# What Postgres holds for a key: requests in the buckets from `minute_from(second)` to
# `second`, and that day.
Totals = dict[uuid.UUID, tuple[int, int]]


class CounterStore(Protocol):
    async def sync(
        self, deltas: Deltas, keys: Sequence[uuid.UUID], second: int, day: int
    ) -> Totals:
        """Add `deltas` (the day ones to `day`); return the totals of `keys` as they were
        just before."""

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
    SELECT m.key_id, 'minute' AS window_name, to_timestamp(m.start) AS window_start, m.count
      FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS m(key_id, start, count)
    UNION ALL
    SELECT d.key_id, 'day', to_timestamp($9::bigint), d.count
      FROM unnest($4::uuid[], $5::bigint[]) AS d(key_id, count)
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
 WHERE key_id = ANY($6::uuid[])
   AND ((window_name = 'minute'
         AND window_start BETWEEN to_timestamp($7::bigint) AND to_timestamp($8::bigint))
        OR (window_name = 'day' AND window_start = to_timestamp($9::bigint)))
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
        self, deltas: Deltas, keys: Sequence[uuid.UUID], second: int, day: int
    ) -> Totals:
        rows = await self._pool.fetch(
            _SYNC,
            deltas.minute_keys,
            deltas.minute_starts,
            deltas.minute_counts,
            deltas.day_keys,
            deltas.day_counts,
            keys,
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
