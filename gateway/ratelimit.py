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
import functools
import logging
import math
import uuid
from collections.abc import Callable, Mapping
from typing import Protocol

import asyncpg

from . import metrics
from .background import Written, cancel, drain, every, write_batch
from .clock import Clock
from .config import RateLimitConfig
from .counters import DAY, MINUTE, CounterStore, Deltas, Totals, bucket, minute_from
from .db import UNAVAILABLE
from .keys import KeyRecord

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


class _Windows:
    """One key's counts in this process; `seconds` holds [second, count, synced] lists for
    the last minute, `left` those that left it but whose Postgres bucket is still read."""

    __slots__ = (
        "day",
        "left",
        "others_day",
        "others_minute",
        "others_second",
        "own_day",
        "own_minute",
        "seconds",
        "synced_day",
    )

    def __init__(self, day: int) -> None:
        self.seconds: list[list[int]] = []
        self.left: list[list[int]] = []
        self.own_minute = 0
        self.day = day
        self.own_day = 0
        self.synced_day = 0
        # Other processes (and earlier runs of this one) at the last sync: their minute
        # count all falls within the 60 seconds before `others_second`.
        self.others_minute = 0
        self.others_second = 0
        self.others_day = 0

    def advance(self, second: int, day: int) -> None:
        """Forget the seconds that left the minute, and a finished day."""
        seconds = self.seconds
        if seconds and seconds[0][0] <= second - MINUTE:
            gone = 0
            while gone < len(seconds) and seconds[gone][0] <= second - MINUTE:
                self.own_minute -= seconds[gone][1]
                gone += 1
            self.left += seconds[:gone]
            del seconds[:gone]
        left = self.left
        if left:
            first = minute_from(second)
            unread = 0
            while unread < len(left) and left[unread][0] < first:
                unread += 1
            del left[:unread]
        if self.others_minute and second >= self.others_second + MINUTE:
            self.others_minute = 0
        if day > self.day:
            self.day = day
            self.own_day = self.synced_day = self.others_day = 0

    def own_in_buckets(self) -> int:
        """This process's requests in Postgres's buckets of the minute (after `advance`):
        the minute's, and the written part of those that left it."""
        return self.own_minute + sum(entry[2] for entry in self.left)

    def count(self, second: int) -> None:
        seconds = self.seconds
        if seconds and seconds[-1][0] >= second:  # this second (or the clock stepped back)
            seconds[-1][1] += 1
        else:
            seconds.append([second, 1, 0])
        self.own_minute += 1
        self.own_day += 1

    def minute_frees_at(self, limit: int) -> int:
        """The first second at which fewer than `limit` requests count in the minute."""
        used = self.own_minute + self.others_minute
        frees = [(s + MINUTE, n) for s, n, _ in self.seconds]
        if self.others_minute:
            frees.append((self.others_second + MINUTE, self.others_minute))
        frees.sort()
        for at, n in frees:
            used -= n
            if used < limit:
                return at
        return frees[-1][0] if frees else 0

    def minute_next_free(self) -> int | None:
        """The second at which the oldest request in the minute stops counting."""
        own = self.seconds[0][0] if self.seconds else None
        others = self.others_second if self.others_minute else None
        if own is None or (others is not None and others < own):
            own = others
        return None if own is None else own + MINUTE


@dataclasses.dataclass(slots=True)
class _Batch:
    """One sync: the counts it writes, and what is needed to undo or to apply it."""

    second: int
    day: int
    deltas: Deltas = dataclasses.field(default_factory=Deltas)
    minute_marks: list[tuple[list[int], int]] = dataclasses.field(default_factory=list)
    day_marks: list[tuple[_Windows, int]] = dataclasses.field(default_factory=list)


class SlidingWindowLimiter:
    def __init__(self, config: RateLimitConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._keys: dict[uuid.UUID, _Windows] = {}
        # Keys decided on here since the last sync (and keys whose counts a failed sync
        # left unwritten): what the next sync writes and reads back, so a sync's cost
        # follows this interval's traffic, not every key served in the last minute.
        self._touched: set[uuid.UUID] = set()
        self._store: CounterStore | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
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
            headers, _, _ = _headers(
                windows, now, per_minute, minute_used + 1, per_day, day_used + 1
            )
            return Decision(True, headers)
        headers, window, reset = _headers(windows, now, per_minute, minute_used, per_day, day_used)
        metrics.RATE_LIMITED.labels(window).inc()
        if self.on_refused is not None:
            self.on_refused(key, window, now)
        return Decision(False, headers, window, reset)

    def headers(self, key: KeyRecord) -> Mapping[str, str]:
        now = self._clock.time()
        windows = self._windows(key.id, math.floor(now))
        headers, _, _ = _headers(
            windows,
            now,
            key.rate_limit_per_minute or self._config.per_minute,
            windows.own_minute + windows.others_minute,
            key.rate_limit_per_day or self._config.per_day,
            windows.own_day + windows.others_day,
        )
        return headers

    def _windows(self, key_id: uuid.UUID, second: int) -> _Windows:
        windows = self._keys.get(key_id)
        day = second - second % DAY
        if windows is None:
            windows = self._keys[key_id] = _Windows(day)
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
        self._task = asyncio.create_task(
            every(interval, self._sync_and_expire, "rate-limit sync"), name="rate-limit-sync"
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the periodic sync, then write what is left, retrying for `timeout`."""
        await cancel(self._task)
        self._task = None
        if self._store is not None and not await drain(self.sync, timeout):
            log.error("could not write rate-limit counts before exit: %d", self.pending)

    async def _sync_and_expire(self) -> None:
        await self.sync()
        now = asyncio.get_running_loop().time()
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRE_EVERY
            await self._expire()

    async def sync(self) -> bool:
        """One statement: write the new counts, read the totals back. False: kept for later."""
        assert self._store is not None, "start() first"
        async with self._lock:
            batch = self._take()
            if not batch.deltas.keys:
                return True
            write = self._store.sync(batch.deltas, batch.second, batch.day)
            written, others = await write_batch("rate_limits", write)
            if written is Written.KEPT:
                self._restore(batch)
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

    async def _expire(self) -> None:
        assert self._store is not None
        second = math.floor(self._clock.time())
        today = second - second % DAY
        try:
            await self._store.expire(second, today)
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            log.warning("could not delete old rate-limit counters: %s", exc)
        # Keys not used today and not pending here: their windows are empty.
        for key_id in [k for k, w in self._keys.items() if w.day < today]:
            if key_id not in self._touched:
                del self._keys[key_id]


def _headers(
    windows: _Windows, now: float, per_minute: int, minute_used: int, per_day: int, day_used: int
) -> tuple[dict[str, str], str, int]:
    """The response headers, and the tightest window with its seconds to free a request."""
    minute_left = max(0, per_minute - minute_used)
    day_left = max(0, per_day - day_used)
    if minute_left:
        frees_at = windows.minute_next_free()
        minute_reset = 0 if frees_at is None else max(1, math.ceil(frees_at - now))
    else:
        minute_reset = max(1, math.ceil(windows.minute_frees_at(per_minute) - now))
    day_reset = max(1, math.ceil(windows.day + DAY - now))
    # The tightest window: fewest requests left; on a tie, the longer wait.
    if minute_left < day_left or (minute_left == day_left and minute_reset >= day_reset):
        window, limit, left, reset = "minute", per_minute, minute_left, minute_reset
    else:
        window, limit, left, reset = "day", per_day, day_left, day_reset
    headers = {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(left),
        "X-RateLimit-Reset": str(reset),
        "RateLimit-Policy": _policy(per_minute, per_day),
        "RateLimit": (
            f'"minute";r={minute_left};t={minute_reset}, "day";r={day_left};t={day_reset}'
        ),
    }
    return headers, window, reset


@functools.lru_cache(maxsize=1024)
def _policy(per_minute: int, per_day: int) -> str:
    return f'"minute";q={per_minute};w={MINUTE}, "day";q={per_day};w={DAY}'
