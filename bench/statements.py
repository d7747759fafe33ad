"""Statements scenario: Postgres transactions per second from the gateway at two rates.

Owns the fixed-rate load, reading the database's transaction count, and pausing
autovacuum on the gateway's tables for the windows. The count is small (a sync a second,
two flushes and a listener check every five seconds), so anything else would decide the
figure: autovacuum is paused (after a VACUUM ANALYZE of the churn before), every pooled
connection is warmed first, each window is read while the load runs and lasts a whole
number of flush intervals, and the rates alternate (mean of each). The gateway is the
caller's.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import asyncpg

from bench.harness import Settings

RATES = [100.0, 400.0]  # req/s, 4x apart


def run(settings: Settings, url: str, gw: str, hot: str) -> dict[str, float]:
    seconds, repeats = (5, 1) if settings.quick else (15, 2)
    return asyncio.run(statements_per_second(url, gw, hot, RATES, seconds, repeats))


async def statements_per_second(
    url: str, base: str, key: str, rates: list[float], seconds: float, repeats: int
) -> dict[str, float]:
    """Transactions per second in the gateway's database at each request rate."""
    tables = await _pause_autovacuum(url)
    try:
        # Each pooled connection prepares a statement (and asyncpg looks up its types)
        # the first time it runs it: a start-up cost, not a per-rate one. Warm every
        # connection first, then alternate the rates.
        await fixed_rate(base, key, max(rates), seconds)
        windows: dict[float, list[float]] = {rate: [] for rate in rates}
        for _ in range(repeats):
            for rate in rates:
                windows[rate].append(await _window(url, base, key, rate, seconds))
        return {f"{int(rate)}_rps": statistics.mean(w) for rate, w in windows.items()}
    finally:
        await _resume_autovacuum(url, tables)


async def _window(url: str, base: str, key: str, rate: float, seconds: float) -> float:
    """Transactions per second over `seconds` in the middle of a load at `rate`."""
    load = asyncio.create_task(fixed_rate(base, key, rate, seconds + 3))
    await asyncio.sleep(1.5)  # the load is steady, and its stats are written
    before = await transactions(url)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    after = await transactions(url)
    elapsed = time.monotonic() - started
    await load
    # The two transactions of the first statistics read are written when its
    # connection closes, inside the window: not the gateway's.
    return (after - before - 2) / elapsed


async def _pause_autovacuum(url: str) -> list[str]:
    """VACUUM ANALYZE, then autovacuum off on every table; returns the tables."""
    conn = await asyncpg.connect(url)
    try:
        tables = [
            r["name"]
            for r in await conn.fetch(
                "SELECT quote_ident(tablename) AS name FROM pg_tables WHERE schemaname = 'public'"
            )
        ]
        await conn.execute("VACUUM ANALYZE")
        for table in tables:
            await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    finally:
        await conn.close()  # its statistics are written now, not inside a window
    return tables


async def _resume_autovacuum(url: str, tables: list[str]) -> None:
    conn = await asyncpg.connect(url)
    try:
        for table in tables:
            await conn.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")
    finally:
        await conn.close()


async def fixed_rate(base: str, key: str, rate: float, seconds: float) -> None:
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            async with session.get(
                f"{base}/v1/customers", headers={"Authorization": f"Bearer {key}"}
            ) as r:
                await r.read()

        tasks = []
        started = time.monotonic()
        for i in range(int(rate * seconds)):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)


async def transactions(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        value: int = await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
        return value
    finally:
        await conn.close()
