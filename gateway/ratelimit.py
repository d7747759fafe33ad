"""Per-key rate limits (SPEC §4): a sliding minute and the UTC day, exact in one process,
shared by every process through Postgres. The pipeline asks a `RateLimiter` once per
authenticated request; the answer carries the headers for the response, or a 429.

`check` is synchronous and touches only memory: each key's own requests per second over
the last minute, its own count for the day, and what the other processes had counted at
the last sync. Every `rate_limits.sync_interval_seconds` one statement
(`counters.PostgresCounters.sync`) adds this process's new counts and reads back what the
other processes counted of the keys it is serving, folded into the next decisions.

The sliding minute: a request made during second `s` counts until second `s + 60`, so no
60 seconds admit more than the limit (no double burst at a minute boundary), and a 429's
Retry-After is the exact number of whole seconds until enough of them have expired.

Several processes: each learns the others' counts about one interval late (at worst two:
its own last read, their last write) and stops as soon as its view reaches the limit, so
with P processes, a key whose requests arrive at R per second in all and a sync interval T,
total admitted ≤ limit + (P − 1) × R × T while the processes keep serving the key (tested
with two real processes). A sync reads back only the keys decided on since the last one:
a process that takes up a key again decides on an older view until its next sync, which
can add its own admissions of one interval: limit + P × R × T at worst
(docs/rate-limits.md). While Postgres is down decisions go on from local counts; the counts wait in
memory (seconds that left the minute are dropped, the day's are kept) and the first sync
that succeeds writes them.

Postgres keeps the minute in 10-second buckets (`counters.BUCKET`), so what a sync reads
back covers up to 69 seconds. This process subtracts its own requests over exactly those
buckets (it keeps the seconds that left its minute until their bucket is no longer read),
so a single process stays exact; another process's request made in the first seconds of
a bucket can count here up to 9 seconds beyond its minute — never too few.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import uuid
from collections.abc import Callable, Mapping
from typing import Protocol

import asyncpg

from . import metrics
from .background import Periodic, Written, write_batch
from .clock import Clock
from .config import RateLimitConfig
from .counters import DAY, CounterStore, Deltas, Totals, bucket
from .db import UNAVAILABLE
from .records import KeyRecord
from .windows import Windows, rate_limit_headers

log = logging.getLogger("gateway.ratelimit")

EXPIRE_EVERY = 60.0  # seconds between deletions of rows no window can reach


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    headers: Mapping[str, str]
    window: str | None = None  # the exhausted window when not allowed
    retry_after: int = 0


ADMIT = Decision(allowed=True, headers={})


class RateLimiter(Protocol):
    def check(self, key: KeyRecord) -> Decision:
        """Count one request for `key` and say whether it may pass."""

    def headers(self, key: KeyRecord) -> Mapping[str, str]:
        """The rate-limit headers for `key` as things stand, counting nothing."""

    async def start(self, store: CounterStore) -> None: ...

    async def stop(self) -> None: ...


class Unlimited:
    def check(self, key: KeyRecord) -> Decision:
        return ADMIT

    def headers(self, key: KeyRecord) -> Mapping[str, str]:
        return {}

    async def start(self, store: CounterStore) -> None:
        return None

    async def stop(self) -> None:
        return None


@dataclasses.dataclass(slots=True)
class _Batch:
    """One sync: the counts it writes, and what is needed to undo or to apply it."""

    second: int
    day: int
    deltas: Deltas = dataclasses.field(default_factory=Deltas)
    minute_marks: list[tuple[list[int], int]] = dataclasses.field(default_factory=list)
    day_marks: list[tuple[Windows, int]] = dataclasses.field(default_factory=list)


class SlidingWindowLimiter:
    def __init__(self, config: RateLimitConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._keys: dict[uuid.UUID, Windows] = {}
        # Keys decided on here since the last sync (and keys whose counts a failed sync
        # left unwritten): what the next sync writes and reads back, so a sync's cost
        # follows this interval's traffic, not every key served in the last minute.
        self._touched: set[uuid.UUID] = set()
        self._store: CounterStore | None = None
        self._lock = asyncio.Lock()
        self._periodic: Periodic | None = None
        self._next_expiry = 0.0
        # Told of every refusal (key, window, time): the key.limit_reached webhook event.
        self.on_refused: Callable[[KeyRecord, str, float], None] | None = None

    # -- the request path -------------------------------------------------------------

    def check(self, key: KeyRecord) -> Decision:
        now = self._clock.time()
        second = math.floor(now)
        windows = self._windows(key.id, second)
        self._touched.add(key.id)
        per_minute = key.rate_limit_per_minute or self._config.per_minute
        per_day = key.rate_limit_per_day or self._config.per_day
        minute_used = windows.own_minute + windows.others_minute
        day_used = windows.own_day + windows.others_day
        if minute_used < per_minute and day_used < per_day:
            windows.count(second)
            headers, _, _ = rate_limit_headers(
                windows, now, per_minute, minute_used + 1, per_day, day_used + 1
            )
            return Decision(True, headers)
        headers, window, reset = rate_limit_headers(
            windows, now, per_minute, minute_used, per_day, day_used
        )
        metrics.RATE_LIMITED.labels(window).inc()
        if self.on_refused is not None:
            self.on_refused(key, window, now)
        return Decision(False, headers, window, reset)

    def headers(self, key: KeyRecord) -> Mapping[str, str]:
        now = self._clock.time()
        windows = self._windows(key.id, math.floor(now))
        headers, _, _ = rate_limit_headers(
            windows,
            now,
            key.rate_limit_per_minute or self._config.per_minute,
            windows.own_minute + windows.others_minute,
            key.rate_limit_per_day or self._config.per_day,
            windows.own_day + windows.others_day,
        )
        return headers

    def _windows(self, key_id: uuid.UUID, second: int) -> Windows:
        windows = self._keys.get(key_id)
        day = second - second % DAY
        if windows is None:
            windows = self._keys[key_id] = Windows(day)
        else:
            windows.advance(second, day)
        return windows

    @property
    def pending(self) -> int:
        """Requests counted here and not yet written to Postgres."""
        return sum(w.own_day - w.synced_day for w in self._keys.values())

    # -- synchronisation --------------------------------------------------------------

    async def start(self, store: CounterStore) -> None:
        """Read what earlier runs counted (day counters survive restarts), then sync."""
        self._store = store
        second = math.floor(self._clock.time())
        day = second - second % DAY
        try:
            totals = await store.load(second, day)
        except UNAVAILABLE as exc:
            log.warning("could not read the rate-limit counters at start: %s", exc)
        else:
            for key_id, (minute, today) in totals.items():
                windows = self._windows(key_id, second)
                windows.others_minute, windows.others_second = minute, second
                windows.others_day = today
        self._next_expiry = asyncio.get_running_loop().time() + EXPIRE_EVERY
        interval = self._config.sync_interval_seconds
        self._periodic = Periodic(interval, self._sync_and_expire, "rate-limit sync")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the periodic sync (one under way finishes), then write what is left,
        retrying; all within `timeout`."""
        periodic, self._periodic = self._periodic, None
        if periodic is not None and not await periodic.drain(self.sync, timeout):
            log.error("could not write rate-limit counts before exit: %d", self.pending)

    async def _sync_and_expire(self) -> None:
        await self.sync()
        now = asyncio.get_running_loop().time()
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRE_EVERY
            await self.expire()

    async def sync(self) -> bool:
        """One statement: write the new counts, read the totals back. False: kept for later."""
        assert self._store is not None, "start() first"
        async with self._lock:
            batch = self._take()
            if not batch.deltas.keys:
                return True
            write = self._store.sync(batch.deltas, batch.second, batch.day)
            # Kept also when cancelled midway (the shutdown's bound): counted as pending.
            written: Written = Written.KEPT
            others: Totals | None = None
            try:
                # Kept when refused as well: a batch is only this process's own counts
                # (no foreign key), and one dropped would go on counting, in every later
                # sync, as written: the others' share read back would lack it.
                written, others = await write_batch("rate_limits", write, keep_refused=True)
            finally:
                if written is Written.KEPT:
                    self._restore(batch)
            if written is Written.KEPT:
                metrics.FLUSH_PENDING.labels("rate_limits").set(sum(n for _, n in batch.day_marks))
                return False
            metrics.FLUSH_PENDING.labels("rate_limits").set(0)
            if others is not None:
                self._apply(batch, others)
            return True

    def _take(self) -> _Batch:
        second = math.floor(self._clock.time())
        batch = _Batch(second, second - second % DAY)
        deltas = batch.deltas
        touched, self._touched = self._touched, set()
        for key_id in touched:
            windows = self._keys.get(key_id)
            if windows is None:
                continue
            windows.advance(second, batch.day)
            minute_delta = 0
            start, n_start = 0, 0  # the bucket being summed (seconds only increase)
            # Counts land only on the last second (or a new one) and a sync takes them all
            # (a failed one gives back the same suffix): what is unwritten is a suffix.
            seconds = windows.seconds
            first = len(seconds)
            while first and seconds[first - 1][1] != seconds[first - 1][2]:
                first -= 1
            for entry in seconds[first:]:
                n, at = entry[1] - entry[2], bucket(entry[0])
                if at != start:
                    if n_start:
                        deltas.add_minute(key_id, start, n_start)
                    start, n_start = at, 0
                n_start += n
                batch.minute_marks.append((entry, n))
                entry[2] = entry[1]
                minute_delta += n
            if n_start:
                deltas.add_minute(key_id, start, n_start)
            day_delta = windows.own_day - windows.synced_day
            if day_delta and windows.day != batch.day:  # the clock stepped back over midnight
                self._touched.add(key_id)  # written once the clock is back on its day
                day_delta = 0
            if day_delta:
                batch.day_marks.append((windows, day_delta))
                windows.synced_day = windows.own_day
            # Postgres holds this process's counts from before this batch (its buckets
            # and the day) and subtracts them: what is left, the others counted.
            deltas.add_key(
                key_id,
                day_delta,
                (windows.own_in_buckets() - minute_delta, windows.own_day - day_delta),
                (windows.others_minute, windows.others_day),
            )
        return batch

    def _restore(self, batch: _Batch) -> None:
        for entry, n in batch.minute_marks:
            entry[2] -= n
        for windows, n in batch.day_marks:
            if windows.day == batch.day:
                windows.synced_day -= n
        self._touched.update(batch.deltas.keys)  # the next sync writes their counts

    def _apply(self, batch: _Batch, others: Totals) -> None:
        # Keys not returned are as this process believes.
        for key_id, (minute, today) in others.items():
            windows = self._keys.get(key_id)
            if windows is None:
                continue
            windows.others_minute = minute
            windows.others_second = batch.second
            if windows.day == batch.day:
                windows.others_day = today

    async def expire(self) -> None:
        """Delete the rows no window can reach, and forget the keys with nothing left
        to count."""
        assert self._store is not None
        second = math.floor(self._clock.time())
        today = second - second % DAY
        try:
            await self._store.expire(second, today)
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            log.warning("could not delete old rate-limit counters: %s", exc)
        # Keys not used today and not pending here: their windows are empty once nothing
        # of theirs counts in the minute any more. Just after midnight their requests of
        # the day before still do; forgotten, the key would get a second burst.
        for key_id in [k for k, w in self._keys.items() if w.day < today]:
            if key_id not in self._touched and self._keys[key_id].idle(second):
                del self._keys[key_id]
