"""SIGTERM under load (SPEC §8): a real `gateway serve` with dozens of requests in flight
is told to stop. Every request it accepted finishes with the upstream's answer (no 5xx,
none cut), the rest are refused at the connection, and after exit 0 the database holds
every last-used time, usage count and rate-limit count of what it served — written by
the shutdown flush alone, since the periodic ones are an hour apart here.

Each request carries its own X-Request-Id (the test client is a trusted proxy), so the
gateway's access log says exactly which requests it accepted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
import uuid

import aiohttp
import asyncpg

from .conftest import Seed
from .helpers import wait_for
from .reliability import NO_LIMITS, Received, StartServe, answer, raw_upstream, serve  # noqa: F401
from .test_faults_postgres import recorded

UPSTREAM_DELAY = 0.3


async def slowish(request: Received, transport: asyncio.Transport) -> None:
    await asyncio.sleep(UPSTREAM_DELAY)
    transport.write(answer(b'{"ok": true}', "200 OK", "Content-Type: application/json"))


@dataclasses.dataclass
class Outcome:
    key: int
    sent_at: float
    started: float
    finished: float
    status: int | None  # None: refused or cut at the connection
    error: str | None = None


async def test_sigterm_under_load_finishes_what_it_accepted_and_flushes_everything(
    serve: StartServe,  # noqa: F811
    seed: Seed,
    database_url: str,
) -> None:
    async with raw_upstream({"/v1/": slowish}) as upstream:
        gateway = await serve(
            upstream.url,
            **NO_LIMITS,
            GATEWAY__PROXY__TRUSTED_PROXIES="[127.0.0.1]",
            GATEWAY__USAGE__FLUSH_INTERVAL_SECONDS="3600",
            GATEWAY__RATE_LIMITS__SYNC_INTERVAL_SECONDS="3600",
        )
        account = await seed.account()
        keys = [await seed.key(account, name=f"k{i}") for i in range(10)]
        outcomes: dict[str, Outcome] = {}
        stop = asyncio.Event()

        async def client(n: int) -> None:
            # One keep-alive connection per client, as real integrations hold them.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
                while not stop.is_set():
                    index = n % len(keys)
                    request_id = uuid.uuid4().hex
                    outcome = Outcome(index, time.time(), time.monotonic(), 0.0, None)
                    outcomes[request_id] = outcome
                    headers = {
                        "Authorization": f"Bearer {keys[index].key}",
                        "X-Request-Id": request_id,
                    }
                    try:
                        async with s.get(f"{gateway.proxy_url}/v1/customers", headers=headers) as r:
                            await r.read()
                            outcome.status = r.status
                    except aiohttp.ClientError as exc:
                        outcome.error = type(exc).__name__
                        await asyncio.sleep(0.05)
                    outcome.finished = time.monotonic()
                    if gateway.process.poll() is not None:
                        return

        clients = [asyncio.create_task(client(n)) for n in range(40)]
        try:
            await wait_for(lambda: sum(o.status == 200 for o in outcomes.values()) >= 150, 30)
            sigterm_at = time.monotonic()
            gateway.process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(gateway.process.wait, 30)
        finally:
            stop.set()
            await asyncio.gather(*clients)
    assert code == 0
    assert gateway.trouble() == []

    logged = {
        line["request_id"]: line["status"]
        for line in gateway.log_lines()
        if line.get("logger") == "gateway.access" and line["request_id"] in outcomes
    }
    statuses = {o.status for o in outcomes.values()}
    assert statuses <= {200, None}, f"answers other than 200: {statuses}"
    for request_id, outcome in outcomes.items():
        if request_id in logged:  # accepted: it must have finished, with its answer
            assert logged[request_id] == 200, (request_id, logged[request_id])
            assert outcome.status == 200, (request_id, outcome)
        else:  # never accepted: refused at the connection
            assert outcome.status is None, (request_id, outcome)
    in_flight = [
        o for o in outcomes.values() if o.started < sigterm_at < o.finished and o.status == 200
    ]
    assert len(in_flight) >= 10, "SIGTERM should have found requests in flight"
    assert len(logged) == sum(o.status == 200 for o in outcomes.values())

    served = {key.id: 0 for key in keys}
    last: dict[uuid.UUID, float] = {}
    for outcome in outcomes.values():
        if outcome.status == 200:
            key_id = keys[outcome.key].id
            served[key_id] += 1
            last[key_id] = max(last.get(key_id, 0.0), outcome.sent_at)
    conn = await asyncpg.connect(database_url)
    try:
        now = await recorded(conn, list(served))
    finally:
        await conn.close()
    print(
        f"\nSIGTERM: {len(outcomes)} requests, {len(logged)} accepted and answered 200"
        f" ({len(in_flight)} in flight at the signal), {len(outcomes) - len(logged)}"
        f" refused at the connection; recorded {sum(now['usage'].values())} usage counts,"
        f" {sum(now['day'].values())} day counts"
    )
    assert now["usage"] == served
    assert now["day"] == served
    for key_id, sent_at in last.items():
        assert sent_at - 0.01 <= now["last_used"][key_id] <= sent_at + UPSTREAM_DELAY + 5
