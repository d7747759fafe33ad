"""`make run` (gateway.devrun) run as a new user would, twice: the second run must change
nothing, and a run stops only the Postgres it started itself.

Output goes through pipes, never to files: it holds the secrets the run prints.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from gateway import devrun
from gateway.embedded_pg import EmbeddedPostgres, free_port

from .helpers import FAST_ARGON2


class Run:
    """One `python -m gateway.devrun` in a folder of its own."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.output: list[str] = []

    async def until(self, marker: str, timeout: float = 90) -> str:
        """Read output until a line containing `marker`; all of it so far."""
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    raise AssertionError(f"run ended before {marker!r}:\n{self.text}")
                self.output.append(line.decode(errors="replace"))
                if marker in self.output[-1]:
                    return self.text

    @property
    def text(self) -> str:
        return "".join(self.output)

    async def finish(self, timeout: float = 60) -> int:
        assert self.process.stdout is not None
        rest = await asyncio.wait_for(self.process.stdout.read(), timeout)
        self.output.append(rest.decode(errors="replace"))
        return await asyncio.wait_for(self.process.wait(), timeout)


StartRun = Callable[[], Awaitable[Run]]


@pytest.fixture
def run_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GATEWAY") and k not in ("DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR")
    }
    env.update(
        GATEWAY__PROXY__PORT=str(free_port()),
        GATEWAY__ADMIN__PORT=str(free_port()),
        GATEWAY__KEYS__ARGON2__TIME_COST=str(FAST_ARGON2["time_cost"]),
        GATEWAY__KEYS__ARGON2__MEMORY_KIB=str(FAST_ARGON2["memory_kib"]),
    )
    return env


@pytest.fixture
async def start_run(tmp_path: Path, run_env: dict[str, str]) -> AsyncIterator[StartRun]:
    runs: list[Run] = []

    async def start() -> Run:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.devrun",
            cwd=tmp_path,
            env=run_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        runs.append(Run(process))
        return runs[-1]

    yield start
    for run in runs:
        if run.process.returncode is None:
            run.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(run.process.wait(), 60)
            except TimeoutError:
                run.process.kill()
                await run.process.wait()
    pg = EmbeddedPostgres(tmp_path / ".data" / "pg")
    if pg.running_port() is not None:
        pg.stop(mode="immediate")


async def status(url: str, token: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            await response.read()
            return response.status


def printed(text: str, label: str) -> str:
    match = re.search(rf"^\s*{label}:\s+(\S+)$", text, re.MULTILINE)
    assert match, f"no {label!r} in:\n{text}"
    return match[1]


async def test_second_run_while_one_is_up_changes_nothing_and_exits_non_zero(
    start_run: StartRun, run_env: dict[str, str], tmp_path: Path
) -> None:
    first = await start_run()
    text = await first.until("Try:")
    key, owner = printed(text, "demo API key"), printed(text, "owner token")
    operator = printed(text, "operator token")
    proxy = f"http://127.0.0.1:{run_env['GATEWAY__PROXY__PORT']}"
    admin = f"http://127.0.0.1:{run_env['GATEWAY__ADMIN__PORT']}"
    assert await status(f"{proxy}/v1/reports/mrr", key) == 200
    assert await status(f"{admin}/v1/accounts", operator) == 200  # the README's example

    second = await start_run()
    code = await second.finish()
    assert code != 0
    assert "already running" in second.text and "Nothing was changed" in second.text
    assert "owner token" not in second.text and "Postgres" not in second.text

    # The first run's secrets still work, and its Postgres is still up.
    assert first.process.returncode is None
    assert await status(f"{proxy}/v1/reports/mrr", key) == 200
    assert await status(f"{admin}/v1/me", owner) == 200

    first.process.send_signal(signal.SIGTERM)
    assert await first.finish() == 0
    assert "embedded Postgres stopped" in first.text
    assert EmbeddedPostgres(tmp_path / ".data" / "pg").running_port() is None


async def test_busy_port_is_refused_before_anything_starts(
    start_run: StartRun, run_env: dict[str, str], tmp_path: Path
) -> None:
    port = int(run_env["GATEWAY__PROXY__PORT"])
    with socket.create_server(("127.0.0.1", port)):
        run = await start_run()
        assert await run.finish() == 1
    assert f"proxy 127.0.0.1:{port}" in run.text and "Nothing was changed" in run.text
    assert not (tmp_path / ".data" / "pg").exists()  # no Postgres made, no secret issued


async def test_unreachable_database_url_is_one_line_and_exit_1(
    start_run: StartRun, run_env: dict[str, str]
) -> None:
    """DATABASE_URL where nothing answers: one line saying so, exit 1 (it was a traceback),
    after stopping the demo upstream it had started."""
    run_env["DATABASE_URL"] = "postgresql://postgres@127.0.0.1:9/nothing"
    run_env["GATEWAY__DATABASE__CONNECT_TIMEOUT_SECONDS"] = "2"
    run = await start_run()
    assert await run.finish() == 1
    assert "Traceback" not in run.text
    errors = [line for line in run.text.splitlines() if line.startswith("make run: ")]
    assert len(errors) == 1, run.text
    assert errors[0].startswith("make run: cannot prepare the database: ConnectionRefusedError")


async def test_run_leaves_running_a_postgres_it_did_not_start(
    start_run: StartRun, tmp_path: Path
) -> None:
    pg = EmbeddedPostgres(tmp_path / ".data" / "pg")
    assert pg.start() is True
    try:
        run = await start_run()
        text = await run.until("Try:")
        assert "already running, left running at exit" in text
        run.process.send_signal(signal.SIGTERM)
        assert await run.finish() == 0
        assert "embedded Postgres stopped" not in run.text
        assert pg.running_port() == pg.port
    finally:
        pg.stop(mode="immediate")


def test_a_stale_pid_file_naming_another_live_process_is_not_a_running_server(
    tmp_path: Path,
) -> None:
    """After a reboot the PID in postmaster.pid may be another process's: the cluster is
    started (that process left alone), not taken for running on a port nothing serves."""
    pg = EmbeddedPostgres(tmp_path / "pg")
    assert pg.start() is True
    pid_file = pg.data_dir / "postmaster.pid"
    lines = pid_file.read_text().splitlines(keepends=True)
    pg.stop(mode="immediate")
    other = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    try:
        pid_file.write_text("".join([f"{other.pid}\n", *lines[1:]]))
        assert pg.running_port() is None
        try:
            assert pg.start() is True
            assert pg.psql("SELECT 1").strip() == "1"
        finally:
            pg.stop(mode="immediate")
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


async def test_each_run_writes_the_audit_event_of_each_secret_it_issues(
    database_url: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo key's creation, and on later runs the new Owner token and key secret, each
    leave the event the admin API writes for the same change, with the actor `system`."""
    monkeypatch.setenv("GATEWAY__KEYS__ARGON2__TIME_COST", str(FAST_ARGON2["time_cost"]))
    monkeypatch.setenv("GATEWAY__KEYS__ARGON2__MEMORY_KIB", str(FAST_ARGON2["memory_kib"]))
    query = (
        "SELECT actor_type, actor_id, action, target_type, target_id, details"
        " FROM audit_log WHERE id > $1 ORDER BY id"
    )
    await devrun._prepare(database_url, None)
    member_id = await db.fetchval("SELECT id FROM members WHERE email = $1", devrun.DEMO_OWNER)
    key_id = await db.fetchval("SELECT id FROM api_keys WHERE name = $1", devrun.DEMO_KEY)
    first = await db.fetch(query, 0)
    assert [(e["actor_type"], e["actor_id"], e["action"]) for e in first] == [
        ("system", None, "account.create"),
        ("system", None, "key.create"),
    ]
    assert (first[1]["target_type"], first[1]["target_id"]) == ("key", key_id)
    assert json.loads(first[1]["details"]) == {"name": devrun.DEMO_KEY}

    last_id = await db.fetchval("SELECT max(id) FROM audit_log")
    await devrun._prepare(database_url, None)
    second = await db.fetch(query, last_id)
    assert [(e["actor_type"], e["action"], e["target_type"], e["target_id"]) for e in second] == [
        ("system", "member.regenerate_token", "member", member_id),
        ("system", "key.regenerate", "key", key_id),
    ]
    assert json.loads(second[1]["details"]) == {"grace_seconds": 0}
