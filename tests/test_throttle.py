"""Failed-authentication throttling per client IP and per key id (SPEC §3 step 2, §8)."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import secrets
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.clock import FakeClock
from gateway.config import Config, FailedAuthConfig
from gateway.errors import GatewayError
from gateway.keyformat import KeyFormat
from gateway.throttle import FailedAuthThrottle

from .conftest import GatewayFactory, Seed
from .helpers import make_config, sample

PER_IP, PER_KEY = 5, 4
_addresses = ipaddress.ip_network("198.18.0.0/15").hosts()


def fresh_ip() -> str:
    """An address no other request in the session used."""
    return str(next(_addresses))


def work_done() -> tuple[float, float]:
    """Key lookups in Postgres and argon2 verifications so far."""
    return sample("gateway_key_lookups_total"), sample("gateway_argon2_verifications_total")


def unknown_key() -> str:
    """A well-formed key (valid checksum) whose key id exists nowhere."""
    key, _ = KeyFormat("gp_").generate()
    return key


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def gateway(start_gateway: GatewayFactory, config: Config, clock: FakeClock) -> TestServer:
    """A gateway behind a trusted local proxy, so tests can speak from many IPs."""
    throttled = make_config(
        config.database.url,
        config.proxy.upstream,
        proxy={"trusted_proxies": ["127.0.0.1"]},
        rate_limits={"failed_auth": {"per_ip_per_minute": PER_IP, "per_key_per_minute": PER_KEY}},
    )
    return await start_gateway(throttled, clock)


async def call(
    server: TestServer, key: str, ip: str, session: aiohttp.ClientSession | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    if session is None:
        async with aiohttp.ClientSession() as own:
            return await call(server, key, ip, own)
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": ip}
    async with session.get(server.make_url("/v1/customers"), headers=headers) as response:
        body = await response.json(content_type=None)
        return response.status, body, dict(response.headers)


# -- the budget itself ----------------------------------------------------------------


async def fail(throttle: FailedAuthThrottle, ip: str, key_id: str) -> None:
    """One verification charged and found wrong."""
    await throttle.charge(ip, key_id)
    throttle.settle(ip, key_id, refund=False)


@pytest.mark.parametrize("per_minute", [1, 5, 7, 30])
async def test_budget_allows_n_a_minute_then_one_every_60_over_n_seconds(per_minute: int) -> None:
    fake = FakeClock()
    throttle = FailedAuthThrottle(
        FailedAuthConfig(per_ip_per_minute=per_minute, per_key_per_minute=1000), fake
    )
    for _ in range(per_minute):
        await fail(throttle, "192.0.2.1", secrets.token_hex(6))
    with pytest.raises(GatewayError) as refused:
        await throttle.charge("192.0.2.1", "other")
    step = 60 / per_minute
    assert refused.value.code == "too_many_failed_attempts"
    assert refused.value.headers["Retry-After"] == str(math.ceil(step))
    fake.advance(step)
    await throttle.charge("192.0.2.1", "again")  # one more after 60/N seconds
    throttle.admit("192.0.2.2", "x")  # other IPs were never concerned


async def test_refunds_give_the_budget_back() -> None:
    fake = FakeClock()
    throttle = FailedAuthThrottle(FailedAuthConfig(per_ip_per_minute=2), fake)
    for _ in range(10):
        await throttle.charge("192.0.2.1", "k")
        throttle.settle("192.0.2.1", "k", refund=True)
    assert len(throttle.ips) == len(throttle.key_ids) == 0


async def test_a_full_budget_of_undecided_attempts_waits_for_their_outcome() -> None:
    """Attempts still being verified are not failures: the next one waits for them, then
    passes when one succeeds and is refused when failures alone fill the budget."""
    throttle = FailedAuthThrottle(FailedAuthConfig(per_ip_per_minute=2), FakeClock())
    ip = "192.0.2.7"
    await throttle.charge(ip, "a")
    await throttle.charge(ip, "b")
    throttle.admit(ip, "c")  # step 2 refuses for failures only: none yet
    waiting = asyncio.create_task(throttle.charge(ip, "c"))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    throttle.settle(ip, "a", refund=True)  # "a" was right: its share comes back
    await asyncio.wait_for(waiting, 1)  # charged now
    throttle.settle(ip, "b", refund=False)
    throttle.settle(ip, "c", refund=False)  # two failures: the budget is spent
    with pytest.raises(GatewayError):
        throttle.admit(ip, "d")
    with pytest.raises(GatewayError):
        await asyncio.wait_for(throttle.charge(ip, "d"), 1)  # at once, not after a wait


async def test_tracked_names_are_bounded() -> None:
    throttle = FailedAuthThrottle(FailedAuthConfig(max_tracked=50), FakeClock())
    for i in range(500):
        await fail(throttle, f"10.0.{i // 256}.{i % 256}", f"id{i}")
    assert len(throttle.ips) <= 50 and len(throttle.key_ids) <= 50


# -- per client IP --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unknown_key_ids", "wrong_secrets"])
async def test_ip_with_too_many_failures_gets_429_before_any_database_or_argon2_work(
    gateway: TestServer, seed: Seed, kind: str
) -> None:
    """Each guess names another key id, so only the IP's budget runs out."""
    if kind == "unknown_key_ids":
        guesses = [unknown_key() for _ in range(PER_IP + 1)]
    else:
        account = await seed.account()
        keys = [await seed.key(account, name=f"k{i}") for i in range(PER_IP + 1)]
        guesses = [seed.store.format.generate(k.public_id)[0] for k in keys]
    ip = fresh_ip()
    assert [(await call(gateway, g, ip))[0] for g in guesses[:PER_IP]] == [401] * PER_IP
    before = work_done()
    throttled_before = sample("gateway_failed_auth_throttled_total", scope="ip")
    authenticated_before = sample("gateway_auth_total", result="ok")
    status, body, headers = await call(gateway, guesses[PER_IP], ip)
    assert status == 429
    assert body["error"]["code"] == "too_many_failed_attempts"
    assert headers["Retry-After"] == str(60 // PER_IP)
    assert work_done() == before
    assert sample("gateway_failed_auth_throttled_total", scope="ip") == throttled_before + 1
    # Its key was never judged: no authentication result (it used to count as "ok").
    assert sample("gateway_auth_total", result="ok") == authenticated_before
    assert (await call(gateway, guesses[PER_IP], fresh_ip()))[0] == 401  # other IPs are not


async def test_throttled_ip_may_try_again_after_retry_after(
    gateway: TestServer, clock: FakeClock
) -> None:
    ip = fresh_ip()
    for _ in range(PER_IP):
        assert (await call(gateway, unknown_key(), ip))[0] == 401
    status, _, headers = await call(gateway, unknown_key(), ip)
    retry_after = int(headers["Retry-After"])
    assert (status, retry_after) == (429, 60 // PER_IP)
    clock.advance(retry_after - 1)
    assert (await call(gateway, unknown_key(), ip))[0] == 429
    clock.advance(1)
    assert (await call(gateway, unknown_key(), ip))[0] == 401


async def test_a_throttled_ip_is_refused_even_with_a_valid_key(
    gateway: TestServer, seed: Seed
) -> None:
    """SPEC §3 step 2 comes before verification: the IP is refused whatever it sends."""
    key = await seed.key()
    ip = fresh_ip()
    assert (await call(gateway, key.key, ip))[0] == 200
    for _ in range(PER_IP):
        assert (await call(gateway, unknown_key(), ip))[0] == 401
    assert (await call(gateway, key.key, ip))[0] == 429
    assert (await call(gateway, key.key, fresh_ip()))[0] == 200


async def test_a_concurrent_burst_of_guesses_is_stopped_at_the_limit(
    gateway: TestServer,
) -> None:
    """Charged before verifying, not after failing: 50 at once cost at most 5 argon2."""
    ip = fresh_ip()
    before = work_done()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(
            *(call(gateway, unknown_key(), ip, session) for _ in range(50))
        )
    statuses = [status for status, _, _ in results]
    assert (statuses.count(401), statuses.count(429)) == (PER_IP, 50 - PER_IP)
    lookups, argon2 = work_done()
    assert (lookups - before[0], argon2 - before[1]) == (PER_IP, PER_IP)


async def test_successful_verifications_are_not_held_against_the_ip(
    gateway: TestServer, seed: Seed
) -> None:
    """An integration with many keys behind one address verifies them all."""
    account = await seed.account()
    keys = [await seed.key(account, name=f"k{i}") for i in range(3 * PER_IP)]
    ip = fresh_ip()
    assert [(await call(gateway, k.key, ip))[0] for k in keys] == [200] * len(keys)
    for _ in range(PER_IP):
        assert (await call(gateway, unknown_key(), ip))[0] == 401
    assert (await call(gateway, unknown_key(), ip))[0] == 429


async def test_first_uses_of_many_valid_keys_at_once_from_one_address_all_pass(
    gateway: TestServer, seed: Seed
) -> None:
    """More simultaneous first uses than the failure budget, none failing: no 429 (they
    wait for each other's outcome instead), and each key verified once."""
    account = await seed.account()
    keys = [await seed.key(account, name=f"k{i}") for i in range(4 * PER_IP)]
    ip = fresh_ip()
    before = work_done()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(call(gateway, k.key, ip, session) for k in keys))
    assert [status for status, _, _ in results] == [200] * len(keys)
    lookups, argon2 = work_done()
    assert (lookups - before[0], argon2 - before[1]) == (len(keys), len(keys))
    for _ in range(PER_IP):  # and the address's budget is whole
        assert (await call(gateway, unknown_key(), ip))[0] == 401
    assert (await call(gateway, unknown_key(), ip))[0] == 429


# -- per key id -----------------------------------------------------------------------


async def test_wrong_secret_flood_on_a_key_id_is_capped_and_its_cached_holder_keeps_working(
    gateway: TestServer, seed: Seed
) -> None:
    """From 40 addresses, under each one's own limit: the key id's budget caps the argon2 work."""
    key = await seed.key()
    holder = fresh_ip()
    assert (await call(gateway, key.key, holder))[0] == 200  # verified, now cached
    before = work_done()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def attacker(ip: str) -> list[int]:
            statuses = []
            for _ in range(2):
                wrong, _ = seed.store.format.generate(key.public_id)
                statuses.append((await call(gateway, wrong, ip, session))[0])
            return statuses

        async def legitimate() -> list[int]:
            return [(await call(gateway, key.key, holder, session))[0] for _ in range(40)]

        attacks, valid = await asyncio.gather(
            asyncio.gather(*(attacker(f"203.0.113.{i}") for i in range(1, 41))), legitimate()
        )
    flood = [s for statuses in attacks for s in statuses]
    assert (flood.count(401), flood.count(429)) == (PER_KEY, 80 - PER_KEY)
    assert valid == [200] * 40
    lookups, argon2 = work_done()
    assert (lookups - before[0], argon2 - before[1]) == (PER_KEY, PER_KEY)


async def test_unknown_and_known_key_ids_are_throttled_alike(
    gateway: TestServer, seed: Seed
) -> None:
    """The answers to a guessing run do not tell whether the key id exists."""
    key = await seed.key()
    known_id = key.public_id
    unknown_id = unknown_key()[3:15]

    async def run(public_id: str) -> list[tuple[int, str, str | None]]:
        seen = []
        for _ in range(PER_KEY + 2):
            guess, _ = seed.store.format.generate(public_id)
            status, body, headers = await call(gateway, guess, fresh_ip())
            seen.append((status, body["error"]["code"], headers.get("Retry-After")))
        return seen

    assert await run(known_id) == await run(unknown_id)
