"""The rate-limit counter store: every process's counts meet in `rate_limit_counters` (SPEC §4).

One row per key, window and window start: the day rows start at 00:00 UTC, the minute
rows are 10-second buckets (`BUCKET`): a sync adds a key's requests of each second to the
bucket that second falls in, and reads back the buckets that hold any of the last 60
seconds (`minute_from`), so Postgres holds and reads 6-7 rows per key in use rather than
one per second with requests. A process never writes per request: `sync` adds everything
it counted since its last sync in one statement, and in the same statement reads back what
the other processes counted of the keys it is serving. `CounterStore` is the seam for
another backend; `PostgresCounters` is the one we ship.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Protocol

import asyncpg

from .db import array_literal

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
    """What one sync sends, in the columns Postgres receives: (key, bucket start, n) for
    the minute's buckets; and for every key the sync reads back, its count to add to the
    day of the sync (may be 0), this process's own counts before the sync (in the buckets
    the read covers, and on that day) and what it believes the others counted."""

    minute_keys: list[uuid.UUID] = dataclasses.field(default_factory=list)
    minute_starts: list[int] = dataclasses.field(default_factory=list)
    minute_counts: list[int] = dataclasses.field(default_factory=list)
    keys: list[uuid.UUID] = dataclasses.field(default_factory=list)
    day_counts: list[int] = dataclasses.field(default_factory=list)
    own_minute: list[int] = dataclasses.field(default_factory=list)
    own_day: list[int] = dataclasses.field(default_factory=list)
    others_minute: list[int] = dataclasses.field(default_factory=list)
    others_day: list[int] = dataclasses.field(default_factory=list)

    def add_minute(self, key_id: uuid.UUID, start: int, n: int) -> None:
        self.minute_keys.append(key_id)
        self.minute_starts.append(start)
        self.minute_counts.append(n)

    def add_key(
        self,
        key_id: uuid.UUID,
        day_count: int,
        own: tuple[int, int],
        others: tuple[int, int],
    ) -> None:
        self.keys.append(key_id)
        self.day_counts.append(day_count)
        self.own_minute.append(own[0])
        self.own_day.append(own[1])
        self.others_minute.append(others[0])
        self.others_day.append(others[1])


# What other processes (and earlier runs of this one) counted for a key: requests in the
# buckets from `minute_from(second)` to `second`, and that day.
Totals = dict[uuid.UUID, tuple[int, int]]


class CounterStore(Protocol):
    async def sync(self, deltas: Deltas, second: int, day: int) -> Totals:
        """Add `deltas` (the day ones to `day`) and return what the other processes had
        counted just before, in the minute ending at `second` and on `day`, for each key
        of `deltas` that they count in that minute (or the process believes they do), or
        whose day count is not the one the process has. A key left out is as the process
        believes: nothing in the minute, its day count unchanged."""

    async def load(self, second: int, day: int) -> Totals:
        """The totals of every key with counts in the buckets of the minute ending at
        `second` or on `day`."""

    async def expire(self, second: int, day: int) -> None:
        """Delete rows that no window can reach any more."""


# The totals are read from the statement's snapshot, which does not include its own
# writes: they are what was counted before the sync, and so is the own share subtracted.
# A key comes back when the others count it in the minute (or the process believes they
# do), or when their day count is not the one the process has: a process alone, or one
# that only knows what earlier runs counted on the day, reads back nothing.
# Rows are written in one order in every process, so two syncs never deadlock.
_SYNC = """
WITH batch AS (
    SELECT *
      FROM unnest($1::text::uuid[], $2::text::bigint[], $3::text::bigint[],
                  $4::text::bigint[], $5::text::bigint[], $6::text::bigint[])
           AS b(key_id, day_count, own_minute, own_day, others_minute, others_day)
), delta AS (
    SELECT m.key_id, 'minute' AS window_name, to_timestamp(m.start) AS window_start, m.count
      FROM unnest($7::text::uuid[], $8::text::bigint[], $9::text::bigint[])
           AS m(key_id, start, count)
    UNION ALL
    SELECT key_id, 'day', to_timestamp($12::bigint), day_count FROM batch WHERE day_count > 0
), written AS (
    INSERT INTO rate_limit_counters AS c (key_id, window_name, window_start, count)
    SELECT key_id, window_name, window_start, count FROM delta
     ORDER BY key_id, window_name, window_start
    ON CONFLICT (key_id, window_name, window_start)
    DO UPDATE SET count = c.count + EXCLUDED.count, updated_at = now()
), total AS (
    SELECT key_id,
           coalesce(sum(count) FILTER (WHERE window_name = 'minute'), 0) AS minute,
           coalesce(sum(count) FILTER (WHERE window_name = 'day'), 0) AS day
      FROM rate_limit_counters
     WHERE key_id = ANY(ARRAY(SELECT key_id FROM batch))  -- one array: index look-ups
       AND ((window_name = 'minute'
             AND window_start BETWEEN to_timestamp($10::bigint) AND to_timestamp($11::bigint))
            OR (window_name = 'day' AND window_start = to_timestamp($12::bigint)))
     GROUP BY key_id
), others AS (
    SELECT b.key_id, b.others_minute AS believed_minute, b.others_day AS believed_day,
           greatest(coalesce(t.minute, 0) - b.own_minute, 0)::bigint AS minute,
           greatest(coalesce(t.day, 0) - b.own_day, 0)::bigint AS day
      FROM batch AS b LEFT JOIN total AS t USING (key_id)
)
SELECT key_id, minute, day
  FROM others
 WHERE minute > 0 OR believed_minute > 0 OR day <> believed_day
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

    async def sync(self, deltas: Deltas, second: int, day: int) -> Totals:
        rows = await self._pool.fetch(
            _SYNC,
            array_literal(deltas.keys),
            array_literal(deltas.day_counts),
            array_literal(deltas.own_minute),
            array_literal(deltas.own_day),
            array_literal(deltas.others_minute),
            array_literal(deltas.others_day),
            array_literal(deltas.minute_keys),
            array_literal(deltas.minute_starts),
            array_literal(deltas.minute_counts),
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
