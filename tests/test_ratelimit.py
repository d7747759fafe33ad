"""Per-key rate limits in one process: the windows, Retry-After, headers (SPEC §4).

The first half drives `SlidingWindowLimiter` directly with a `FakeClock`; the second half
goes through a real gateway, a real upstream and Postgres.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp
import asyncpg
import http_sf
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import LIMITER
from gateway.clock import FakeClock
from gateway.config import DEFAULT_PERMISSIONS, Config, RateLimitConfig
from gateway.counters import DAY, Deltas, PostgresCounters, bucket
from gateway.ratelimit import SlidingWindowLimiter
from gateway.records import KeyRecord
from gateway.settings import ConfigError

from .conftest import Cluster, GatewayFactory, Seed
from .helpers import make_config, sample, wait_for

MIDNIGHT = dt.datetime(2027, 3, 1, tzinfo=dt.UTC).timestamp()  # a Monday, 00:00:00 UTC


def record(per_minute: int | None = None, per_day: int | None = None) -> KeyRecord:
    return KeyRecord(
        id=uuid.uuid4(),
        account_id=uuid.uuid4(),
        public_id="A" * 12,
        secret_hash="",
        previous_secret_hash=None,
        previous_secret_expires_at=None,
        permissions=frozenset(DEFAULT_PERMISSIONS),
        ip_allowlist=(),
        rate_limit_per_minute=per_minute,
        rate_limit_per_day=per_day,
        expires_at=None,
        enabled=True,
    )


def limiter(clock: FakeClock, per_minute: int = 600, per_day: int = 50_000) -> SlidingWindowLimiter:
    return SlidingWindowLimiter(RateLimitConfig(per_minute=per_minute, per_day=per_day), clock)


def parse_fields(headers: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`RateLimit-Policy` and `RateLimit` through a Structured Fields parser, by policy name."""
    policy = http_sf.parse(headers["RateLimit-Policy"].encode(), tltype="list")
    state = http_sf.parse(headers["RateLimit"].encode(), tltype="list")
    return (
        {name: dict(params) for name, params in policy},
        {name: dict(params) for name, params in state},
    )


# -- the windows, with a fake clock ---------------------------------------------------


@pytest.mark.parametrize("limit", [1, 7, 600])
def test_exactly_the_limit_passes_in_a_minute(limit: int) -> None:
    clock = FakeClock(MIDNIGHT + 3600.4)
    keys = limiter(clock, per_minute=limit)
    key = record()
    decisions = [keys.check(key) for _ in range(limit + 5)]
    assert [d.allowed for d in decisions] == [True] * limit + [False] * 5
    assert {d.window for d in decisions[limit:]} == {"minute"}


def test_no_double_burst_across_a_minute_boundary() -> None:
    """A fixed window would admit a second burst at 00:01:00; the sliding one waits."""
    clock = FakeClock(MIDNIGHT + 50)  # 00:00:50
    keys = limiter(clock, per_minute=10)
    key = record()
    assert all(keys.check(key).allowed for _ in range(10))
    for at in (59.9, 60.0, 61.0, 109.9):
        clock.advance(MIDNIGHT + at - clock.time())
        assert not keys.check(key).allowed, at
    clock.advance(MIDNIGHT + 110 - clock.time())  # 60 s after the burst's second
    assert all(keys.check(key).allowed for _ in range(10))
    assert not keys.check(key).allowed


@pytest.mark.parametrize(
    ("times", "at", "expected"),
    [
        ([0.0] * 5, 0.0, 60),
        ([0.7] * 5, 0.7, 60),
        ([0.0, 10.5, 20.2, 30.9], 45.3, 15),  # the oldest frees at 60.0
        ([0.0, 59.5], 59.6, 1),
        ([3.2, 3.9, 40.1], 41.5, 22),  # both requests of second 3 free at 63.0
    ],
)
def test_retry_after_is_exact_to_the_second(times: list[float], at: float, expected: int) -> None:
    """Waiting Retry-After gets through; one second less does not."""
    clock = FakeClock(MIDNIGHT + 7200)
    start = clock.time()
    keys = limiter(clock, per_minute=len(times))
    key = record()
    for t in times:
        clock.advance(start + t - clock.time())
        assert keys.check(key).allowed
    clock.advance(start + at - clock.time())
    refused = keys.check(key)
    assert not refused.allowed
    assert (refused.window, refused.retry_after) == ("minute", expected)
    assert refused.headers["X-RateLimit-Reset"] == str(expected)
    clock.advance(expected - 1)
    assert not keys.check(key).allowed
    clock.advance(1)
    assert keys.check(key).allowed


def test_requests_free_one_by_one_as_they_leave_the_minute() -> None:
    clock = FakeClock(MIDNIGHT)
    keys = limiter(clock, per_minute=4)
    key = record()
    assert keys.check(key).allowed and keys.check(key).allowed  # second 0
    clock.advance(30)
    assert keys.check(key).allowed and keys.check(key).allowed  # second 30
    clock.advance(29.5)
    assert keys.check(key).retry_after == 1
    clock.advance(0.5)  # second 60: the two of second 0 are gone
    assert keys.check(key).allowed and keys.check(key).allowed
    refused = keys.check(key)
    assert (refused.allowed, refused.retry_after) == (False, 30)


def test_day_window_resets_at_midnight_utc() -> None:
    clock = FakeClock(MIDNIGHT + 86_400 - 100.5)  # 23:58:19.5
    keys = limiter(clock, per_minute=100, per_day=3)
    key = record()
    assert all(keys.check(key).allowed for _ in range(3))
    refused = keys.check(key)
    assert (refused.allowed, refused.window, refused.retry_after) == (False, "day", 101)
    clock.advance(100)
    assert not keys.check(key).allowed
    clock.advance(1)
    assert keys.check(key).allowed


def test_when_both_windows_are_full_the_longer_wait_is_named() -> None:
    clock = FakeClock(MIDNIGHT + 86_400 - 10)  # 23:59:50
    keys = limiter(clock, per_minute=2, per_day=2)
    key = record()
    assert keys.check(key).allowed and keys.check(key).allowed
    refused = keys.check(key)
    assert (refused.window, refused.retry_after) == ("minute", 60)  # the day frees in 10
    clock.advance(59)
    assert not keys.check(key).allowed
    clock.advance(1)
    assert keys.check(key).allowed


def test_per_key_overrides_replace_the_defaults() -> None:
    clock = FakeClock(MIDNIGHT)
    keys = limiter(clock, per_minute=100, per_day=1000)
    own, default = record(per_minute=2, per_day=50), record()
    assert [keys.check(own).allowed for _ in range(3)] == [True, True, False]
    policy, _ = parse_fields(keys.check(default).headers)
    assert policy == {"minute": {"q": 100, "w": 60}, "day": {"q": 1000, "w": 86400}}
    policy, _ = parse_fields(keys.headers(own))
    assert policy == {"minute": {"q": 2, "w": 60}, "day": {"q": 50, "w": 86400}}


@pytest.mark.parametrize(
    ("per_minute", "per_day", "requests", "tightest"),
    [
        (10, 1000, 1, ("10", "9", "60")),  # the minute has fewer left
        (10, 6, 5, ("6", "1", "36000")),  # the day has fewer left
        (5, 5, 5, ("5", "0", "36000")),  # both spent: the longer wait
    ],
)
def test_headers_describe_both_windows_and_the_tightest(
    per_minute: int, per_day: int, requests: int, tightest: tuple[str, str, str]
) -> None:
    clock = FakeClock(MIDNIGHT + 50_400)  # 14:00:00, 36,000 s before midnight
    keys = limiter(clock, per_minute=per_minute, per_day=per_day)
    key = record()
    for _ in range(requests):
        headers = keys.check(key).headers
    limit, remaining, reset = tightest
    assert (
        headers["X-RateLimit-Limit"],
        headers["X-RateLimit-Remaining"],
        headers["X-RateLimit-Reset"],
    ) == (limit, remaining, reset)
    policy, state = parse_fields(headers)
    assert policy == {"minute": {"q": per_minute, "w": 60}, "day": {"q": per_day, "w": 86400}}
    assert state == {
        "minute": {"r": per_minute - requests, "t": 60},
        "day": {"r": per_day - requests, "t": 36000},
    }


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=6),
    gaps=st.lists(st.floats(min_value=0, max_value=40, allow_nan=False), max_size=60),
)
def test_any_60_seconds_admit_at_most_the_limit_and_refuse_only_when_full(
    limit: int, gaps: list[float]
) -> None:
    """A request made in second s counts until second s + 60: no more, no less."""
    clock = FakeClock(MIDNIGHT + 1000)
    keys = limiter(clock, per_minute=limit)
    key = record()
    admitted: list[int] = []
    for gap in gaps:
        clock.advance(gap)
        second = math.floor(clock.time())
        in_window = sum(1 for s in admitted if s > second - 60)
        decision = keys.check(key)
        assert decision.allowed == (in_window < limit)
        if decision.allowed:
            admitted.append(second)


# -- through a real gateway -----------------------------------------------------------


def bearer(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


def limits_config(config: Config, upstream: str | None = None, **rate_limits: Any) -> Config:
    return make_config(
        config.database.url,
        upstream or config.proxy.upstream,
        rate_limits=rate_limits,
        proxy={"trusted_proxies": ["127.0.0.1"]},
    )


async def get(
    server: TestServer, key: str, path: str = "/v1/customers", **headers: str
) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url(path), headers=bearer(key, **headers)) as response:
            await response.read()
            return response


async def test_concurrent_requests_admit_exactly_the_limit(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    """300 requests at once on a key allowed 100 a minute: exactly 100 pass."""
    clock = FakeClock(MIDNIGHT + 600.5)
    gateway = await start_gateway(limits_config(config, sync_interval_seconds=0.05), clock)
    key = await seed.key(rate_limit_per_minute=100)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> tuple[int, str]:
            async with session.get(
                gateway.make_url("/v1/customers"), headers=bearer(key.key)
            ) as response:
                await response.read()
                return response.status, response.headers.get("Retry-After", "")

        results = await asyncio.gather(*(one() for _ in range(300)))
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 100
    assert statuses.count(429) == 200
    assert {retry for status, retry in results if status == 429} == {"60"}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("ok", 200),
        ("upstream_404", 404),
        ("upstream_500", 500),
        ("scope", 403),
        ("allowlist", 403),
        ("rate_limited", 429),
        ("upstream_down", 502),
    ],
)
async def test_every_authenticated_response_carries_the_rate_limit_headers(
    start_gateway: GatewayFactory, config: Config, seed: Seed, case: str, expected: int
) -> None:
    dead_upstream = "http://127.0.0.1:9" if case == "upstream_down" else None
    gateway = await start_gateway(limits_config(config, dead_upstream, per_minute=50))
    options: dict[str, Any] = {
        "scope": {"permissions": ["reports:read"]},
        "allowlist": {"ip_allowlist": ["10.0.0.0/8"]},
        "rate_limited": {"rate_limit_per_minute": 1},
    }.get(case, {})
    key = await seed.key(**options)
    path = {"upstream_404": "/v1/status/404", "upstream_500": "/v1/status/500"}.get(
        case, "/v1/customers"
    )
    if case == "rate_limited":
        assert (await get(gateway, key.key)).status == 200
    response = await get(gateway, key.key, path)
    assert response.status == expected
    headers = response.headers
    assert int(headers["X-RateLimit-Limit"]) > 0
    assert int(headers["X-RateLimit-Remaining"]) >= 0
    assert int(headers["X-RateLimit-Reset"]) >= 0
    policy, state = parse_fields(headers)
    assert set(policy) == set(state) == {"minute", "day"}
    assert policy["minute"]["w"] == 60 and policy["day"]["w"] == 86400
    assert all(isinstance(state[w]["r"], int) and state[w]["t"] >= 0 for w in state)
    if expected == 429:
        assert response.headers["Retry-After"] == headers["X-RateLimit-Reset"]


async def test_refusals_before_authentication_carry_no_rate_limit_headers(
    gateway: TestServer, seed: Seed
) -> None:
    key = await seed.key()
    wrong, _ = seed.store.format.generate(key.public_id)
    for token in (wrong, "not-a-key"):
        response = await get(gateway, token)
        assert response.status == 401
        assert "RateLimit" not in response.headers
        assert "X-RateLimit-Limit" not in response.headers


async def test_every_forwarded_request_counts_whatever_the_upstream_answers(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    """Upstream 2xx, 4xx and 5xx all count; a 403 refused before the limit step does not."""
    gateway = await start_gateway(limits_config(config, per_minute=10))
    key = await seed.key(permissions=["customers:read", "test:any"])
    remaining = []
    for path in ("/v1/customers", "/v1/status/404", "/v1/status/503", "/v1/reports/mrr"):
        response = await get(gateway, key.key, path)
        remaining.append(response.headers["X-RateLimit-Remaining"])
    assert remaining == ["9", "8", "7", "7"]


async def test_429_names_the_window_and_its_retry_after_is_accurate(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    clock = FakeClock(MIDNIGHT + 300.25)
    gateway = await start_gateway(limits_config(config), clock)
    key = await seed.key(rate_limit_per_minute=3)
    assert [(await get(gateway, key.key)).status for _ in range(3)] == [200] * 3
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.make_url("/v1/customers"), headers=bearer(key.key)) as r:
            body = await r.json()
            status, retry_after = r.status, int(r.headers["Retry-After"])
    assert status == 429
    assert body["error"]["code"] == "rate_limited"
    assert "minute" in body["error"]["message"]
    assert retry_after == 60
    clock.advance(retry_after - 1)
    assert (await get(gateway, key.key)).status == 429
    clock.advance(1)
    assert (await get(gateway, key.key)).status == 200


async def test_rate_limited_requests_are_counted_by_window(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    gateway = await start_gateway(limits_config(config), FakeClock(MIDNIGHT + 90))
    minute_key = await seed.key(rate_limit_per_minute=1)
    day_key = await seed.key(rate_limit_per_day=1)
    before = {w: sample("gateway_rate_limited_total", window=w) for w in ("minute", "day")}
    for key in (minute_key, day_key):
        assert [(await get(gateway, key.key)).status for _ in range(3)] == [200, 429, 429]
    after = {w: sample("gateway_rate_limited_total", window=w) for w in ("minute", "day")}
    assert {w: after[w] - before[w] for w in after} == {"minute": 2, "day": 2}


# -- Postgres: one statement per sync, restarts, outages -------------------------------


async def test_one_sync_is_one_statement_for_every_key(
    start_gateway: GatewayFactory, config: Config, seed: Seed, db: asyncpg.Connection
) -> None:
    gateway = await start_gateway(limits_config(config, sync_interval_seconds=3600))
    account = await seed.account()
    keys = [await seed.key(account, name=f"k{i}") for i in range(10)]
    for key in keys:
        for _ in range(4):
            assert (await get(gateway, key.key)).status == 200
    await db.execute(
        """
        CREATE TABLE counter_statements (at timestamptz DEFAULT now());
        CREATE FUNCTION log_counter_statement() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO counter_statements DEFAULT VALUES; RETURN NULL; END $$;
        CREATE TRIGGER count_counter_statements AFTER INSERT ON rate_limit_counters
            FOR EACH STATEMENT EXECUTE FUNCTION log_counter_statement();
        """
    )
    assert await gateway.app[LIMITER].sync()
    assert await db.fetchval("SELECT count(*) FROM counter_statements") == 1
    rows = await db.fetch(
        "SELECT key_id, window_name, sum(count)::int AS n FROM rate_limit_counters"
        " GROUP BY key_id, window_name"
    )
    assert (
        sorted((r["window_name"], r["n"]) for r in rows) == [("day", 4)] * 10 + [("minute", 4)] * 10
    )


async def test_a_day_the_clock_stepped_back_from_is_written_to_that_day(
    start_gateway: GatewayFactory, config: Config, seed: Seed, db: asyncpg.Connection
) -> None:
    """Requests counted on a day the clock then stepped back from (over midnight) wait
    for the clock to reach that day again; they never land on the day before."""
    clock = FakeClock(MIDNIGHT + 5.5)  # 00:00:05
    gateway = await start_gateway(limits_config(config, sync_interval_seconds=3600), clock)
    limiter = gateway.app[LIMITER]
    key = await seed.key()

    async def day_rows() -> list[tuple[float, int]]:
        rows = await db.fetch(
            "SELECT extract(epoch FROM window_start)::float8 AS day, count"
            " FROM rate_limit_counters WHERE key_id = $1 AND window_name = 'day'",
            key.id,
        )
        return [(r["day"], r["count"]) for r in rows]

    assert await statuses(gateway, key.key, 3) == [200] * 3
    clock.advance(-10)  # 23:59:55 the day before
    assert await limiter.sync()
    assert await day_rows() == []
    assert limiter.pending == 3
    clock.advance(10)
    assert await limiter.sync()
    assert await day_rows() == [(MIDNIGHT, 3)]
    assert limiter.pending == 0


async def statuses(gateway: TestServer, key: str, n: int) -> list[int]:
    """The statuses of `n` requests in a row with `key`."""
    return [(await get(gateway, key)).status for _ in range(n)]


async def test_two_gateways_on_one_database_share_the_budget(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    """Each learns the other's count at its sync; one that takes the key up again decides
    on its older view until its next sync, which then stops it."""
    clock = FakeClock(MIDNIGHT + 1234.5)
    slow = limits_config(config, sync_interval_seconds=3600)
    first, second = await start_gateway(slow, clock), await start_gateway(slow, clock)
    key = await seed.key(rate_limit_per_minute=10)

    async def sync(gateway: TestServer) -> None:
        assert await gateway.app[LIMITER].sync()

    assert await statuses(second, key.key, 1) == [200]
    assert await statuses(first, key.key, 6) == [200] * 6
    await sync(first)
    await sync(second)  # writes its 1, learns the first's 6
    assert await statuses(second, key.key, 5) == [200] * 3 + [429] * 2  # 10 in all
    await sync(second)
    await sync(first)  # served nothing since its last sync: reads nothing back
    # Taking the key up again, the first still sees 6 of 10: one interval of its own
    # admissions is the overshoot (docs/rate-limits.md: limit + P x R x T at worst).
    assert await statuses(first, key.key, 1) == [200]
    await sync(first)  # learns the second's 4
    assert await statuses(first, key.key, 3) == [429] * 3
    await sync(second)  # learns the first's 7
    assert await statuses(second, key.key, 1) == [429]


async def test_one_process_stays_exact_when_a_read_bucket_holds_older_requests(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    """Postgres keeps the minute in 10-second buckets, so a sync reads back up to 69
    seconds. Requests of this process that left its minute but sit in a bucket still read
    must not come back as another process's."""
    clock = FakeClock(MIDNIGHT + 1230.5)  # the first second of a bucket
    gateway = await start_gateway(limits_config(config, sync_interval_seconds=3600), clock)
    key = await seed.key(rate_limit_per_minute=5)

    assert await statuses(gateway, key.key, 6) == [200] * 5 + [429]
    assert await gateway.app[LIMITER].sync()
    clock.advance(60)  # those five left the minute; their bucket (1230-1239) is still read
    assert await statuses(gateway, key.key, 1) == [200]
    assert await gateway.app[LIMITER].sync()  # reads back 5 + 1, all this process's
    assert await statuses(gateway, key.key, 5) == [200] * 4 + [429]


async def test_another_process_counts_fully_once_older_buckets_are_no_longer_read(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    """The seconds kept for the bucket arithmetic go once their bucket is out of reach:
    kept longer, they would hide the other process's requests."""
    clock = FakeClock(MIDNIGHT + 1230.5)
    slow = limits_config(config, sync_interval_seconds=3600)
    first, second = await start_gateway(slow, clock), await start_gateway(slow, clock)
    key = await seed.key(rate_limit_per_minute=5)

    assert await statuses(first, key.key, 5) == [200] * 5
    assert await first.app[LIMITER].sync()
    clock.advance(70)  # the bucket of those five is no longer read
    assert await statuses(second, key.key, 3) == [200] * 3
    assert await second.app[LIMITER].sync()
    assert await statuses(first, key.key, 1) == [200]
    assert await first.app[LIMITER].sync()  # learns the second's 3
    assert await statuses(first, key.key, 2) == [200, 429]


async def test_another_process_count_stops_binding_once_its_bucket_is_no_longer_read(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    """A sync returns only keys some other process counted, on the minute or the day. A
    key whose others' count left the read comes back no more (over midnight, their
    requests of the minute are not on the new day), and what this process had learnt of
    it must go."""
    clock = FakeClock(MIDNIGHT - 9.5)  # 23:59:50, the first second of a bucket
    slow = limits_config(config, sync_interval_seconds=3600)
    first, second = await start_gateway(slow, clock), await start_gateway(slow, clock)
    key = await seed.key(rate_limit_per_minute=5)

    assert await statuses(second, key.key, 3) == [200] * 3
    assert await second.app[LIMITER].sync()
    assert await statuses(first, key.key, 1) == [200]
    assert await first.app[LIMITER].sync()  # learns the second's 3
    clock.advance(20)  # 00:00:10, a new day
    assert await statuses(first, key.key, 1) == [200]  # its own 2 and the second's 3
    assert await first.app[LIMITER].sync()  # the second's 3 are still read
    clock.advance(50)  # 00:01:00: their bucket (23:59:50-59) is no longer read
    assert await statuses(first, key.key, 1) == [200]
    assert await first.app[LIMITER].sync()  # nothing of the others comes back
    # Its own two of the last minute (00:00:10, 00:01:00) and three more.
    assert await statuses(first, key.key, 4) == [200] * 3 + [429]


async def test_forgetting_keys_not_used_today_keeps_their_minute_over_midnight(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    """The periodic expiry forgets the keys not used on the new day, but not while their
    requests of the day before still count in the sliding minute: forgotten, they would
    give the key a second burst just after midnight."""
    clock = FakeClock(MIDNIGHT - 20.5)  # 23:59:39.5
    gateway = await start_gateway(limits_config(config, sync_interval_seconds=3600), clock)
    limiter = gateway.app[LIMITER]
    key = await seed.key(rate_limit_per_minute=5)

    assert await statuses(gateway, key.key, 5) == [200] * 5
    assert await limiter.sync()
    clock.advance(30)  # 00:00:09.5: a new day; the five count until 00:00:39
    await limiter.expire()
    refused = await get(gateway, key.key)
    assert (refused.status, refused.headers.get("Retry-After")) == (429, "30")
    clock.advance(29.5)  # 00:00:39
    assert await statuses(gateway, key.key, 6) == [200] * 5 + [429]


async def test_a_sync_returns_only_keys_whose_others_counts_it_does_not_have(
    database_url: str,
) -> None:
    """The store's side of the bargain: Postgres subtracts the process's own counts and
    returns a key only when the others count it in the minute, or the process believes
    they do, or their day count differs from the one it has."""
    day = int(MIDNIGHT)
    second = day + 1234
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        store = PostgresCounters(pool)
        minute_only, day_only, known, alone, night = (uuid.uuid4() for _ in range(5))

        def deltas(
            at: int, *keys: tuple[uuid.UUID, int, tuple[int, int], tuple[int, int]]
        ) -> Deltas:
            batch = Deltas()
            for key_id, n, own, others in keys:
                if n:
                    batch.add_minute(key_id, bucket(at), n)
                batch.add_key(key_id, n, own, others)
            return batch

        # Another process: 2 requests of each key in this minute, on this day.
        other = deltas(second, *((k, 2, (0, 0), (0, 0)) for k in (minute_only, day_only, known)))
        assert await store.sync(other, second, day) == {}
        # This process, 70 s later: the others' bucket is no longer read.
        later = second + 70
        mine = deltas(
            later,
            (minute_only, 1, (0, 0), (2, 2)),  # believes their 2 still in the minute
            (day_only, 1, (0, 0), (0, 0)),  # does not know their day count
            (known, 1, (0, 0), (0, 2)),  # knows it: nothing to send back
            (alone, 1, (0, 0), (0, 0)),  # nobody else ever counted it
        )
        assert await store.sync(mine, later, day) == {minute_only: (0, 2), day_only: (0, 2)}
        # Its own counts are not the others': after its 1 of each, the same belief holds.
        again = deltas(later, *((k, 0, (1, 1), (0, 2)) for k in (minute_only, day_only, known)))
        assert await store.sync(again, later, day) == {}

        # Over midnight: the others' requests of the minute are on the day before.
        midnight = day + DAY
        assert (
            await store.sync(deltas(midnight - 5, (night, 2, (0, 0), (0, 0))), midnight - 5, day)
            == {}
        )
        after = deltas(midnight + 2, (night, 1, (0, 0), (0, 0)))
        assert await store.sync(after, midnight + 2, midnight) == {night: (2, 0)}
    finally:
        await pool.close()


async def test_day_count_survives_a_gateway_restart(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    """60% of the day's quota used, restart: only the remaining 40% passes."""
    clock = FakeClock(MIDNIGHT + 40_000)
    limits = limits_config(config, sync_interval_seconds=3600)  # only the exit sync writes
    key = await seed.key(rate_limit_per_day=10)
    before = await start_gateway(limits, clock)
    assert [(await get(before, key.key)).status for _ in range(6)] == [200] * 6
    await before.close()
    clock.advance(3600)
    after = await start_gateway(limits, clock)
    statuses = [(await get(after, key.key)).status for _ in range(6)]
    assert statuses == [200] * 4 + [429] * 2


async def test_limits_hold_while_postgres_is_down_and_the_counts_reach_it_after(
    start_gateway: GatewayFactory,
    config: Config,
    seed: Seed,
    cluster: Cluster,
    database_url: str,
) -> None:
    clock = FakeClock(MIDNIGHT + 50_000)
    limits = limits_config(config, sync_interval_seconds=3600)
    gateway = await start_gateway(limits, clock)
    key = await seed.key(rate_limit_per_minute=5, rate_limit_per_day=8)
    assert (await get(gateway, key.key)).status == 200  # verified and cached
    limiter = gateway.app[LIMITER]
    assert await limiter.sync()
    cluster.stop()
    try:
        statuses = [(await get(gateway, key.key)).status for _ in range(6)]
        assert statuses == [200] * 4 + [429] * 2
        assert not await limiter.sync()
    finally:
        cluster.start()
    await wait_for(limiter.sync, timeout=15)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT window_name, sum(count)::int AS n FROM rate_limit_counters"
            " WHERE key_id = $1 GROUP BY window_name",
            key.id,
        )
    finally:
        await conn.close()
    assert {r["window_name"]: r["n"] for r in rows} == {"minute": 5, "day": 5}
    clock.advance(120)  # past the minute: only the day's 8 binds
    other = await start_gateway(limits, clock)  # another process on the same database
    statuses = [(await get(other, key.key)).status for _ in range(5)]
    assert statuses == [200] * 3 + [429] * 2


@pytest.mark.parametrize(
    ("values", "setting"),
    [
        ({"per_minute": 0}, "rate_limits.per_minute"),
        ({"per_day": -1}, "rate_limits.per_day"),
        ({"sync_interval_seconds": 0}, "rate_limits.sync_interval_seconds"),
        ({"failed_auth": {"per_ip_per_minute": 0}}, "rate_limits.failed_auth.per_ip_per_minute"),
        ({"failed_auth": {"per_key_per_minute": 0}}, "rate_limits.failed_auth.per_key_per_minute"),
        ({"failed_auth": {"max_tracked": 0}}, "rate_limits.failed_auth.max_tracked"),
        ({"failed_auth": {"per_ip": 5}}, "rate_limits.failed_auth.per_ip"),
    ],
)
def test_bad_rate_limit_settings_name_the_setting(values: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigError, match=f"^{setting}:"):
        make_config("postgresql://localhost/x", rate_limits=values)
