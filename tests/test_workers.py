"""`gateway serve --workers 2`: two proxy processes on one port, supervised by a third."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.embedded_pg import free_port
from gateway.workers import STABLE_AFTER_SECONDS, RestartPause, Supervisor, _catches

from . import secret_scan
from .conftest import Seed
from .helpers import gateway_command, served_config_file, wait_for
from .reliability import Served, StartServe, serve  # noqa: F401


def access_pids(served: Served) -> set[int]:
    return {line["pid"] for line in served.log_lines() if line["logger"] == "gateway.access"}


@pytest.fixture
async def workers(serve: StartServe, upstream: TestServer) -> Served:  # noqa: F811
    # Only the shutdown flush writes last_used within these tests.
    return await serve(
        str(upstream.make_url("")).rstrip("/"),
        workers=2,
        GATEWAY__USAGE__FLUSH_INTERVAL_SECONDS="3600",
    )


async def fresh_connection_status(base: str, key: str, path: str = "/v1/customers") -> int:
    """One request on a new connection, so SO_REUSEPORT may pick either worker."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async with s.get(f"{base}{path}", headers={"Authorization": f"Bearer {key}"}) as r:
            await r.read()
            return r.status


async def spread(workers: Served, key: str, count: int = 40) -> list[int]:
    return [await fresh_connection_status(workers.proxy_url, key) for _ in range(count)]


async def stop(workers: Served) -> int:
    workers.process.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(workers.process.wait, 30)


async def test_one_scrape_sums_every_worker(workers: Served, seed: Seed) -> None:
    key = await seed.key()
    statuses = await spread(workers, key.key, 60)
    assert statuses == [200] * 60
    families = {}

    async def all_counted() -> bool:
        # Each worker folds its per-request counts into the shared files once a second.
        nonlocal families
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{workers.admin_url}/metrics") as response:
                text = await response.text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        ok = sum(
            s.value
            for s in families["gateway_requests"].samples
            if s.name == "gateway_requests_total" and s.labels["outcome"] == "ok"
        )
        assert ok <= 60
        return ok == 60

    await wait_for(all_counted, timeout=5)
    connected = sum(s.value for s in families["gateway_listener_connected"].samples)
    assert connected == 2
    await stop(workers)
    assert len(access_pids(workers)) == 2, "both workers should have served requests"


async def test_revocation_reaches_both_workers(workers: Served, seed: Seed) -> None:
    account = await seed.account()
    key = await seed.key(account)
    assert await spread(workers, key.key) == [200] * 40
    assert await seed.store.delete(account.account_id, key.id)

    async def refused_everywhere() -> bool:
        return set(await spread(workers, key.key, 10)) == {401}

    await wait_for(refused_everywhere, timeout=2)
    await stop(workers)
    assert len(access_pids(workers)) == 2


async def test_both_workers_flush_last_used_on_sigterm(
    workers: Served, seed: Seed, db: asyncpg.Connection
) -> None:
    account = await seed.account()
    keys = [await seed.key(account, name=f"k{i}") for i in range(20)]
    for key in keys:
        assert await fresh_connection_status(workers.proxy_url, key.key) == 200
    assert (
        await db.fetchval(
            "SELECT count(*) FROM api_keys k JOIN api_key_last_used l ON l.key_id = k.id"
            " WHERE k.account_id = $1",
            account.account_id,
        )
        == 0
    )
    assert await stop(workers) == 0
    assert len(access_pids(workers)) == 2
    assert (
        await db.fetchval(
            "SELECT count(*) FROM api_keys k JOIN api_key_last_used l ON l.key_id = k.id"
            " WHERE k.account_id = $1",
            account.account_id,
        )
        == 20
    )


async def test_one_scrape_shows_what_the_supervisor_counts(
    serve: StartServe,  # noqa: F811
    upstream: TestServer,
) -> None:
    """The admin listener runs in the supervisor: its requests, key events and pool are
    in the same scrape as the workers' metrics."""
    from .test_admin_support import OPERATOR_TOKEN

    served = await serve(
        str(upstream.make_url("")).rstrip("/"), workers=2, GATEWAY_OPERATOR_TOKEN=OPERATOR_TOKEN
    )
    async with aiohttp.ClientSession(base_url=served.admin_url) as session:
        async with session.post(
            "/v1/accounts",
            json={"name": "Acme", "owner_email": "owner@acme.io"},
            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
        ) as response:
            assert response.status == 201, await response.text()
            owner = (await response.json())["token"]
        secret_scan.register(owner)
        async with session.post(
            "/v1/keys", json={"name": "k"}, headers={"Authorization": f"Bearer {owner}"}
        ) as response:
            assert response.status == 201, await response.text()
            secret_scan.register((await response.json())["key"])
    metrics = await served.metrics()
    assert metrics[("gateway_key_lifecycle_events_total", (("event", "created"),))] == 1
    assert any(
        name == "gateway_admin_requests_total" and dict(labels)["route"] == "/v1/keys"
        for name, labels in metrics
    )
    # Sampled once a second (and the admin pool may have no connection yet): present.
    assert ("gateway_db_pool_connections", (("pool", "admin"),)) in metrics
    assert ("gateway_db_pool_connections", (("pool", "proxy"),)) in metrics
    assert await stop(served) == 0


def test_the_command_imports_prometheus_client_only_when_told_where_to_write() -> None:
    """prometheus-client picks its mode at import: `gateway.cli` must leave it unimported
    until `serve --workers N` has set PROMETHEUS_MULTIPROC_DIR."""
    code = "import sys, gateway.cli; print('prometheus_client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


async def test_a_dead_worker_is_started_again_and_logged(workers: Served, seed: Seed) -> None:
    started = [line for line in workers.log_lines() if line["message"] == "worker started"]
    assert len(started) == 2
    os.kill(started[0]["worker_pid"], signal.SIGKILL)

    def restarted() -> bool:
        lines = workers.log_lines()
        return any(line["message"] == "worker exited; starting it again" for line in lines) and (
            len([line for line in lines if line["message"] == "worker started"]) == 3
        )

    await wait_for(restarted, timeout=15)
    key = await seed.key()

    async def serving() -> bool:
        try:
            return set(await spread(workers, key.key, 10)) == {200}
        except aiohttp.ClientConnectionError:
            return False

    await wait_for(serving, timeout=15)
    assert await stop(workers) == 0


@pytest.mark.parametrize("held", ["port", "verify_port"])
def test_a_port_another_process_holds_stops_the_start_with_one_line(
    database_url: str, tmp_path: Any, held: str
) -> None:
    """As one process does: exit 1 naming the address, not workers that fail to bind and
    are started again for ever."""
    with socket.socket() as holder:  # no SO_REUSEPORT: the port is not to be shared
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports = {"port": str(free_port()), "verify_port": str(free_port()), held: str(taken)}
        environment = {
            **os.environ,
            "DATABASE_URL": database_url,
            "GATEWAY__PROXY__HOST": "127.0.0.1",
            "GATEWAY__PROXY__PORT": ports["port"],
            "GATEWAY__PROXY__VERIFY_PORT": ports["verify_port"],
            "GATEWAY__ADMIN__PORT": str(free_port()),
        }
        environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
        done = subprocess.run(
            gateway_command("--config", "/dev/null", "serve", "--workers", "2"),
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    assert done.returncode == 1, done.stderr[-2000:]
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("gateway:")]
    assert f"127.0.0.1:{taken}" in line or str(taken) in line
    assert "worker exited" not in done.stdout


def test_restart_pause_doubles_while_a_worker_keeps_dying_and_resets_once_it_lived() -> None:
    pause = RestartPause(first=0.5, longest=30.0)
    assert [pause.after(lived=0.1) for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert pause.after(lived=STABLE_AFTER_SECONDS) == 0.5
    assert pause.after(lived=0.1) == 1
    assert pause.after(lived=STABLE_AFTER_SECONDS + 3600) == 0.5


def logged(served: Served, message: str) -> list[dict[str, Any]]:
    return [line for line in served.log_lines() if line["message"] == message]


@pytest.mark.parametrize("count", [1, 2])
async def test_sighup_during_start_up_is_ignored(
    serve: StartServe,  # noqa: F811
    upstream: TestServer,
    count: int,
) -> None:
    """A reload (SIGHUP) soon after start, before the handler exists, does not stop it."""

    async def reload_while_starting(served: Served) -> None:
        await wait_for(lambda: logged(served, "configuration loaded"), interval=0.002)
        served.process.send_signal(signal.SIGHUP)

    served = await serve(
        str(upstream.make_url("")).rstrip("/"), workers=count, starting=reload_while_starting
    )
    assert await stop(served) == 0


async def test_sighup_spares_a_worker_still_starting(workers: Served, seed: Seed) -> None:
    """The supervisor passes SIGHUP on only to workers that have installed its handler."""
    os.kill(logged(workers, "worker started")[0]["worker_pid"], signal.SIGKILL)
    await wait_for(lambda: len(logged(workers, "worker started")) == 3, interval=0.002)
    workers.process.send_signal(signal.SIGHUP)  # the new worker is still importing
    new_pid = logged(workers, "worker started")[2]["worker_pid"]
    key = await seed.key()

    async def new_worker_serving() -> bool:
        assert len(logged(workers, "worker exited; starting it again")) == 1, "SIGHUP killed it"
        try:
            assert set(await spread(workers, key.key, 4)) == {200}
        except aiohttp.ClientConnectionError:
            return False
        return new_pid in access_pids(workers)

    await wait_for(new_worker_serving, timeout=15, interval=0.2)
    assert await stop(workers) == 0


async def test_workers_stop_when_their_supervisor_is_killed(workers: Served) -> None:
    """A supervisor killed with SIGKILL leaves no worker serving on the shared port."""
    started = [
        line["worker_pid"] for line in workers.log_lines() if line["message"] == "worker started"
    ]
    assert len(started) == 2
    workers.process.kill()
    await asyncio.to_thread(workers.process.wait, 10)

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie until reaped by init: exited all the same.
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("Z")

    await wait_for(lambda: all(gone(pid) for pid in started), timeout=20)


async def test_every_worker_serves_the_verify_listener_and_stops_cleanly(
    serve: StartServe,  # noqa: F811
    upstream: TestServer,
    seed: Seed,
) -> None:
    """`proxy.verify_port` with `--workers 2`: both workers answer verify requests on the
    shared port (each logs the decisions it made), and SIGTERM stops them with exit 0."""
    verify_port = free_port()
    served = await serve(
        str(upstream.make_url("")).rstrip("/"),
        workers=2,
        GATEWAY__PROXY__VERIFY_PORT=str(verify_port),
        GATEWAY__PROXY__TRUSTED_PROXIES="[127.0.0.1/32]",
    )
    key = await seed.key()
    headers = {
        "Authorization": f"Bearer {key.key}",
        "X-Original-Method": "GET",
        "X-Original-URI": "/v1/customers",
    }
    url = f"http://127.0.0.1:{verify_port}/_gateway/verify"

    async def verified_by_both() -> bool:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for _ in range(10):
                async with s.get(url, headers=headers) as response:
                    assert response.status == 200, await response.text()
                    assert response.headers["X-GrowPanel-Key-Id"] == str(key.id)
        return len(access_pids(served)) == 2

    await wait_for(verified_by_both, timeout=20)
    assert await stop(served) == 0
    assert "Traceback" not in served.logs()


class StopAsARestartBegins(Supervisor):
    """A supervisor whose stop() begins (SIGTERM) just as it starts a dead worker again."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.stopping: asyncio.Task[None] | None = None

    async def _spawn(self, slot: int) -> None:
        if self._tasks and self.stopping is None:  # a restart, not the first start
            self.stopping = asyncio.create_task(self.stop())
        await super()._spawn(slot)


async def test_a_worker_restarted_as_the_stop_begins_does_not_outlive_it() -> None:
    """SIGTERM while a dead worker is being started again: stop() ends every worker,
    the one being started too, instead of leaving it running unsupervised."""
    supervisor = StopAsARestartBegins(2, ["demo-upstream", "--port", "0"], 5.0)
    await supervisor.start()
    try:
        await wait_for(
            lambda: all(_catches(p.pid, signal.SIGTERM) for p in supervisor.children.values()),
            timeout=15,
        )
        supervisor.children[0].kill()
        await wait_for(lambda: supervisor.stopping is not None, timeout=15)
        assert supervisor.stopping is not None
        await asyncio.wait_for(supervisor.stopping, 30)
        assert supervisor.alive() == 0
    finally:
        for process in supervisor.children.values():
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_workers_with_the_proxy_turned_off_serve_the_admin_alone(
    database_url: str, tmp_path: Any
) -> None:
    """`--workers N` runs the proxy in N processes: with `proxy.enabled: false` there is
    no proxy to run, so no worker is started and the admin listener is ready."""
    admin_port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "GATEWAY__PROXY__ENABLED": "false",
        "GATEWAY__ADMIN__PORT": str(admin_port),
        "GATEWAY__LOGGING__FORMAT": "json",
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            gateway_command("--config", str(served_config_file()), "serve", "--workers", "2"),
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:

        async def ready() -> bool:
            assert process.poll() is None, log_path.read_text()
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as response:
                        return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_for(ready, timeout=30)
        assert '"worker started"' not in log_path.read_text()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{admin_port}/metrics") as response:
                assert response.status == 200
                assert "gateway_proxy_processes 0.0" in await response.text()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
