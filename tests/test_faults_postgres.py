"""Postgres faults under a real `gateway serve` (SPEC §8): the test cluster is stopped and
started while a load runs, and the notification listener's connection is killed.

Outage: cached keys keep getting 200 (stale-if-error), uncached ones 503 — never 401, never
200 while Postgres is down — nothing crashes, the gateway reconnects by itself, and the
database ends up holding exactly what was served: every request that got a 200 is in the
usage counts and the day's rate-limit counter, and each key's last use is its last 200.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import aiohttp
import asyncpg
from aiohttp.test_utils import TestServer

from gateway.clock import FakeClock
from gateway.config import Config
from gateway.db import create_pool
from gateway.keys import KeyStore
from gateway.records import NewKey
from gateway.usage import OUTCOMES, UsageRecorder

from .conftest import Cluster, Seed
from .helpers import wait_for
from .reliability import NO_LIMITS, StartServe, bearer, serve  # noqa: F401

CACHED, OUTAGE_ONLY, UNCACHED = 8, 4, 4


@dataclasses.dataclass
class Sent:
    key: int
    sent_at: float  # wall clock, as the gateway stamps last_used_at
    started: float  # monotonic
    finished: float
    status: int
    code: str | None


async def one(session: aiohttp.ClientSession, url: str, key: str, index: int) -> Sent:
    sent_at, started = time.time(), time.monotonic()
    async with session.get(url, headers=bearer(key)) as response:
        body = await response.read()
        code = None
        if response.status >= 400:
            code = (await response.json())["error"]["code"] if body else None
            if response.status == 503:
                assert response.headers.get("Retry-After")
        return Sent(index, sent_at, started, time.monotonic(), response.status, code)


async def recorded(conn: asyncpg.Connection, key_ids: list[uuid.UUID]) -> dict[str, dict]:
    usage = await conn.fetch(
        "SELECT key_id, sum(count)::int AS n FROM key_usage_hourly"
        " WHERE key_id = ANY($1) AND outcome = 'ok' GROUP BY key_id",
        key_ids,
    )
    day = await conn.fetch(
        "SELECT key_id, sum(count)::int AS n FROM rate_limit_counters"
        " WHERE key_id = ANY($1) AND window_name = 'day' GROUP BY key_id",
        key_ids,
    )
    last_used = await conn.fetch(
        "SELECT key_id, extract(epoch FROM last_used_at)::float8 AS at"
        " FROM api_key_last_used WHERE key_id = ANY($1)",
        key_ids,
    )
    return {
        "usage": {r["key_id"]: r["n"] for r in usage},
        "day": {r["key_id"]: r["n"] for r in day},
        "last_used": {r["key_id"]: r["at"] for r in last_used},
    }


async def test_postgres_outage_under_load_loses_nothing_and_refuses_no_valid_key(
    serve: StartServe,  # noqa: F811
    seed: Seed,
    cluster: Cluster,
    database_url: str,
    upstream: TestServer,
) -> None:
    gateway = await serve(
        str(upstream.make_url("")).rstrip("/"),
        **NO_LIMITS,
        # Cached keys must be re-confirmed every second, so the outage takes them down
        # the stale-if-error path rather than letting them ride a long TTL.
        GATEWAY__KEYS__CACHE_TTL_SECONDS="1",
        GATEWAY__KEYS__STALE_IF_ERROR_SECONDS="300",
        GATEWAY__RATE_LIMITS__SYNC_INTERVAL_SECONDS="0.5",
    )
    account = await seed.account()
    keys: list[NewKey] = [
        await seed.key(account, name=f"k{i}") for i in range(CACHED + OUTAGE_ONLY + UNCACHED)
    ]
    url = f"{gateway.proxy_url}/v1/customers"
    cached = list(range(CACHED + OUTAGE_ONLY))
    outage_only = cached[CACHED:]  # last used during the outage, never after it
    uncached = list(range(CACHED + OUTAGE_ONLY, len(keys)))
    sent: list[Sent] = []
    phase = {"down": False, "restarting": False, "stop": False}
    marks: dict[str, float] = {}

    async with aiohttp.ClientSession() as session:
        for i in cached:
            sent.append(await one(session, url, keys[i].key, i))
        assert [s.status for s in sent] == [200] * len(cached)

        async def worker(indexes: list[int]) -> None:
            n = 0
            while not phase["stop"]:
                i = indexes[n % len(indexes)]
                n += 1
                if i in outage_only and phase["restarting"]:
                    continue
                sent.append(await one(session, url, keys[i].key, i))
                await asyncio.sleep(0)

        workers = [asyncio.create_task(worker(cached)) for _ in range(6)]
        try:
            await wait_for(lambda: len(sent) > 300, timeout=30)
            marks["stopping"] = time.monotonic()
            await asyncio.to_thread(cluster.stop)
            marks["down"] = time.monotonic()
            phase["down"] = True
            # Keys never used before: nothing in any cache can vouch for them.
            workers += [asyncio.create_task(worker(uncached)) for _ in range(2)]
            # Long enough for every cached entry to pass its TTL and for the flushers
            # and the rate-limit sync to fail several times each.
            down_until = len(sent) + 1500
            await wait_for(
                lambda: len(sent) > down_until and time.monotonic() - marks["down"] > 3,
                timeout=60,
            )
            phase["restarting"] = True
            marks["restarting"] = time.monotonic()
        finally:
            await asyncio.to_thread(cluster.start)
        marks["up"] = time.monotonic()

        # The gateway reconnects by itself: uncached keys get through again, /readyz is 200.
        def uncached_served_since_restart() -> bool:
            late = [s for s in sent if s.key in uncached and s.started > marks["up"]]
            return len(late) > 20 and all(s.status == 200 for s in late[-10:])

        try:
            await wait_for(uncached_served_since_restart, timeout=30)
            await wait_for(lambda: len(sent) > down_until + 500, timeout=30)
        finally:
            phase["stop"] = True
            await asyncio.gather(*workers)

        async def ready() -> bool:
            async with session.get(f"{gateway.admin_url}/readyz") as response:
                return response.status == 200

        await wait_for(ready, timeout=20)

    assert gateway.process.poll() is None, "the gateway died during the outage"
    by_key: dict[int, list[Sent]] = {i: [] for i in range(len(keys))}
    for s in sent:
        by_key[s.key].append(s)
    during = [s for s in sent if marks["down"] < s.started and s.finished < marks["restarting"]]
    assert {s.status for s in sent if s.key in cached} == {200}, "a cached key was refused"
    assert {(s.status, s.code) for s in sent if s.key in uncached} <= {
        (200, None),
        (503, "auth_unavailable"),
    }
    assert {(s.status, s.code) for s in during if s.key in uncached} == {(503, "auth_unavailable")}
    assert len([s for s in during if s.key in cached]) > 500

    # Everything served must reach Postgres now that it is back, with no restart.
    ids = [key.id for key in keys]
    served = {keys[i].id: sum(s.status == 200 for s in by_key[i]) for i in range(len(keys))}
    conn = await asyncpg.connect(database_url)
    try:

        async def all_recorded() -> bool:
            now = await recorded(conn, ids)
            return now["usage"] == served and now["day"] == served

        try:
            await wait_for(all_recorded, timeout=30, interval=0.25)
        finally:
            now = await recorded(conn, ids)
            print(
                f"\noutage: {len(sent)} requests sent, {sum(served.values())} served (200),"
                f" {sum(s.status == 503 for s in sent)} refused (503),"
                f" {len(during)} while Postgres was down;"
                f" recorded: {sum(now['usage'].values())} usage counts,"
                f" {sum(now['day'].values())} day rate-limit counts,"
                f" {len(now['last_used'])} of {len(keys)} last-used times"
            )
        for i in range(len(keys)):
            last = max((s for s in by_key[i] if s.status == 200), key=lambda s: s.sent_at)
            stamped = now["last_used"][keys[i].id]
            assert last.sent_at - 0.01 <= stamped <= last.sent_at + 5, (i, last, stamped)
            later = [s for s in by_key[i] if s.status == 200 and s.sent_at > stamped + 0.01]
            assert not later, f"key {i}: last_used_at is older than a request it served"
        for i in outage_only:
            assert by_key[i][-1].started < marks["restarting"]  # last used while down
        assert await gateway.terminate() == 0
        after = await recorded(conn, ids)
        assert after["usage"] == served and after["day"] == served  # nothing counted twice
    finally:
        await conn.close()
    assert gateway.trouble() == []


async def test_cut_listener_reconnects_and_a_key_deleted_meanwhile_is_refused(
    serve: StartServe,  # noqa: F811
    seed: Seed,
    cluster: Cluster,
    database_url: str,
    upstream: TestServer,
) -> None:
    """The listener's backend is killed and cannot reconnect for a while; a key deleted
    in that gap (its notice lost) is refused as soon as the listener is back, and every
    cached key is confirmed again by Postgres (one query, no argon2) before its next use."""
    gateway = await serve(str(upstream.make_url("")).rstrip("/"), **NO_LIMITS)
    account = await seed.account()
    kept, deleted = await seed.key(account, name="kept"), await seed.key(account, name="gone")
    database = database_url.rsplit("/", 1)[1]
    url = f"{gateway.proxy_url}/v1/customers"
    conn = await asyncpg.connect(cluster.admin_url)  # ALTER DATABASE needs another one
    try:
        async with aiohttp.ClientSession() as session:

            async def status(key: NewKey) -> int:
                async with session.get(url, headers=bearer(key.key)) as response:
                    await response.read()
                    return response.status

            async def ready() -> int:
                async with session.get(f"{gateway.admin_url}/readyz") as response:
                    return response.status

            assert await status(kept) == 200 and await status(deleted) == 200
            reconnects = await gateway.metric("gateway_listener_reconnects_total")
            listener = await conn.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1"
                " AND query LIKE 'LISTEN %' AND pid <> pg_backend_pid()",
                database,
            )
            assert listener is not None
            # Nobody may connect to this database for now (superusers included); the
            # gateway's pool keeps the connections it has.
            await conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            try:
                assert await conn.fetchval("SELECT pg_terminate_backend($1)", listener)
                await wait_for(lambda: _is(ready, 503), timeout=15)
                assert await seed.store.delete(account.account_id, deleted.id)
                # The notice went nowhere: this process has not heard of the deletion.
                assert await status(deleted) == 200
            finally:
                await conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            await wait_for(
                lambda: _metric_above(gateway, "gateway_listener_reconnects_total", reconnects),
                timeout=20,
            )
            lookups = await gateway.metric("gateway_key_lookups_total")
            argon2 = await gateway.metric("gateway_argon2_verifications_total")
            assert await status(deleted) == 401  # the very first request after reconnecting
            assert await status(kept) == 200
            assert await gateway.metric("gateway_key_lookups_total") == lookups + 2
            assert await gateway.metric("gateway_argon2_verifications_total") == argon2
            assert await ready() == 200
    finally:
        await conn.close()
    assert await gateway.terminate() == 0
    assert gateway.trouble() == []


async def _is(probe, expected: int) -> bool:  # type: ignore[no-untyped-def]
    return await probe() == expected


async def _metric_above(gateway, name: str, value: float) -> bool:  # type: ignore[no-untyped-def]
    return await gateway.metric(name) > value


async def test_two_processes_flushing_the_same_keys_at_once_neither_deadlock_nor_drop(
    config: Config, seed: Seed, database_url: str
) -> None:
    """Two processes (replicas, or --workers) flush usage for the same keys at the same
    moment, their batches built in opposite orders. Without one row order the upserts
    deadlock and Postgres aborts one (found by `make soak` with two workers: a usage batch
    dropped)."""
    account = await seed.account()
    keys = [await seed.key(account, name=f"k{i}") for i in range(40)]
    hours, rounds = 12, 4
    start = time.time() - hours * 3600
    # One walks forward through the hours, keys and outcomes, the other backward.
    clocks = [FakeClock(start), FakeClock(start + (hours - 1) * 3600)]
    walks = [(keys, OUTCOMES, 3600), (keys[::-1], OUTCOMES[::-1], -3600)]
    pools = [await create_pool(config.database, min_size=1, max_size=2) for _ in range(2)]
    try:
        store = [KeyStore(pool, seed.store.format, seed.hasher) for pool in pools]
        recorders = [UsageRecorder(store[i], pools[i], config.usage, clocks[i]) for i in range(2)]
        for _ in range(rounds):
            for recorder, clock, (order, outcomes, step) in zip(
                recorders, clocks, walks, strict=True
            ):
                for _hour in range(hours):  # 40 keys x 12 hours x 6 outcomes: 2,880 rows
                    for key in order:
                        for outcome in outcomes:
                            recorder.count(key.id, outcome)
                    clock.advance(step)
                clock.advance(-step * hours)
            assert await asyncio.gather(*(r.flush() for r in recorders)) == [True, True]
    finally:
        for pool in pools:
            await pool.close()
    conn = await asyncpg.connect(database_url)
    try:
        now = await recorded(conn, [key.id for key in keys])
    finally:
        await conn.close()
    assert now["usage"] == {key.id: 2 * rounds * hours for key in keys}
