"""Leaked keys and webhooks scenario: issue 21's closing figures, on two real processes.

- From a signed secret-scanning POST (a local key pair plays GitHub, its public-keys
  document on a local server) to the key being refused by two `gateway serve` processes
  that had it cached: median and max over `Settings.leak_runs` keys, each made with the
  default (OWASP) argon2 parameters, so the POST's own verification is included.
- Webhook delivery latency: `Settings.webhook_events` events committed at a steady 20 a
  second through both processes' admin APIs (`PATCH /v1/keys/{id}`, `key.updated`, ten
  keys in turn), both processes delivering to a local receiver; latency is from the
  event's timestamp (taken inside its transaction) to its arrival: median and p99.

The processes are bench/harness.py's; the account is the bench's (bench/data.py). The
endpoint this scenario registers is removed at its end.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import json
import statistics
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.data import HIGH, PERMISSIONS
from bench.harness import Servers, Settings, url_of
from gateway.config import Argon2Config
from gateway.embedded_pg import free_port
from gateway.keyformat import Hasher, KeyFormat
from gateway.keys import KeyStore

PATH = "/_gateway/secret-scanning/github"
EVENTS_PER_SECOND = 20
SUBJECTS = 10  # keys the webhook events are about, in turn


def run(
    servers: Servers, settings: Settings, url: str, account_id: uuid.UUID, owner_token: str
) -> dict[str, Any]:
    return asyncio.run(
        leaks_and_webhooks(
            servers, url, account_id, owner_token, settings.leak_runs, settings.webhook_events
        )
    )


def summary(values: list[float]) -> dict[str, float]:
    """n, median, p99 and max in ms of `values` in seconds."""
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


class Receiver:
    """The webhook receiver: first arrival and event timestamp of each `webhook-id`."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.stamps: dict[str, float] = {}
        self.expected = 0
        self.all_arrived = asyncio.Event()

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.time()
        msg = request.headers["webhook-id"]
        self.arrivals.setdefault(msg, arrived)
        self.stamps[msg] = dt.datetime.fromisoformat(json.loads(body)["timestamp"]).timestamp()
        if self.expected and len(self.arrivals) >= self.expected:
            self.all_arrived.set()
        return web.Response(text="ok")

    def latencies(self) -> list[float]:
        return [self.arrivals[m] - self.stamps[m] for m in self.arrivals]


async def leaks_and_webhooks(
    servers: Servers,
    url: str,
    account_id: uuid.UUID,
    owner_token: str,
    runs: int,
    events: int,
) -> dict[str, Any]:
    github = ec.generate_private_key(ec.SECP256R1())
    pem = (
        github.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    document = {"public_keys": [{"key_identifier": "bench", "key": pem, "is_current": True}]}

    async def public_keys(_request: web.Request) -> web.Response:
        return web.json_response(document)

    keys_app = web.Application()
    keys_app.router.add_get("/keys", public_keys)
    receiver = Receiver()
    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", receiver.hook)
    runners = [await _serve(keys_app), await _serve(receiver_app)]
    (_, keys_port), (_, receiver_port) = runners
    gateway = functools.partial(
        servers.gateway,
        GATEWAY__SECRET_SCANNING__PUBLIC_KEYS_URL=url_of(keys_port, "/keys"),
        GATEWAY__WEBHOOKS__ALLOW_PRIVATE_TARGETS="true",
    )
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    store = KeyStore(pool, KeyFormat("gp_"), Hasher(Argon2Config()))
    started = []
    try:
        for _ in range(2):
            started.append(await asyncio.to_thread(gateway))
        proxies = [url_of(port) for _, port, _ in started]
        admins = [url_of(admin) for _, _, admin in started]
        async with aiohttp.ClientSession() as http:
            leak = await _leaks(http, store, account_id, github, proxies, runs)
            receiver.expected = events
            hooks = await _webhooks(
                http, store, account_id, owner_token, admins, receiver, receiver_port, events
            )
    finally:
        for process, _, _ in started:
            await asyncio.to_thread(servers.stop, process)
        await pool.close()
        for runner, _ in runners:
            await runner.cleanup()
    return {"leak_to_refused_on_two_processes": leak, "webhook_delivery_latency": hooks}


async def _status(http: aiohttp.ClientSession, base: str, key: str) -> int:
    async with http.get(
        f"{base}/v1/customers", headers={"Authorization": f"Bearer {key}"}
    ) as response:
        await response.read()
        return response.status


async def _leaks(
    http: aiohttp.ClientSession,
    store: KeyStore,
    account_id: uuid.UUID,
    github: ec.EllipticCurvePrivateKey,
    proxies: list[str],
    runs: int,
) -> dict[str, float]:
    """Seconds from each signed POST to the leaked key's first 401 on both processes."""

    async def refused(base: str, key: str, started_at: float) -> float:
        while await _status(http, base, key) != 401:
            if time.perf_counter() - started_at > 10:
                raise SystemExit("bench: a leaked key was still accepted after 10 s")
        return time.perf_counter() - started_at

    times: list[float] = []
    for _ in range(runs):
        key = await store.create(
            account_id,
            "leak",
            rate_limit_per_minute=HIGH,
            rate_limit_per_day=HIGH,
            permissions=PERMISSIONS,
        )
        for base in proxies:  # cached in both
            if await _status(http, base, key.key) != 200:
                raise SystemExit("bench: a new key was refused")
        body = json.dumps(
            [
                {
                    "token": key.key,
                    "type": "growpanel_api_key",
                    "url": "https://example.com/leak",
                    "source": "content",
                }
            ]
        ).encode()
        signature = base64.b64encode(github.sign(body, ec.ECDSA(hashes.SHA256()))).decode()
        headers = {
            "Github-Public-Key-Identifier": "bench",
            "Github-Public-Key-Signature": signature,
            "Content-Type": "application/json",
        }
        started_at = time.perf_counter()
        async with http.post(f"{proxies[0]}{PATH}", data=body, headers=headers) as r:
            answer = await r.json()
            if r.status != 200 or answer[0]["label"] != "true_positive":
                raise SystemExit(f"bench: the leak alert got {r.status} {answer}")
        both = await asyncio.gather(*(refused(base, key.key, started_at) for base in proxies))
        times.append(max(both))
    return summary(times)


async def _webhooks(
    http: aiohttp.ClientSession,
    store: KeyStore,
    account_id: uuid.UUID,
    owner_token: str,
    admins: list[str],
    receiver: Receiver,
    receiver_port: int,
    events: int,
) -> dict[str, float]:
    auth = {"Authorization": f"Bearer {owner_token}"}
    async with http.post(
        f"{admins[0]}/v1/webhooks",
        json={"url": url_of(receiver_port, "/hook"), "events": ["key.updated"]},
        headers=auth,
    ) as r:
        if r.status != 201:
            raise SystemExit(f"bench: registering the webhook got {r.status}")
        endpoint = (await r.json())["id"]
    try:
        subjects = [
            await store.create(account_id, f"hook {i}", permissions=PERMISSIONS)
            for i in range(SUBJECTS)
        ]
        started = time.monotonic()
        for i in range(events):
            key = subjects[i % len(subjects)]
            async with http.patch(
                f"{admins[i % 2]}/v1/keys/{key.id}", json={"name": f"n{i}"}, headers=auth
            ) as r:
                if r.status != 200:
                    raise SystemExit(f"bench: PATCH /v1/keys got {r.status}")
            # a steady pace: event i leaves at started + i / rate
            await asyncio.sleep(max(0.0, started + (i + 1) / EVENTS_PER_SECOND - time.monotonic()))
        try:
            await asyncio.wait_for(receiver.all_arrived.wait(), 30)
        except TimeoutError:
            raise SystemExit(
                f"bench: {len(receiver.arrivals)} of {events} webhooks arrived within 30 s"
            ) from None
    finally:
        async with http.delete(f"{admins[0]}/v1/webhooks/{endpoint}", headers=auth) as r:
            await r.read()
    return {**summary(receiver.latencies()), "sent": events}
