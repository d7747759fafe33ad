"""Two `gateway serve` replicas behind a real HAProxy running deploy/haproxy/haproxy.cfg:
the client's address (not one it forged) reaches the access log and key allowlists,
HAProxy checks readiness on `/_gateway/ready`, and a rolling restart under load loses no
request.

Addresses: HAProxy listens on 127.0.0.1 and reaches the replicas from 127.0.0.1 (the
replicas' one trusted proxy); clients connect from other loopback addresses (127.0.0.3,
127.0.0.4), so "the client's IP" and "the balancer's IP" differ as they would in
production.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.embedded_pg import free_port

from .conftest import Seed
from .helpers import wait_for
from .reliability import NO_LIMITS
from .topology import DEPLOY, Daemon, Replica, require

CLIENT = "127.0.0.3"
OTHER_CLIENT = "127.0.0.4"


class Balanced:
    def __init__(self, haproxy: Daemon, port: int, stats_port: int, replicas: list[Replica]):
        self.haproxy = haproxy
        self.url = f"http://127.0.0.1:{port}"
        self.stats_url = f"http://127.0.0.1:{stats_port}/stats;csv"
        self.replicas = replicas

    async def server_states(self) -> dict[str, str]:
        async with aiohttp.ClientSession() as session:
            async with session.get(self.stats_url) as response:
                text = await response.text()
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == "gateways"}

    async def wait_state(self, server: str, state: str, timeout: float = 20) -> None:
        async def reached() -> bool:
            assert self.haproxy.alive(), self.haproxy.logs()
            try:
                return (await self.server_states()).get(server) == state
            except aiohttp.ClientConnectionError:
                return False  # still starting

        await wait_for(reached, timeout=timeout, interval=0.05)


def session_from(address: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


@contextlib.asynccontextmanager
async def haproxy_over_replicas(
    database_url: str, upstreams: tuple[str, str], tmp_path: Path
) -> AsyncIterator[Balanced]:
    """deploy/haproxy/haproxy.cfg in front of two replicas, both UP; replica i forwards to
    `upstreams[i]`."""
    haproxy_bin = require("haproxy", "haproxy")
    env = {
        "DATABASE_URL": database_url,
        "GATEWAY__PROXY__TRUSTED_PROXIES": "[127.0.0.1/32]",
        **NO_LIMITS,
    }
    replicas = [
        Replica(f"replica{i}", {**env, "GATEWAY__PROXY__UPSTREAM": url}, tmp_path)
        for i, url in enumerate(upstreams, start=1)
    ]
    port, stats_port = free_port(), free_port()
    haproxy_env = {
        "PATH": "/usr/bin:/bin",
        "GATEWAY_LB_BIND": f"127.0.0.1:{port}",
        "GATEWAY_REPLICA_1": f"127.0.0.1:{replicas[0].proxy_port}",
        "GATEWAY_REPLICA_2": f"127.0.0.1:{replicas[1].proxy_port}",
        "HAPROXY_STATS_BIND": f"127.0.0.1:{stats_port}",
    }
    haproxy = None
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            await replica.wait_ready()
        haproxy = Daemon(
            [haproxy_bin, "-db", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")],
            tmp_path / "haproxy.log",
            env=haproxy_env,
        )
        lb = Balanced(haproxy, port, stats_port, replicas)

        async def up() -> bool:
            assert haproxy is not None and haproxy.alive(), haproxy.logs()
            try:
                states = await lb.server_states()
            except aiohttp.ClientConnectionError:
                return False
            return states == {"replica1": "UP", "replica2": "UP", "BACKEND": "UP"}

        await wait_for(up, timeout=20, interval=0.05)
        yield lb
    finally:
        if haproxy is not None:
            haproxy.stop()
        for replica in replicas:
            replica.kill()


@pytest.fixture
async def balanced(
    database_url: str, upstream: TestServer, tmp_path: Path
) -> AsyncIterator[Balanced]:
    url = str(upstream.make_url("")).rstrip("/")
    async with haproxy_over_replicas(database_url, (url, url), tmp_path) as lb:
        yield lb


async def test_client_ip_through_haproxy_reaches_access_log_and_allowlist(
    balanced: Balanced, seed: Seed
) -> None:
    account = await seed.account()
    key = await seed.key(account)
    pinned = await seed.key(account, name="pinned", ip_allowlist=[f"{CLIENT}/32"])
    forged = "203.0.113.9"
    async with session_from(CLIENT) as session:
        for _ in range(4):  # both replicas
            async with session.get(
                f"{balanced.url}/v1/customers",
                headers={"Authorization": f"Bearer {key.key}", "X-Forwarded-For": forged},
            ) as response:
                assert response.status == 200
        async with session.get(
            f"{balanced.url}/v1/customers", headers={"Authorization": f"Bearer {pinned.key}"}
        ) as response:
            assert response.status == 200
    async with session_from(OTHER_CLIENT) as session:
        async with session.get(
            f"{balanced.url}/v1/customers",
            headers={"Authorization": f"Bearer {pinned.key}", "X-Forwarded-For": CLIENT},
        ) as response:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "ip_not_allowed"

    async def logged() -> bool:
        return sum(len(r.access_lines()) for r in balanced.replicas) >= 6

    await wait_for(logged, timeout=10)
    lines = [line for r in balanced.replicas for line in r.access_lines()]
    assert all(r.access_lines() for r in balanced.replicas), "both replicas served"
    assert {line["client_ip"] for line in lines} == {CLIENT, OTHER_CLIENT}
    assert [line["status"] for line in lines if line["client_ip"] == OTHER_CLIENT] == [403]


async def test_haproxy_health_checks_readiness_and_takes_a_stopping_replica_out(
    balanced: Balanced,
) -> None:
    async with session_from(CLIENT) as session:
        async with session.get(f"{balanced.url}/_gateway/ready") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ready"}
    first = balanced.replicas[0]
    assert await first.terminate() == 0
    await balanced.wait_state("replica1", "DOWN")
    first.start()
    await balanced.wait_state("replica1", "UP")
    checks = first.logs().count("/_gateway/ready")
    assert checks == 0, "readiness checks are not access-logged as proxied requests"


async def test_rolling_restart_under_load_loses_no_request(balanced: Balanced, seed: Seed) -> None:
    key = await seed.key()
    headers = {"Authorization": f"Bearer {key.key}"}
    sent = 0
    failures: list[str] = []
    stop = asyncio.Event()
    deadline = time.monotonic() + 90  # bounded in time and in count
    max_requests = 30_000

    async def client() -> None:
        nonlocal sent
        async with session_from(CLIENT) as session:
            while not stop.is_set() and sent < max_requests and time.monotonic() < deadline:
                sent += 1
                try:
                    async with session.get(
                        f"{balanced.url}/v1/customers", headers=headers
                    ) as response:
                        await response.read()
                        if response.status != 200:
                            failures.append(f"{response.status} {await response.text()}")
                except aiohttp.ClientError as exc:
                    failures.append(repr(exc))

    clients = [asyncio.create_task(client()) for _ in range(4)]
    try:
        await wait_for(lambda: sent >= 100, timeout=20)
        for name, replica in zip(("replica1", "replica2"), balanced.replicas, strict=True):
            before = sent
            assert await replica.terminate() == 0
            await balanced.wait_state(name, "DOWN")
            replica.start()
            await replica.wait_ready()
            await balanced.wait_state(name, "UP")
            # Traffic kept flowing through the other replica meanwhile.
            assert sent > before
        after_restarts = sent
        await wait_for(lambda: sent >= after_restarts + 100, timeout=20)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    print(f"\nrolling restart through HAProxy: {sent} requests sent, {len(failures)} failed")
    assert sent < max_requests and time.monotonic() < deadline, "load ran out of bounds"
    assert failures == [], failures[:5]


async def test_a_post_a_replica_took_is_not_replayed_on_the_other_when_it_dies(
    database_url: str, seed: Seed, tmp_path: Path
) -> None:
    """A replica that dies after forwarding a POST leaves the client a 502, not a second
    POST upstream through the other replica (HAProxy's retry-on empty-response)."""
    received: list[str] = []  # which replica forwarded each POST
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def import_data(request: web.Request) -> web.Response:
        received.append(request.match_info["replica"])
        arrived.set()
        if len(received) == 1:
            await release.wait()  # the first is held until its replica is gone
        return web.json_response({"imported": True})

    app = web.Application()
    app.router.add_post("/{replica}/v1/data/{tail:.*}", import_data)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    base = str(upstream.make_url("")).rstrip("/")
    try:
        async with haproxy_over_replicas(
            database_url, (f"{base}/replica1", f"{base}/replica2"), tmp_path
        ) as lb:
            key = await seed.key()
            async with session_from(CLIENT) as session:
                posting = asyncio.create_task(
                    session.post(
                        f"{lb.url}/v1/data/import",
                        json={"rows": 1},
                        headers={"Authorization": f"Bearer {key.key}"},
                        timeout=aiohttp.ClientTimeout(total=30),
                    )
                )
                await asyncio.wait_for(arrived.wait(), 10)
                (took,) = received
                lb.replicas[int(took.removeprefix("replica")) - 1].kill()  # a crash, OOM
                async with await posting as response:
                    status = response.status
            assert received == [took], "the POST reached the upstream twice"
            assert status in (502, 503)
    finally:
        release.set()
        await upstream.close()


async def test_haproxy_refuses_a_replica_whose_certificate_names_another_host(
    database_url: str, upstream: TestServer, seed: Seed, tmp_path: Path
) -> None:
    """With GATEWAY_REPLICA_CA, a replica must show a certificate for
    GATEWAY_REPLICA_NAME: any other certificate the CA signed (another internal service)
    is not a replica, and gets no request with its key."""
    haproxy_bin = require("haproxy", "haproxy")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    env = {
        "DATABASE_URL": database_url,
        "GATEWAY__PROXY__UPSTREAM": str(upstream.make_url("")).rstrip("/"),
        "GATEWAY__PROXY__TRUSTED_PROXIES": "[127.0.0.1/32]",
    }
    replicas = []
    for name, host in (("replica1", "gateway.internal"), ("replica2", "other.internal")):
        issued = ca.issue_cert("127.0.0.1", host)
        issued.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.pem"))
        issued.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
        replica = Replica(
            name,
            {
                **env,
                "GATEWAY__PROXY__TLS__CERTIFICATE": str(tmp_path / f"{name}.pem"),
                "GATEWAY__PROXY__TLS__KEY": str(tmp_path / f"{name}.key"),
            },
            tmp_path,
        )
        replica.scheme = "https"
        replicas.append(replica)
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    port, stats_port = free_port(), free_port()
    haproxy = None
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            await replica.wait_ready(ssl=trust)
        haproxy = Daemon(
            [haproxy_bin, "-db", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")],
            tmp_path / "haproxy.log",
            env={
                "PATH": "/usr/bin:/bin",
                "GATEWAY_LB_BIND": f"127.0.0.1:{port}",
                "GATEWAY_REPLICA_CA": str(tmp_path / "ca.pem"),
                "GATEWAY_REPLICA_NAME": "gateway.internal",
                "GATEWAY_REPLICA_1": f"127.0.0.1:{replicas[0].proxy_port}",
                "GATEWAY_REPLICA_2": f"127.0.0.1:{replicas[1].proxy_port}",
                "HAPROXY_STATS_BIND": f"127.0.0.1:{stats_port}",
            },
        )
        lb = Balanced(haproxy, port, stats_port, replicas)
        await lb.wait_state("replica2", "DOWN")
        await lb.wait_state("replica1", "UP")
        key = await seed.key()
        async with session_from(CLIENT) as session:
            for _ in range(4):
                async with session.get(
                    f"{lb.url}/v1/customers",
                    headers={"Authorization": f"Bearer {key.key}"},
                ) as response:
                    assert response.status == 200
        assert replicas[1].access_lines() == []
    finally:
        if haproxy is not None:
            haproxy.stop()
        for replica in replicas:
            replica.kill()
