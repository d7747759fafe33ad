"""The verified-key cache: no argon2 and no query on a hit, and never trusted past a change."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import threading

import aiohttp
import asyncpg
from aiohttp.test_utils import TestServer

from gateway.app import AUTH, CONFIG, LISTENER
from gateway.auth import REFRESH_GRACE_SECONDS
from gateway.clock import FakeClock
from gateway.config import Config
from gateway.verify import settle_argon2_thread

from .conftest import Cluster, GatewayFactory, Seed
from .helpers import key_status, make_config, sample, wait_for


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_cached_key_costs_no_argon2_and_no_query(gateway: TestServer, seed: Seed) -> None:
    """1,000 requests on a verified key: zero argon2 verifications, zero key lookups."""
    key = await seed.key(rate_limit_per_minute=10_000)
    assert await key_status(gateway, key.key) == 200
    argon2_before = sample("gateway_argon2_verifications_total")
    lookups_before = sample("gateway_key_lookups_total")
    async with aiohttp.ClientSession() as session:
        for _ in range(1000):
            async with session.get(
                gateway.make_url("/v1/customers"), headers=bearer(key.key)
            ) as response:
                await response.read()
                assert response.status == 200
    assert sample("gateway_argon2_verifications_total") == argon2_before
    assert sample("gateway_key_lookups_total") == lookups_before


async def test_concurrent_first_requests_share_one_verification(
    gateway: TestServer, seed: Seed
) -> None:
    key = await seed.key()
    before = sample("gateway_argon2_verifications_total")
    statuses = await asyncio.gather(*(key_status(gateway, key.key) for _ in range(20)))
    assert statuses == [200] * 20
    assert sample("gateway_argon2_verifications_total") == before + 1


async def test_unknown_key_id_costs_the_same_argon2_as_a_wrong_secret(
    gateway: TestServer, seed: Seed
) -> None:
    """Timing must not reveal whether a key id exists: both run one verification."""
    key = await seed.key()
    fmt = seed.store.format
    unknown, _ = fmt.generate()
    wrong, _ = fmt.generate(key.public_id)
    for attempt in (unknown, wrong):
        before = sample("gateway_argon2_verifications_total")
        assert await key_status(gateway, attempt) == 401
        assert sample("gateway_argon2_verifications_total") == before + 1


async def test_regenerated_key_rejects_old_secret_at_once(gateway: TestServer, seed: Seed) -> None:
    account = await seed.account()
    key = await seed.key(account)
    assert await key_status(gateway, key.key) == 200
    new = await seed.store.regenerate(account.account_id, key.id)
    assert new is not None and new.public_id == key.public_id
    await wait_for(lambda: _is(gateway, key.key, 401), timeout=1.0)
    assert await key_status(gateway, new.key) == 200


async def _is(gateway: TestServer, key: str, status: int) -> bool:
    return await key_status(gateway, key) == status


async def test_regenerate_with_grace_keeps_old_secret_until_it_ends(
    start_gateway: GatewayFactory, seed: Seed
) -> None:
    clock = FakeClock(start=dt.datetime.now(dt.UTC).timestamp())
    gateway = await start_gateway(clock=clock)
    account = await seed.account()
    key = await seed.key(account)
    assert await key_status(gateway, key.key) == 200
    new = await seed.store.regenerate(account.account_id, key.id, grace_seconds=3600)
    assert new is not None
    assert await key_status(gateway, key.key) == 200
    assert await key_status(gateway, new.key) == 200
    clock.advance(3601)
    assert await key_status(gateway, key.key) == 401
    assert await key_status(gateway, new.key) == 200


async def test_the_old_secret_is_refused_when_its_grace_ends_even_while_cached(
    start_gateway: GatewayFactory, seed: Seed
) -> None:
    """The grace's end is announced to nobody: a cached entry of the old secret, however
    fresh, is checked against it."""
    clock = FakeClock(start=dt.datetime.now(dt.UTC).timestamp())
    gateway = await start_gateway(clock=clock)
    ttl = gateway.app[CONFIG].keys.cache_ttl_seconds
    account = await seed.account()
    key = await seed.key(account)
    new = await seed.store.regenerate(account.account_id, key.id, grace_seconds=ttl / 4)
    assert new is not None
    assert await key_status(gateway, key.key) == 200  # verified and cached now
    clock.advance(ttl / 2)  # the grace is over, the cache entry is not
    assert await key_status(gateway, key.key) == 401
    assert await key_status(gateway, new.key) == 200


async def test_deleted_key_is_refused_at_once(gateway: TestServer, seed: Seed) -> None:
    account = await seed.account()
    key = await seed.key(account)
    assert await key_status(gateway, key.key) == 200
    assert await seed.store.delete(account.account_id, key.id)
    await wait_for(lambda: _is(gateway, key.key, 401), timeout=1.0)


async def quietly(db: asyncpg.Connection, statement: str, *args: object) -> None:
    """A change whose notice no process gets (triggers off for this statement)."""
    await db.execute("SET session_replication_role = replica")
    try:
        await db.execute(statement, *args)
    finally:
        await db.execute("RESET session_replication_role")


async def test_listener_reconnect_reconfirms_every_cached_key(
    gateway: TestServer, seed: Seed, db: asyncpg.Connection
) -> None:
    """A key deleted while the listener was cut off is refused after it reconnects."""
    account = await seed.account()
    kept, deleted = await seed.key(account), await seed.key(account)
    assert await key_status(gateway, kept.key) == 200
    assert await key_status(gateway, deleted.key) == 200
    listener = gateway.app[LISTENER]
    reconnects = sample("gateway_listener_reconnects_total")
    old_pid = listener.backend_pid
    # A change whose notice this process never gets, then the listener's connection is cut.
    await quietly(
        db, "UPDATE api_keys SET deleted_at = now(), secret_hash = NULL WHERE id = $1", deleted.id
    )
    assert await key_status(gateway, deleted.key) == 200  # the cache has not heard of it
    await db.execute("SELECT pg_terminate_backend($1)", old_pid)
    await wait_for(lambda: sample("gateway_listener_reconnects_total") > reconnects)
    assert listener.backend_pid != old_pid
    assert await key_status(gateway, deleted.key) == 401
    argon2_before = sample("gateway_argon2_verifications_total")
    assert await key_status(gateway, kept.key) == 200
    # Re-confirming a kept key is one query, not another argon2 verification.
    assert sample("gateway_argon2_verifications_total") == argon2_before


async def test_keys_past_their_ttl_are_reconfirmed_in_one_background_query(
    start_gateway: GatewayFactory, config: Config, seed: Seed, db: asyncpg.Connection
) -> None:
    """Past the TTL a key is used as it is and the next batch asks Postgres for every key
    due at once: no request waits for a query, and a change whose notice was lost still
    reaches the cache."""
    clock = FakeClock(start=dt.datetime.now(dt.UTC).timestamp())
    gateway = await start_gateway(
        make_config(config.database.url, config.proxy.upstream, keys={"cache_ttl_seconds": 60}),
        clock=clock,
    )
    account = await seed.account()
    kept, disabled, deleted = [await seed.key(account, name=n) for n in ("k", "x", "d")]
    for key in (kept, disabled, deleted):
        assert await key_status(gateway, key.key) == 200
    await quietly(db, "UPDATE api_keys SET enabled = false WHERE id = $1", disabled.id)
    await quietly(
        db, "UPDATE api_keys SET deleted_at = now(), secret_hash = NULL WHERE id = $1", deleted.id
    )
    clock.advance(61)
    lookups = sample("gateway_key_lookups_total")
    for key in (kept, disabled, deleted):
        assert await key_status(gateway, key.key) == 200  # due: used as cached
    assert sample("gateway_key_lookups_total") == lookups
    await gateway.app[AUTH].refresh()
    assert sample("gateway_key_lookups_total") == lookups + 1  # one query for all three
    assert await key_status(gateway, kept.key) == 200
    assert await key_status(gateway, disabled.key) == 401
    assert sample("gateway_key_lookups_total") == lookups + 1  # both fresh from the batch
    assert await key_status(gateway, deleted.key) == 401  # dropped: verified from scratch


async def test_a_key_used_before_its_ttl_is_reconfirmed_by_the_batch_unasked(
    start_gateway: GatewayFactory, config: Config, seed: Seed, db: asyncpg.Connection
) -> None:
    """A key in use with gaps longer than the grace between its uses (a client calling
    every minute or so) is re-confirmed by the batch at its TTL, not inside its next
    request: a key used since its last confirmation is taken when it reaches the TTL."""
    clock = FakeClock(start=dt.datetime.now(dt.UTC).timestamp())
    gateway = await start_gateway(
        make_config(config.database.url, config.proxy.upstream, keys={"cache_ttl_seconds": 60}),
        clock=clock,
    )
    used, idle = await seed.key(), await seed.key()
    for key in (used, idle):
        assert await key_status(gateway, key.key) == 200  # verified, confirmed at 0
    clock.advance(30)
    assert await key_status(gateway, used.key) == 200  # served from the cache: used
    await quietly(db, "UPDATE api_keys SET enabled = false WHERE id = $1", used.id)
    clock.advance(31)  # 61: both reached the TTL, with no request past it
    lookups = sample("gateway_key_lookups_total")
    await gateway.app[AUTH].refresh()
    assert sample("gateway_key_lookups_total") == lookups + 1  # the used one, unasked
    clock.advance(10)  # 71: past TTL and grace since the first confirmation
    assert await key_status(gateway, used.key) == 401  # as the batch found it: no query
    assert sample("gateway_key_lookups_total") == lookups + 1
    assert await key_status(gateway, idle.key) == 200  # idle since: confirmed in its request
    assert sample("gateway_key_lookups_total") == lookups + 2


async def test_a_large_batch_is_asked_for_in_chunks(
    start_gateway: GatewayFactory, config: Config, seed: Seed, db: asyncpg.Connection
) -> None:
    """Many due keys take several bounded queries (the loop reads each one's rows into
    records in one stretch), and every key is re-confirmed by its chunk."""
    clock = FakeClock(start=dt.datetime.now(dt.UTC).timestamp())
    gateway = await start_gateway(
        make_config(config.database.url, config.proxy.upstream, keys={"cache_ttl_seconds": 60}),
        clock=clock,
    )
    auth = gateway.app[AUTH]
    auth.refresh_chunk = 2
    keys = [await seed.key() for _ in range(5)]
    for key in keys:
        assert await key_status(gateway, key.key) == 200
    await quietly(db, "UPDATE api_keys SET enabled = false WHERE id = $1", keys[-1].id)
    clock.advance(61)
    for key in keys:
        assert await key_status(gateway, key.key) == 200  # due: used as cached
    lookups = sample("gateway_key_lookups_total")
    await auth.refresh()
    assert sample("gateway_key_lookups_total") == lookups + 3  # 2 + 2 + 1
    assert [await key_status(gateway, key.key) for key in keys] == [200, 200, 200, 200, 401]
    assert sample("gateway_key_lookups_total") == lookups + 3  # all fresh from the chunks


async def test_a_key_no_batch_reconfirmed_is_confirmed_before_use(
    start_gateway: GatewayFactory, config: Config, seed: Seed, db: asyncpg.Connection
) -> None:
    clock = FakeClock(start=dt.datetime.now(dt.UTC).timestamp())
    gateway = await start_gateway(
        make_config(config.database.url, config.proxy.upstream, keys={"cache_ttl_seconds": 60}),
        clock=clock,
    )
    key = await seed.key()
    assert await key_status(gateway, key.key) == 200
    await quietly(db, "UPDATE api_keys SET enabled = false WHERE id = $1", key.id)
    clock.advance(60 + REFRESH_GRACE_SECONDS)
    assert await key_status(gateway, key.key) == 401


async def test_the_background_batches_run_by_themselves(
    gateway: TestServer, seed: Seed, db: asyncpg.Connection
) -> None:
    """With the real clock and the default TTL, a due key is picked up within a second."""
    key = await seed.key()
    assert await key_status(gateway, key.key) == 200
    auth = gateway.app[AUTH]
    auth.cache.peek(key.public_id).confirmed_at -= gateway.app[CONFIG].keys.cache_ttl_seconds
    await quietly(db, "UPDATE api_keys SET enabled = false WHERE id = $1", key.id)
    assert await key_status(gateway, key.key) == 200  # due
    await wait_for(lambda: _is(gateway, key.key, 401), timeout=5)


async def test_cached_keys_survive_a_database_outage_uncached_get_503(
    start_gateway: GatewayFactory, config: Config, seed: Seed, cluster: Cluster
) -> None:
    clock = FakeClock(start=dt.datetime.now(dt.UTC).timestamp())
    gateway = await start_gateway(
        make_config(
            config.database.url,
            config.proxy.upstream,
            keys={"cache_ttl_seconds": 60, "stale_if_error_seconds": 120},
        ),
        clock=clock,
    )
    cached, uncached = await seed.key(), await seed.key()
    assert await key_status(gateway, cached.key) == 200
    cluster.stop()
    try:
        assert await key_status(gateway, cached.key) == 200
        clock.advance(90)  # past the TTL, inside stale-if-error
        assert await key_status(gateway, cached.key) == 200
        assert await key_status(gateway, uncached.key) == 503
        clock.advance(100)  # past TTL + stale-if-error: no more guessing
        assert await key_status(gateway, cached.key) == 503
    finally:
        cluster.start()
    await wait_for(lambda: _is(gateway, cached.key, 200))
    assert await key_status(gateway, uncached.key) == 200


async def test_argon2_runs_in_idle_class_threads_pinned_and_the_loop_does_not(
    gateway: TestServer, seed: Seed
) -> None:
    """Verifications get only CPU time the event loop does not want (SCHED_IDLE), on one
    CPU; the loop's thread is left as it is."""
    key = await seed.key()
    assert await key_status(gateway, key.key) == 200  # a miss: one argon2 verification
    workers = [t.native_id for t in threading.enumerate() if t.name.startswith("argon2")]
    assert workers
    for native_id in workers:
        assert native_id is not None
        assert os.sched_getscheduler(native_id) == os.SCHED_IDLE
        assert len(os.sched_getaffinity(native_id)) == 1
    assert os.sched_getscheduler(threading.get_native_id()) != os.SCHED_IDLE
    assert os.sched_getaffinity(threading.get_native_id()) == os.sched_getaffinity(0)


def test_argon2_threads_are_pinned_to_cpus_of_their_own() -> None:
    """Successive threads of the pool take successive CPUs (counting down from the one the
    pool's counter starts at), so verifications running at once spread over the CPUs the
    process may use."""
    cpus = sorted(os.sched_getaffinity(0))
    threads = itertools.count()
    pinned: list[set[int]] = []

    def settle() -> None:
        settle_argon2_thread(threads)
        pinned.append(os.sched_getaffinity(0))

    for _ in range(len(cpus) + 1):
        thread = threading.Thread(target=settle)
        thread.start()
        thread.join()
    expected = [cpus[-1 - n % len(cpus)] for n in range(len(cpus) + 1)]
    assert pinned == [{cpu} for cpu in expected]
