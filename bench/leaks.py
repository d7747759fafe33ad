"""Leaked keys and webhooks, measured on real processes (issue 21's closing figures).

- From a signed secret-scanning POST (a local key pair plays GitHub) to the key being
  refused by two `gateway serve` processes that had it cached: median and max over
  `--runs` keys (the POST's own argon2 verification, with the default OWASP parameters,
  included).
- Webhook delivery latency: events committed at a steady pace through the admin API
  (`PATCH /v1/keys/{id}`, `key.updated`), both processes delivering; latency is from the
  event's timestamp (taken inside its transaction) to its arrival at a local receiver.

Run: `.venv/bin/python bench/leaks.py [--runs 50] [--events 200]` (Postgres embedded
unless DATABASE_URL). Prints a table and writes bench/results/leaks.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.accounts import create_account  # noqa: E402
from gateway.config import DEFAULT_PERMISSIONS, Argon2Config  # noqa: E402
from gateway.db import migrate  # noqa: E402
from gateway.demo_upstream import create_demo_app  # noqa: E402
from gateway.embedded_pg import EmbeddedPostgres, free_port  # noqa: E402
from gateway.keyformat import Hasher, KeyFormat  # noqa: E402
from gateway.keys import KeyStore  # noqa: E402

PERMISSIONS = sorted(DEFAULT_PERMISSIONS)

RESULTS = ROOT / "bench" / "results"
PATH = "/_gateway/secret-scanning/github"


@contextlib.contextmanager
def database() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="gateway-leaks-")) / "pg", fast_unsafe=True)
    pg.start()
    pg.psql("DROP DATABASE IF EXISTS leaks")
    try:
        yield pg.create_database("leaks")
    finally:
        pg.stop()


async def serve_app(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


@contextlib.asynccontextmanager
async def gateways(count: int, env: dict[str, str], log_dir: Path) -> AsyncIterator[list[Any]]:
    started: list[tuple[subprocess.Popen[bytes], int, int]] = []
    try:
        for i in range(count):
            port, admin_port = free_port(), free_port()
            environment = {
                **os.environ,
                **env,
                "GATEWAY__PROXY__PORT": str(port),
                "GATEWAY__ADMIN__PORT": str(admin_port),
            }
            environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
            with open(log_dir / f"gateway-{i}.log", "wb") as log:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "gateway.cli",
                        "--config",
                        str(ROOT / "config.yaml"),
                        "serve",
                    ],
                    env=environment,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            started.append((process, port, admin_port))
        async with aiohttp.ClientSession() as session:
            for process, _, admin_port in started:
                for _ in range(300):
                    assert process.poll() is None, "a gateway exited at start"
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as r:
                            if r.status == 200:
                                break
                    await asyncio.sleep(0.1)
        yield started
    finally:
        for process, _, _ in started:
            process.terminate()
        for process, _, _ in started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


async def main(runs: int, events: int) -> dict[str, Any]:
    with database() as url, tempfile.TemporaryDirectory(prefix="leaks-logs-") as logs:
        conn = await asyncpg.connect(url)
        await migrate(conn)
        await conn.close()
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        store = KeyStore(pool, KeyFormat("gp_"), Hasher(Argon2Config()))
        account = await create_account(pool, store.hasher, "Bench", "bench@example.com")

        github = ec.generate_private_key(ec.SECP256R1())
        pem = (
            github.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        document = {"public_keys": [{"key_identifier": "bench", "key": pem, "is_current": True}]}
        keys_app = web.Application()
        keys_app.router.add_get("/keys", lambda _r: web.json_response(document))
        arrivals: dict[str, float] = {}
        stamps: dict[str, float] = {}
        all_arrived = asyncio.Event()

        async def receive(request: web.Request) -> web.Response:
            body = await request.read()
            arrived = time.time()
            payload = json.loads(body)
            msg = request.headers["webhook-id"]
            arrivals.setdefault(msg, arrived)
            stamps[msg] = dt.datetime.fromisoformat(payload["timestamp"]).timestamp()
            if len(arrivals) >= events:
                all_arrived.set()
            return web.Response(text="ok")

        receiver_app = web.Application()
        receiver_app.router.add_post("/hook", receive)
        runners = [
            await serve_app(create_demo_app()),
            await serve_app(keys_app),
            await serve_app(receiver_app),
        ]
        upstream_port, keys_port, receiver_port = (port for _, port in runners)
        env = {
            "DATABASE_URL": url,
            "GATEWAY__PROXY__UPSTREAM": f"http://127.0.0.1:{upstream_port}",
            "GATEWAY__SECRET_SCANNING__PUBLIC_KEYS_URL": f"http://127.0.0.1:{keys_port}/keys",
            "GATEWAY__WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true",
            "GATEWAY__RATE_LIMITS__PER_MINUTE": "1000000",
            "GATEWAY__RATE_LIMITS__PER_DAY": "100000000",
            "GATEWAY__LOGGING__ACCESS_LOG": "false",
            "GATEWAY_OPERATOR_TOKEN": "",
        }
        results: dict[str, Any] = {}
        try:
            async with gateways(2, env, Path(logs)) as started, aiohttp.ClientSession() as http:
                proxies = [f"http://127.0.0.1:{port}" for _, port, _ in started]
                admin = f"http://127.0.0.1:{started[0][2]}"

                async def status(base: str, key: str) -> int:
                    async with http.get(
                        f"{base}/v1/customers", headers={"Authorization": f"Bearer {key}"}
                    ) as response:
                        await response.read()
                        return response.status

                async def refused(base: str, key: str, started_at: float) -> float:
                    while await status(base, key) != 401:
                        if time.perf_counter() - started_at > 10:
                            raise RuntimeError("the key was not refused within 10 s")
                    return time.perf_counter() - started_at

                # -- leaked keys --------------------------------------------------------
                leak_times: list[float] = []
                for _ in range(runs):
                    key = await store.create(account.account_id, "bench", permissions=PERMISSIONS)
                    for base in proxies:
                        assert await status(base, key.key) == 200
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
                    signature = base64.b64encode(github.sign(body, ec.ECDSA(hashes.SHA256())))
                    headers = {
                        "Github-Public-Key-Identifier": "bench",
                        "Github-Public-Key-Signature": signature.decode(),
                        "Content-Type": "application/json",
                    }
                    started_at = time.perf_counter()
                    async with http.post(f"{proxies[0]}{PATH}", data=body, headers=headers) as r:
                        answer = await r.json()
                        assert answer[0]["label"] == "true_positive", answer
                    times = await asyncio.gather(
                        *(refused(b, key.key, started_at) for b in proxies)
                    )
                    leak_times.append(max(times))
                results["leak_to_refused_on_two_processes"] = summary(leak_times)

                # -- webhooks -------------------------------------------------------------
                auth = {"Authorization": f"Bearer {account.token}"}
                async with http.post(
                    f"{admin}/v1/webhooks",
                    json={
                        "url": f"http://127.0.0.1:{receiver_port}/hook",
                        "events": ["key.updated"],
                    },
                    headers=auth,
                ) as r:
                    assert r.status == 201, await r.text()
                subjects = [
                    await store.create(account.account_id, f"w{i}", permissions=PERMISSIONS)
                    for i in range(10)
                ]
                admins = [f"http://127.0.0.1:{a}" for _, _, a in started]
                sent: list[str] = []
                for i in range(events):
                    key = subjects[i % len(subjects)]
                    async with http.patch(
                        f"{admins[i % 2]}/v1/keys/{key.id}", json={"name": f"n{i}"}, headers=auth
                    ) as r:
                        assert r.status == 200, await r.text()
                    sent.append(str(key.id))
                    await asyncio.sleep(0.05)  # a steady 20 events a second
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_arrived.wait(), 30)
                latencies = [arrivals[m] - stamps[m] for m in arrivals]
                results["webhook_delivery_latency"] = {
                    **summary(latencies),
                    "delivered": len(arrivals),
                    "sent": events,
                }
        finally:
            for runner, _ in runners:
                await runner.cleanup()
            await pool.close()
        return results


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    results = asyncio.run(main(args.runs, args.events))
    results["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    leak, hook = results["leak_to_refused_on_two_processes"], results["webhook_delivery_latency"]
    print(f"{'figure':<48} {'n':>5} {'median':>9} {'p99':>9} {'max':>9}")
    print(
        f"{'signed POST -> refused on 2 processes':<48} {leak['n']:>5} "
        f"{leak['median_ms']:>7} ms {leak['p99_ms']:>6} ms {leak['max_ms']:>6} ms"
    )
    print(
        f"{'webhook: event commit -> received':<48} {hook['n']:>5} "
        f"{hook['median_ms']:>7} ms {hook['p99_ms']:>6} ms {hook['max_ms']:>6} ms"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "leaks.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    cli()
