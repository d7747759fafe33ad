"""CPU-burn protection (SPEC §3 step 2, §8) against a real `gateway serve`: a wrong-secret
flood on a known key id and a flood of made-up keys from many client addresses, while
cached keys keep calling. Valid requests keep succeeding, and the argon2 verifications
the floods cause stay within what the failed-auth budgets allow (counted from /metrics
and from the victim key's `failed_auth` usage).

The floods come from real distinct peers: Linux routes all of 127.0.0.0/8 to loopback,
so each flooding client binds its own 127.0.0.x address. How much latency the valid
traffic loses under such a flood is the benchmark's to measure (`make bench`).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time

import aiohttp
import asyncpg
from aiohttp.test_utils import TestServer

from gateway.keyformat import KeyFormat

from .conftest import Seed
from .helpers import wait_for
from .reliability import NO_LIMITS, StartServe, bearer, serve  # noqa: F401

PER_IP, PER_KEY = 30, 20  # rate_limits.failed_auth defaults (config.yaml)
WRONG_SECRET_IPS = [f"127.0.0.{n}" for n in range(10, 30)]  # secrets for the victim's id
MADE_UP_KEY_IPS = [f"127.0.0.{n}" for n in range(30, 35)]  # keys with ids nobody has
BAD_CHECKSUM_IPS = [f"127.0.0.{n}" for n in range(40, 60)]  # refused without any work
FLOOD_SECONDS = 4.0


async def test_floods_of_bad_keys_stay_within_the_argon2_budget_and_valid_keys_pass(
    serve: StartServe,  # noqa: F811
    seed: Seed,
    upstream: TestServer,
    database_url: str,
) -> None:
    gateway = await serve(str(upstream.make_url("")).rstrip("/"), **NO_LIMITS)
    account = await seed.account()
    victim = await seed.key(account, name="victim")
    valid = [await seed.key(account, name=f"valid {i}") for i in range(5)]
    url = f"{gateway.proxy_url}/v1/customers"
    key_format = KeyFormat("gp_")
    async with aiohttp.ClientSession() as session:
        for key in [victim, *valid]:  # verified once, cached from now on
            async with session.get(url, headers=bearer(key.key)) as response:
                assert response.status == 200
    argon2_before = await gateway.metric("gateway_argon2_verifications_total")
    lookups_before = await gateway.metric("gateway_key_lookups_total")
    stop = asyncio.Event()
    flood: collections.Counter[tuple[str, int]] = collections.Counter()
    legit: collections.Counter[int] = collections.Counter()

    async def flooder(address: str, make_token: object, kind: str) -> None:
        connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=4)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> None:
                while not stop.is_set():
                    token = make_token()  # type: ignore[operator]
                    async with session.get(url, headers=bearer(token)) as response:
                        await response.read()
                        flood[(kind, response.status)] += 1

            await asyncio.gather(*(one() for _ in range(2)))

    async def holder() -> None:
        async with aiohttp.ClientSession() as session:
            n = 0
            while not stop.is_set():
                key = [victim, *valid][n % (len(valid) + 1)]
                n += 1
                async with session.get(url, headers=bearer(key.key)) as response:
                    await response.read()
                    legit[response.status] += 1

    def wrong_secret() -> str:
        return key_format.generate(victim.public_id)[0]

    def made_up() -> str:
        return key_format.generate()[0]

    def bad_checksum() -> str:
        key = key_format.generate()[0]
        return key[:-1] + ("A" if key[-1] != "A" else "B")

    tasks = [asyncio.create_task(holder()) for _ in range(4)]
    tasks += [asyncio.create_task(flooder(ip, wrong_secret, "wrong")) for ip in WRONG_SECRET_IPS]
    tasks += [asyncio.create_task(flooder(ip, made_up, "made-up")) for ip in MADE_UP_KEY_IPS]
    tasks += [asyncio.create_task(flooder(ip, bad_checksum, "checksum")) for ip in BAD_CHECKSUM_IPS]
    started = time.monotonic()
    try:
        done, _ = await asyncio.wait(tasks, timeout=FLOOD_SECONDS, return_when="FIRST_EXCEPTION")
        for task in done:
            task.result()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - started
    argon2 = await gateway.metric("gateway_argon2_verifications_total") - argon2_before
    lookups = await gateway.metric("gateway_key_lookups_total") - lookups_before

    # Each address, and each key id, is charged once per verification up front; N pass at
    # once, then one every 60/N seconds.
    def budget(per_minute: int) -> int:
        return per_minute + math.ceil(per_minute * elapsed / 60) + 1

    # The victim's id is one budget, however many addresses guess at it; made-up ids are
    # new each time, so there the addresses' budgets bind.
    bound = budget(PER_KEY) + len(MADE_UP_KEY_IPS) * budget(PER_IP)
    attempts = sum(flood.values())
    addresses = len(WRONG_SECRET_IPS) + len(MADE_UP_KEY_IPS) + len(BAD_CHECKSUM_IPS)
    print(
        f"\nflood: {attempts} bad requests in {elapsed:.1f} s from {addresses} addresses"
        f" ({dict(sorted(flood.items()))}); {argon2:.0f} argon2 verifications and"
        f" {lookups:.0f} key lookups (bound {bound}); valid: {dict(legit)}"
    )
    assert set(legit) == {200} and legit[200] > 100, legit
    assert {status for _, status in flood} <= {401, 429}
    assert flood[("checksum", 429)] == 0  # cost nothing, so never charged
    # Both costly floods reached their budgets and were throttled from then on (the
    # made-up keys' pace is argon2's, so how far past the budget depends on the machine).
    assert flood[("wrong", 429)] > flood[("wrong", 401)]
    made_up = flood[("made-up", 401)] + flood[("made-up", 429)]
    if made_up > len(MADE_UP_KEY_IPS) * budget(PER_IP):  # more than the budgets allow
        assert flood[("made-up", 429)] > 0
    assert argon2 <= bound
    assert argon2 == lookups  # every verification first cost one query, and vice versa
    assert attempts > 10 * argon2  # the budgets, not the flood's size, set the cost

    # The victim's id was guessed from 20 addresses at once: its own budget held them all.
    conn = await asyncpg.connect(database_url)
    try:

        async def failed_auth() -> int:
            n = await conn.fetchval(
                "SELECT coalesce(sum(count), 0) FROM key_usage_hourly"
                " WHERE key_id = $1 AND outcome = 'failed_auth'",
                victim.id,
            )
            return int(n)

        await wait_for(lambda: _positive(failed_auth), timeout=10)
        assert await gateway.terminate() == 0
        wrong_secret_verifications = await failed_auth()
    finally:
        await conn.close()
    assert 0 < wrong_secret_verifications <= budget(PER_KEY)
    assert gateway.trouble() == []


async def _positive(read) -> bool:  # type: ignore[no-untyped-def]
    return await read() > 0
