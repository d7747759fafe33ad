"""Rate limits across real `gateway serve` processes sharing one Postgres (SPEC §4)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from .conftest import Seed
from .reliability import Served, StartServe, serve  # noqa: F401

StartProcess = Callable[..., Awaitable[Served]]


@pytest.fixture
async def start_process(serve: StartServe, upstream: TestServer) -> StartProcess:  # noqa: F811
    """`gateway serve` with the repository's config.yaml, this test's database and `env`."""
    return lambda **env: serve(str(upstream.make_url("")).rstrip("/"), **env)


async def get(session: aiohttp.ClientSession, base: str, key: str) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"}
    async with session.get(f"{base}/v1/customers", headers=headers) as response:
        body = await response.read()
        return response.status, body.decode(errors="replace")


async def test_two_processes_overshoot_within_the_documented_bound(
    start_process: StartProcess, seed: Seed
) -> None:
    """Both processes flooded at once: limit ≤ admitted ≤ limit + (P − 1) × R × T."""
    limit, interval, processes = 600, 0.1, 2
    env = {
        "GATEWAY__RATE_LIMITS__SYNC_INTERVAL_SECONDS": str(interval),
        "GATEWAY__LOGGING__ACCESS_LOG": "false",
    }
    gateways = [await start_process(**env) for _ in range(processes)]
    key = await seed.key(rate_limit_per_minute=limit, rate_limit_per_day=1_000_000)
    answers: list[tuple[float, int]] = []  # (when, status)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for gateway in gateways:  # verified (and counted) once in each process
            answers.append((0.0, (await get(session, gateway.proxy_url, key.key))[0]))
        started = time.monotonic()
        # Until half a second after the first refusal (however slow the machine, or the
        # gateways under coverage), at most 20 s.
        stop_at = started + 20.0

        async def worker(base: str) -> None:
            nonlocal stop_at
            while time.monotonic() < stop_at:
                status, _ = await get(session, base, key.key)
                answers.append((time.monotonic() - started, status))
                if status == 429:
                    stop_at = min(stop_at, time.monotonic() + 0.5)

        await asyncio.gather(*(worker(g.proxy_url) for g in gateways for _ in range(12)))
    statuses = [status for _, status in answers]
    assert set(statuses) == {200, 429}
    admitted = statuses.count(200)
    # R: the key's request rate, both processes together, while it was being admitted
    # (refusals are cheaper, so the rate after the limit would flatter the bound).
    last_admitted = max(at for at, status in answers if status == 200)
    rate = sum(1 for at, _ in answers if 0 < at <= last_admitted) / last_admitted
    bound = (processes - 1) * rate * interval
    print(  # the measured figures (pytest -s)
        f"\nP={processes} T={interval}s limit={limit} R={rate:.0f}/s admitted={admitted}"
        f" overshoot={admitted - limit} bound={bound:.0f} ({(admitted - limit) / bound:.0%})"
    )
    # Unshared, each process would admit the whole limit: this load tells the two apart.
    assert limit > bound, "the load was too fast for this test to tell sharing apart"
    assert limit <= admitted <= limit + bound


async def test_day_quota_survives_a_process_restart(
    start_process: StartProcess, seed: Seed
) -> None:
    """60% of the day's quota through one process, SIGTERM, a new one: 40% is left."""
    key = await seed.key(rate_limit_per_day=10)
    first = await start_process()
    async with aiohttp.ClientSession() as session:
        assert [(await get(session, first.proxy_url, key.key))[0] for _ in range(6)] == [200] * 6
        first.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(first.process.wait, 15) == 0
        second = await start_process()
        results = [await get(session, second.proxy_url, key.key) for _ in range(6)]
    assert [status for status, _ in results] == [200] * 4 + [429] * 2
    assert "day" in results[-1][1]
