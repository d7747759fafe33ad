"""Latency scenarios at concurrency 1: the gateway's added latency, and the cold path.

Owns the added latency (p50, p99) of the gateway over the bare proxy, the median of the
rounds' differences; the first request with each of ten keys made with the default
(OWASP) argon2 parameters; and rounds of the hot path's p99 alone and while 20 new keys a
second are verified, in turn the other way round: one pair of windows was decided by how
quiet the machine was in each. The servers are the caller's: the gateway measured here
goes on to serve the statements scenario.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp

from bench.data import new_owasp_keys
from bench.harness import Settings, in_turn, wrk

NEW_KEYS_PER_SECOND = 20


def added(
    settings: Settings, bare_url: str, gateway_url: str, hot: str
) -> dict[str, list[dict[str, float]]]:
    """Rounds of p50 and p99 at concurrency 1 of the bare proxy and of the gateway."""
    targets = (("bare", bare_url, None), ("gateway", gateway_url, hot))
    for _name, target, key in targets:
        wrk(target, settings.warm, 1, key=key)
    # A p99 of one run is decided by a few slow seconds of the machine: the same
    # interleaved rounds as the throughput, each pair in turn the other way round.
    lat: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in targets}
    for index in range(settings.rounds):
        for name, target, key in in_turn(targets, index):
            lat[name].append(wrk(target, settings.seconds, 1, key=key, latency=True))
    return lat


def cold(settings: Settings, url: str, gw: str, account_id: uuid.UUID, hot: str) -> dict[str, Any]:
    """The cold path, and the hot path's p99 alone and under new keys."""
    rounds = 2 if settings.quick else 3
    owasp = asyncio.run(
        new_owasp_keys(url, account_id, 10 + NEW_KEYS_PER_SECOND * settings.seconds * rounds)
    )
    first = asyncio.run(cold_path(gw, owasp[:10]))
    new_keys = iter(owasp[10:])
    windows: dict[str, list[float]] = {"alone": [], "loaded": []}
    for index in range(rounds):
        for name in in_turn(("alone", "loaded"), index):
            rate = NEW_KEYS_PER_SECOND if name == "loaded" else 0
            windows[name].append(_hot_p99(settings, gw, hot, new_keys, rate))
    return {
        **first,
        "hot_p99_alone_ms": windows["alone"],
        "hot_p99_under_20_new_keys_per_s_ms": windows["loaded"],
    }


def _hot_p99(
    settings: Settings, gw: str, hot: str, new_keys: Iterator[str], per_second: int
) -> float:
    """The hot path's p99 at concurrency 1 while new keys come at that rate."""
    seconds = settings.seconds
    batch = [next(new_keys) for _ in range(per_second * seconds)]

    async def run() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        load = asyncio.create_task(new_keys_at_rate(gw, batch, per_second))
        result = await loop.run_in_executor(
            None, lambda: wrk(f"{gw}/v1/customers", seconds, 1, key=hot, latency=True)
        )
        await load
        return result

    return asyncio.run(run())["p99_ms"]


async def cold_path(base: str, keys: list[str]) -> dict[str, float]:
    timings = []
    async with aiohttp.ClientSession() as session:
        for key in keys:
            started = time.perf_counter()
            async with session.get(
                f"{base}/v1/customers", headers={"Authorization": f"Bearer {key}"}
            ) as r:
                await r.read()
                assert r.status == 200, r.status
            timings.append((time.perf_counter() - started) * 1000)
    return {
        "first_request_p50_ms": statistics.median(timings),
        "first_request_max_ms": max(timings),
    }


async def new_keys_at_rate(base: str, keys: list[str], per_second: float) -> int:
    sent = 0
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        for i, key in enumerate(keys):
            delay = started + i / per_second - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            async with session.get(
                f"{base}/v1/customers", headers={"Authorization": f"Bearer {key}"}
            ) as r:
                await r.read()
                sent += r.status == 200
    return sent
