"""The flushers' one error policy and their end at shutdown (gateway/background.py).

The usage flush and the rate-limit sync keep a batch through the same passing failures.
Failures are real Postgres errors, raised by a trigger on the table each flusher writes: a
serialization failure (40001) or a deadlock (40P01) passes, so the batch is kept and
written whole once the trigger is gone. An error of any other class (22023) is a batch
Postgres refuses: the usage flush drops it, so that it cannot block every later one; the
rate-limit sync keeps it (its batches are its own counts, and one dropped would go on
being subtracted from the totals as written, hiding the others' counts).

At shutdown (SIGTERM) every flusher, the `key.limit_reached` events' too, lets a flush
under way finish rather than cancel it with its batch out of memory; one that Postgres
still has not answered when the shutdown's time is up is cancelled, its batch counted as
not written. Postgres "not answering yet" is a store whose write waits at a `Gate`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid

import asyncpg
import pytest

from gateway.clock import FakeClock
from gateway.config import Config
from gateway.counters import Deltas, PostgresCounters, Totals
from gateway.keys import KeyStore
from gateway.limit_events import MAX_PENDING, LimitEvents
from gateway.ratelimit import SlidingWindowLimiter
from gateway.records import KeyInfo, KeyRecord
from gateway.usage import UsageRecorder

from .conftest import Seed
from .helpers import make_config

TABLES = {"usage": "key_usage_hourly", "rate_limits": "rate_limit_counters"}


async def fail_writes(db: asyncpg.Connection, table: str, sqlstate: str) -> None:
    await db.execute(
        f"""
        CREATE FUNCTION injected_failure() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{sqlstate}'; END $$;
        CREATE TRIGGER injected BEFORE INSERT OR UPDATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION injected_failure();
        """
    )


async def heal(db: asyncpg.Connection, table: str) -> None:
    await db.execute(f"DROP TRIGGER injected ON {table}; DROP FUNCTION injected_failure()")


class Flusher:
    """Three requests counted by one flusher, a flush, and what reached the table."""

    def __init__(self, kind: str, config: Config, seed: Seed, key: KeyRecord) -> None:
        self.kind = kind
        self.key = key
        clock = FakeClock()
        self.usage = UsageRecorder(seed.store, seed.pool, config.usage, clock)
        self.limiter = SlidingWindowLimiter(config.rate_limits, clock)
        self.pool = seed.pool

    async def start(self) -> None:
        if self.kind == "rate_limits":
            await self.limiter.start(PostgresCounters(self.pool))

    async def stop(self) -> None:
        await self.limiter.stop(timeout=0)

    def count_three(self) -> None:
        for _ in range(3):
            if self.kind == "usage":
                self.usage.count(self.key.id, "ok")
            else:
                assert self.limiter.check(self.key).allowed

    async def flush(self) -> bool:
        return await (self.usage.flush() if self.kind == "usage" else self.limiter.sync())

    async def written(self) -> int:
        return await written(self.pool, self.kind, self.key.id)


async def written(pool: asyncpg.Pool, kind: str, key_id: uuid.UUID) -> int:
    """The requests counted in the table that `kind` writes."""
    where = "" if kind == "usage" else " AND window_name = 'day'"
    total = await pool.fetchval(
        f"SELECT coalesce(sum(count), 0) FROM {TABLES[kind]} WHERE key_id = $1{where}",  # noqa: S608
        key_id,
    )
    return int(total)


@pytest.mark.parametrize("kind", sorted(TABLES))
@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
async def test_a_batch_is_kept_through_a_transient_failure(
    config: Config, seed: Seed, db: asyncpg.Connection, kind: str, sqlstate: str
) -> None:
    new = await seed.key()
    key = await seed.store.lookup(new.public_id)
    assert key is not None
    flusher = Flusher(kind, config, seed, key)
    await flusher.start()
    try:
        await fail_writes(db, TABLES[kind], sqlstate)
        flusher.count_three()
        assert await flusher.flush() is False
        assert await flusher.written() == 0
        await heal(db, TABLES[kind])
        assert await flusher.flush() is True
        assert await flusher.written() == 3
    finally:
        await flusher.stop()


@pytest.mark.parametrize("kind", ["usage"])
async def test_a_batch_postgres_refuses_is_dropped(
    config: Config, seed: Seed, db: asyncpg.Connection, kind: str
) -> None:
    new = await seed.key()
    key = await seed.store.lookup(new.public_id)
    assert key is not None
    flusher = Flusher(kind, config, seed, key)
    await flusher.start()
    try:
        await fail_writes(db, TABLES[kind], "22023")
        flusher.count_three()
        assert await flusher.flush() is True  # dropped: nothing left to retry
        await heal(db, TABLES[kind])
        assert await flusher.flush() is True
        assert await flusher.written() == 0
    finally:
        await flusher.stop()


async def test_a_rate_limit_batch_postgres_refuses_is_kept_and_written_later(
    config: Config, seed: Seed, db: asyncpg.Connection
) -> None:
    """Dropped, the batch's counts went on counting as written in every later sync, which
    subtracts them from the totals it reads back: the others' share came back short by
    that much, and the process admitted requests beyond the limit."""
    new = await seed.key()
    key = await seed.store.lookup(new.public_id)
    assert key is not None
    flusher = Flusher("rate_limits", config, seed, key)
    await flusher.start()
    try:
        await fail_writes(db, TABLES["rate_limits"], "22023")
        flusher.count_three()
        assert await flusher.flush() is False  # kept
        await heal(db, TABLES["rate_limits"])
        assert await flusher.flush() is True
        assert await flusher.written() == 3
    finally:
        await flusher.stop()


# -- shutdown -------------------------------------------------------------------------


class Gate:
    """Where a store's write waits for Postgres to answer, until `opened` is set."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    async def wait(self) -> None:
        self.reached.set()
        await self.opened.wait()


class GatedKeyStore(KeyStore):
    """The last-used write, and the key read inside a limit event's transaction, wait."""

    def __init__(self, store: KeyStore, gate: Gate) -> None:
        super().__init__(store.pool, store.format, store.hasher)
        self.gate = gate

    async def record_last_used(self, used: dict[uuid.UUID, float]) -> None:
        await self.gate.wait()
        await super().record_last_used(used)

    async def get(
        self,
        account_id: uuid.UUID,
        key_id: uuid.UUID,
        *,
        conn: asyncpg.Connection | None = None,
    ) -> KeyInfo | None:
        await self.gate.wait()
        return await super().get(account_id, key_id, conn=conn)


class GatedCounters(PostgresCounters):
    def __init__(self, pool: asyncpg.Pool, gate: Gate) -> None:
        super().__init__(pool)
        self.gate = gate

    async def sync(self, deltas: Deltas, second: int, day: int) -> Totals:
        await self.gate.wait()
        return await super().sync(deltas, second, day)


KINDS = ["usage", "rate_limits", "limit_events"]
# What three requests leave in Postgres (usage: last-used rows, counts), or in memory.
WRITTEN: dict[str, object] = {"usage": (1, 3), "rate_limits": 3, "limit_events": 1}
NOTHING: dict[str, object] = {"usage": (0, 0), "rate_limits": 0, "limit_events": 0}
PENDING: dict[str, object] = {"usage": (1, 1), "rate_limits": 3, "limit_events": 1}
LOST = {
    "usage": "could not write usage before exit",
    "rate_limits": "could not write rate-limit counts before exit",
    "limit_events": "could not queue key.limit_reached events before exit",
}


class Running:
    """One flusher as the app runs it (its periodic flush started), its writes gated."""

    def __init__(self, kind: str, config: Config, seed: Seed, key: KeyRecord) -> None:
        self.kind = kind
        self.key = key
        self.pool = seed.pool
        self.gate = Gate()
        store = GatedKeyStore(seed.store, self.gate)
        config = make_config(config.database.url, rate_limits={"sync_interval_seconds": 0.1})
        clock = FakeClock()
        self.usage = UsageRecorder(store, seed.pool, config.usage, clock)
        self.limiter = SlidingWindowLimiter(config.rate_limits, clock)
        self.events = LimitEvents(store, config.rate_limits, interval=0.1)

    async def start(self) -> None:
        if self.kind == "usage":
            await self.usage.start()
        elif self.kind == "rate_limits":
            await self.limiter.start(GatedCounters(self.pool, self.gate))
        else:
            await self.pool.execute(
                "INSERT INTO webhook_endpoints (account_id, url, events, secret)"
                " VALUES ($1, 'http://127.0.0.1:9/hook', '{key.limit_reached}', 'whsec_x')",
                self.key.account_id,
            )
            self.events.start()

    def use(self) -> None:
        """Three requests for the key; for the limit events, one refused."""
        for _ in range(3):
            if self.kind == "usage":
                self.usage.mark_used(self.key.id)
                self.usage.count(self.key.id, "ok")
            elif self.kind == "rate_limits":
                assert self.limiter.check(self.key).allowed
        if self.kind == "limit_events":
            self.events.refused(self.key, "minute", FakeClock().time())

    async def stop(self, timeout: float) -> None:
        """What the app's clean-up does on SIGTERM."""
        if self.kind == "usage":
            await self.usage.stop(timeout)
        elif self.kind == "rate_limits":
            await self.limiter.stop(timeout)
        else:
            await self.events.stop(timeout)

    def pending(self) -> object:
        if self.kind == "usage":
            return self.usage.pending
        return self.limiter.pending if self.kind == "rate_limits" else self.events.pending

    async def written(self) -> object:
        if self.kind == "limit_events":
            query = "SELECT count(*) FROM webhook_events WHERE account_id = $1"
            return await self.pool.fetchval(query, self.key.account_id)
        counts = await written(self.pool, self.kind, self.key.id)
        if self.kind == "rate_limits":
            return counts
        query = "SELECT count(*) FROM api_key_last_used WHERE key_id = $1"
        return await self.pool.fetchval(query, self.key.id), counts


async def held_flush(kind: str, config: Config, seed: Seed) -> Running:
    """A flusher with requests to write, its periodic flush waiting at the gate."""
    account = await seed.account()
    new = await seed.key(account)
    key = await seed.store.lookup(new.public_id)
    assert key is not None
    flusher = Running(kind, config, seed, key)
    await flusher.start()
    flusher.use()
    await asyncio.wait_for(flusher.gate.reached.wait(), 10)
    return flusher


@pytest.mark.parametrize("kind", KINDS)
async def test_shutdown_lets_a_flush_under_way_finish(
    config: Config, seed: Seed, kind: str
) -> None:
    """SIGTERM while the periodic flush waits for Postgres, which answers just after:
    that flush is let finish, and nothing is lost."""
    flusher = await held_flush(kind, config, seed)
    # In this order, with no await between: before the fix the stop's cancellation
    # reached the waiting write before it could go on, and its batch, already taken out
    # of memory, was lost; the final flush found nothing left to write.
    stopping = asyncio.create_task(flusher.stop(timeout=10))
    flusher.gate.opened.set()
    await stopping
    assert await flusher.written() == WRITTEN[kind]
    assert flusher.pending() == NOTHING[kind]


@pytest.mark.parametrize("kind", KINDS)
async def test_shutdown_time_up_counts_the_flush_still_waiting_as_not_written(
    config: Config, seed: Seed, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Postgres never answers the flush under way: the stop ends on time, cancelling it,
    and its batch is counted as pending and logged as lost, not dropped unseen."""
    flusher = await held_flush(kind, config, seed)
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(flusher.stop(timeout=0.2), 5)
    assert flusher.pending() == PENDING[kind]
    errors = [r.message for r in caplog.records if r.levelno == logging.ERROR]
    assert [e.split(":")[0] for e in errors] == [LOST[kind]]
    assert await flusher.written() == NOTHING[kind]


async def test_limit_events_put_back_stay_within_their_bound(
    config: Config, seed: Seed, db: asyncpg.Connection
) -> None:
    """The events a failed flush puts back and those refused meanwhile are one bound, not
    one more bound per failed flush."""
    new = await seed.key()
    key = await seed.store.lookup(new.public_id)
    assert key is not None
    await db.execute(
        "INSERT INTO webhook_endpoints (account_id, url, events, secret)"
        " VALUES ($1, 'http://127.0.0.1:9/hook', '{key.limit_reached}', 'whsec_x')",
        key.account_id,
    )
    await fail_writes(db, "webhook_events", "40001")
    gate = Gate()
    events = LimitEvents(GatedKeyStore(seed.store, gate), config.rate_limits)
    events.refused(key, "minute", 0.0)
    flushing = asyncio.create_task(events.flush())
    await asyncio.wait_for(gate.reached.wait(), 10)  # the pending events are out of memory
    for _ in range(MAX_PENDING):
        events.refused(dataclasses.replace(key, id=uuid.uuid4()), "day", 0.0)
    gate.opened.set()
    assert await flushing is False
    assert events.pending == MAX_PENDING
