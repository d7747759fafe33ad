"""The flushers' one error policy (gateway/background.py): the usage flush and the
rate-limit sync keep a batch through the same failures and drop the same ones.

Failures are real Postgres errors, raised by a trigger on the table each flusher writes:
a serialization failure (40001) or a deadlock (40P01) passes, so the batch is kept and
written whole once the trigger is gone; an error of any other class (22023) is a batch
Postgres refuses, dropped so that it cannot block every later one.
"""

from __future__ import annotations

import asyncpg
import pytest

from gateway.clock import FakeClock
from gateway.config import Config
from gateway.counters import PostgresCounters
from gateway.ratelimit import SlidingWindowLimiter
from gateway.records import KeyRecord
from gateway.usage import UsageRecorder

from .conftest import Seed

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
        table = TABLES[self.kind]
        where = "" if self.kind == "usage" else " AND window_name = 'day'"
        total = await self.pool.fetchval(
            f"SELECT coalesce(sum(count), 0) FROM {table} WHERE key_id = $1{where}",  # noqa: S608
            self.key.id,
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


@pytest.mark.parametrize("kind", sorted(TABLES))
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
