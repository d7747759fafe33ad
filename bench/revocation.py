"""Revocation scenario: how long a key deleted through the admin API works on.

Owns two gateway processes with the same keys cached, deleting the keys through the first
one's admin API, and timing from each answer to each gateway's first 401.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid

import aiohttp

from bench.harness import Servers, url_of

COUNT = 100  # keys deleted, the last of the bulk


def run(
    servers: Servers, owner_token: str, keys: list[str], key_ids: list[uuid.UUID]
) -> dict[str, float]:
    first, p1, admin1 = servers.gateway(GATEWAY_OPERATOR_TOKEN="")
    second, p2, _ = servers.gateway()
    result = asyncio.run(
        revocation(
            url_of(admin1), owner_token, [url_of(p1), url_of(p2)], keys[-COUNT:], key_ids[-COUNT:]
        )
    )
    servers.stop(second)
    servers.stop(first)
    return result


async def revocation(
    admin: str, token: str, gateways: list[str], keys: list[str], key_ids: list[uuid.UUID]
) -> dict[str, float]:
    """Delete keys through the admin API; time from its answer to each gateway's first 401."""
    delays: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        for key in keys:  # both gateways have every key cached
            for base in gateways:
                async with session.get(
                    f"{base}/v1/customers", headers={"Authorization": f"Bearer {key}"}
                ) as r:
                    await r.read()
                    assert r.status == 200, r.status
        for key, key_id in zip(keys, key_ids, strict=True):
            async with session.delete(f"{admin}/v1/keys/{key_id}", headers=headers) as r:
                assert r.status == 204, await r.text()
            answered = time.perf_counter()
            for base in gateways:
                delays.append(await _until_refused(session, base, key, answered))
    delays.sort()
    return {
        "p50_ms": statistics.median(delays),
        "p99_ms": delays[min(len(delays) - 1, int(len(delays) * 0.99))],
        "max_ms": delays[-1],
        "samples": len(delays),
    }


async def _until_refused(
    session: aiohttp.ClientSession, base: str, key: str, answered: float
) -> float:
    """ms from `answered` to the first 401 for `key` from the gateway at `base`."""
    while True:
        async with session.get(
            f"{base}/v1/customers", headers={"Authorization": f"Bearer {key}"}
        ) as r:
            await r.read()
            status = r.status
        if status == 401:
            return (time.perf_counter() - answered) * 1000
        if time.perf_counter() - answered > 5:
            raise SystemExit("bench: a deleted key still works after 5 s")
