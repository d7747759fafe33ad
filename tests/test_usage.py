"""Last used and hourly usage: in memory on the request path, batched to Postgres, never lost."""

from __future__ import annotations

import asyncio
import datetime as dt

import aiohttp
import asyncpg
from aiohttp.test_utils import TestServer

from gateway.app import LIMITER, USAGE
from gateway.clock import FakeClock
from gateway.config import Config
from gateway.usage import UsageRecorder

from .conftest import Cluster, GatewayFactory, Seed
from .helpers import make_config, wait_for
from .test_background import Gate, GatedKeyStore, fail_writes


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def hit(server: TestServer, key: str, path: str = "/v1/customers", n: int = 1) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.get(server.make_url(path), headers=bearer(key)) as response:
                await response.read()


async def usage_counts(db: asyncpg.Connection, key_id: object) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT outcome, sum(count)::int AS n FROM key_usage_hourly WHERE key_id = $1"
        " GROUP BY outcome",
        key_id,
    )
    return {row["outcome"]: row["n"] for row in rows}


async def test_last_used_reaches_the_database_after_the_flush_interval(
    gateway: TestServer, seed: Seed, db: asyncpg.Connection
) -> None:
    key = await seed.key()
    assert (
        await db.fetchval("SELECT last_used_at FROM api_key_last_used WHERE key_id = $1", key.id)
        is None
    )
    before = dt.datetime.now(dt.UTC)
    await hit(gateway, key.key)

    async def written() -> bool:
        at = await db.fetchval(
            "SELECT last_used_at FROM api_key_last_used WHERE key_id = $1", key.id
        )
        return at is not None and at >= before - dt.timedelta(seconds=1)

    await wait_for(written, timeout=5)


async def test_last_used_is_one_statement_for_all_keys(
    start_gateway: GatewayFactory, config: Config, seed: Seed, db: asyncpg.Connection
) -> None:
    """Many keys used between two flushes cost one statement, not one per key or request."""
    slow = make_config(
        config.database.url, config.proxy.upstream, usage={"flush_interval_seconds": 3600}
    )
    gateway = await start_gateway(slow)
    account = await seed.account()
    keys = [await seed.key(account, name=f"k{i}") for i in range(10)]
    for key in keys:
        await hit(gateway, key.key, n=3)
    # Count the statements that write last_used with a statement-level trigger.
    await db.execute(
        """
        CREATE TABLE update_statements (at timestamptz DEFAULT now());
        CREATE FUNCTION log_update_statement() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO update_statements DEFAULT VALUES; RETURN NULL; END $$;
        CREATE TRIGGER count_writes AFTER INSERT ON api_key_last_used
            FOR EACH STATEMENT EXECUTE FUNCTION log_update_statement();
        """
    )
    usage = gateway.app[USAGE]
    assert usage.pending == (10, 10)
    assert await usage.flush()
    assert await db.fetchval("SELECT count(*) FROM update_statements") == 1
    ids = [k.id for k in keys]
    rows = await db.fetch("SELECT last_used_at FROM api_key_last_used WHERE key_id = ANY($1)", ids)
    assert len(rows) == 10
    assert usage.pending == (0, 0)


async def test_last_used_never_moves_backwards(
    start_gateway: GatewayFactory, seed: Seed, db: asyncpg.Connection
) -> None:
    clock = FakeClock(start=dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp())
    gateway = await start_gateway(clock=clock)
    key = await seed.key()
    later = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    await db.execute(
        "INSERT INTO api_key_last_used (key_id, last_used_at) VALUES ($1, $2)", key.id, later
    )
    await hit(gateway, key.key)
    assert await gateway.app[USAGE].flush()
    assert (
        await db.fetchval("SELECT last_used_at FROM api_key_last_used WHERE key_id = $1", key.id)
        == later
    )


async def test_usage_is_counted_per_hour_by_outcome(
    start_gateway: GatewayFactory, seed: Seed, db: asyncpg.Connection
) -> None:
    clock = FakeClock(start=dt.datetime.now(dt.UTC).timestamp())
    gateway = await start_gateway(clock=clock)
    account = await seed.account()
    key = await seed.key(account, permissions=["customers:read", "test:any"])
    wrong_secret, _ = seed.store.format.generate(key.public_id)
    await hit(gateway, key.key, "/v1/customers", n=3)  # ok
    await hit(gateway, key.key, "/v1/status/404", n=2)  # upstream 4xx
    await hit(gateway, key.key, "/v1/status/502", n=1)  # upstream 5xx
    await hit(gateway, key.key, "/v1/reports/mrr", n=2)  # denied: permission
    await hit(gateway, wrong_secret, n=2)  # failed_auth for this key id
    assert await gateway.app[USAGE].flush()
    assert await usage_counts(db, key.id) == {
        "ok": 3,
        "upstream_4xx": 2,
        "upstream_5xx": 1,
        "denied": 2,
        "failed_auth": 2,
    }
    clock.advance(3600)
    await hit(gateway, key.key)
    assert await gateway.app[USAGE].flush()
    hours = await db.fetchval(
        "SELECT count(DISTINCT hour) FROM key_usage_hourly WHERE key_id = $1", key.id
    )
    assert hours == 2


async def test_nothing_is_lost_while_the_database_is_down(
    start_gateway: GatewayFactory, seed: Seed, cluster: Cluster, database_url: str
) -> None:
    gateway = await start_gateway()
    key = await seed.key()
    await hit(gateway, key.key)  # cached
    usage = gateway.app[USAGE]
    assert await usage.flush()
    cluster.stop()
    try:
        await hit(gateway, key.key, n=5)
        assert not await usage.flush()
        assert usage.pending == (1, 1)
    finally:
        cluster.start()
    await wait_for(usage.flush, timeout=10)
    conn = await asyncpg.connect(database_url)
    try:
        assert (await usage_counts(conn, key.id))["ok"] == 6
    finally:
        await conn.close()


async def test_a_key_removed_with_its_account_does_not_cost_the_others_their_counts(
    start_gateway: GatewayFactory, config: Config, seed: Seed, db: asyncpg.Connection
) -> None:
    """A key deleted outright since it was used costs no batched write (last used, usage,
    rate limits) the other keys' counts. (Last used and usage skip it; its rate-limit rows,
    which reference nothing, are written and expire with the rest.)"""
    slow = make_config(
        config.database.url,
        config.proxy.upstream,
        usage={"flush_interval_seconds": 3600},
        rate_limits={"sync_interval_seconds": 3600},
    )
    gateway = await start_gateway(slow)
    leaving = await seed.account("Leaving")
    gone, kept = await seed.key(leaving), await seed.key()
    await hit(gateway, gone.key)
    await hit(gateway, kept.key)
    await db.execute("DELETE FROM accounts WHERE id = $1", leaving.account_id)  # cascades

    assert await gateway.app[USAGE].flush()
    assert await gateway.app[LIMITER].sync()
    assert await db.fetchval(
        "SELECT last_used_at FROM api_key_last_used WHERE key_id = $1", kept.id
    )
    assert await usage_counts(db, kept.id) == {"ok": 1}
    assert (
        await db.fetchval(
            "SELECT sum(count) FROM rate_limit_counters WHERE key_id = $1 AND window_name = 'day'",
            kept.id,
        )
        == 1
    )
    assert gateway.app[USAGE].pending == (0, 0)


async def test_pending_counts_stay_bounded_when_a_failed_flush_puts_its_batch_back(
    config: Config, seed: Seed, db: asyncpg.Connection
) -> None:
    """`usage.max_pending_keys` holds through a long outage: the counts that arrived while
    a flush waited on Postgres, and the batch that flush puts back, are one bound."""
    gate = Gate()
    bounded = make_config(config.database.url, usage={"max_pending_keys": 2})
    usage = UsageRecorder(GatedKeyStore(seed.store, gate), seed.pool, bounded.usage, FakeClock())
    keys = [(await seed.key(name=f"k{i}")).id for i in range(4)]
    await fail_writes(db, "key_usage_hourly", "40001")  # a transient failure: kept
    for key_id in keys[:2]:
        usage.mark_used(key_id)
        usage.count(key_id, "ok")
    flushing = asyncio.create_task(usage.flush())
    await asyncio.wait_for(gate.reached.wait(), 10)  # the batch is out of memory
    for key_id in keys[2:]:
        usage.count(key_id, "ok")
    gate.opened.set()
    assert await flushing is False
    assert usage.pending[1] <= 2
    assert usage.dropped == 2
