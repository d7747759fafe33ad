"""`make run`: everything a first-time user needs, in one command.

Starts an embedded Postgres under `.data/pg` unless DATABASE_URL is set, applies the
migrations, creates a demo account and key on the first run (and on later runs issues them
new secrets, since secrets are never stored to be shown again), starts the demo upstream
unless GATEWAY__PROXY__UPSTREAM is set, then the gateway, and prints how to call it.
Ctrl-C stops everything it started, and nothing else.

A second `make run` while one is up must change nothing: issuing new secrets would
invalidate the ones the first run printed, and stopping "its" Postgres would stop the
first run's. So before anything else it takes a lock in `.data/` and checks that the
listener ports are free, and it only ever stops a Postgres it started itself.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg

from .accounts import audit, create_account, replace_member_token
from .config import Config, load_config
from .db import UNAVAILABLE, MigrationError, connect, create_pool, migrate
from .embedded_pg import EmbeddedPostgres, free_port
from .keyformat import Hasher, KeyFormat
from .keys import KeyStore
from .settings import ConfigError

DATA_DIR = Path(".data")
DEMO_ACCOUNT = "Demo account"
DEMO_OWNER = "owner@demo.growpanel.example"
DEMO_KEY = "Demo key"


async def _prepare(database_url: str, config_path: str | None) -> tuple[str, str]:
    """Migrate, then return (owner token, demo key) with fresh secrets."""
    config = load_config(config_path, {**os.environ, "DATABASE_URL": database_url})
    conn = await connect(config.database, direct=True)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    hasher = Hasher(config.keys.argon2)
    pool = await create_pool(config.database, min_size=1, max_size=2)
    try:
        store = KeyStore(pool, KeyFormat(config.keys.prefix), hasher)
        owner = await pool.fetchrow(
            "SELECT m.id AS member_id, a.id AS account_id FROM members m"
            " JOIN accounts a ON a.id = m.account_id"
            " WHERE a.name = $1 AND m.email = $2 AND m.role = 'owner'",
            DEMO_ACCOUNT,
            DEMO_OWNER,
        )
        if owner is None:
            created = await create_account(
                pool,
                hasher,
                DEMO_ACCOUNT,
                DEMO_OWNER,
                owner_name="Demo Owner",
                actor_type="system",
            )
            token, account_id, member_id = created.token, created.account_id, created.member_id
        else:
            account_id, member_id = owner["account_id"], owner["member_id"]
            # Each change with the event the admin API writes for it, in its transaction.
            async with pool.acquire() as conn, conn.transaction():
                replaced = await replace_member_token(conn, hasher, account_id, member_id)
                assert replaced is not None  # found above; nothing else removes it
                token = replaced[1]
                await audit(
                    conn, account_id, "system", None, "member.regenerate_token", "member", member_id
                )
        async with pool.acquire() as conn, conn.transaction():
            key_id = await conn.fetchval(
                "SELECT id FROM api_keys WHERE account_id = $1 AND name = $2"
                " AND deleted_at IS NULL ORDER BY created_at LIMIT 1",
                account_id,
                DEMO_KEY,
            )
            new = None
            if key_id is not None:
                new = await store.regenerate(account_id, key_id, conn=conn)
                if new is not None:
                    await audit(
                        conn,
                        account_id,
                        "system",
                        None,
                        "key.regenerate",
                        "key",
                        key_id,
                        details={"grace_seconds": 0},
                    )
            if new is None:
                new = await store.create(
                    account_id,
                    DEMO_KEY,
                    created_by=member_id,
                    permissions=config.permissions,
                    conn=conn,
                )
                await audit(
                    conn,
                    account_id,
                    "system",
                    None,
                    "key.create",
                    "key",
                    new.id,
                    details={"name": DEMO_KEY},
                )
        return token, new.key
    finally:
        await pool.close()


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"make run: {process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - our own localhost URL
                return
        except urllib.error.HTTPError:
            return  # it answers: good enough
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"make run: {url} did not answer within {timeout:.0f}s")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _take_lock(path: Path) -> int | None:
    """An exclusive lock held until this process exits (the kernel drops it even after a
    kill -9); None when another `make run` holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def busy_ports(config: Config) -> list[str]:
    """The listeners whose address is taken, as 'name host:port'."""
    wanted = []
    if config.proxy.enabled:
        wanted.append(("proxy", config.proxy.host, config.proxy.port))
    if config.admin.enabled:
        wanted.append(("admin", config.admin.host, config.admin.port))
    busy = []
    for name, host, port in wanted:
        try:
            # SO_REUSEADDR, as the gateway's own listeners: only a listening socket
            # (not a closed connection in TIME_WAIT) makes the port busy.
            with socket.create_server((host, port)):
                pass
        except OSError:
            busy.append(f"{name} {host}:{port}")
    return busy


def main() -> int:
    # SIGTERM (from a supervisor, or `timeout`) stops everything like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    config_path = os.environ.get("GATEWAY_CONFIG")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"gateway: config error: {exc}", file=sys.stderr)
        return 2
    lock_path = DATA_DIR / "run.lock"
    if _take_lock(lock_path) is None:
        print(
            f"make run: another `make run` is already running from this folder"
            f" (pid {_holder(lock_path)}); stop it first (Ctrl-C in its terminal)."
            " Nothing was changed.",
            file=sys.stderr,
        )
        return 1
    busy = busy_ports(config)
    if busy:
        print(
            f"make run: address already in use: {', '.join(busy)} (another gateway?)."
            " Stop it or choose other ports (GATEWAY__PROXY__PORT, GATEWAY__ADMIN__PORT)."
            " Nothing was changed.",
            file=sys.stderr,
        )
        return 1
    env = dict(os.environ)
    # The operator may create and list accounts (README); a local run makes one up unless
    # the environment already has one.
    operator_token = env.get("GATEWAY_OPERATOR_TOKEN", "")
    operator_line = "  operator token: GATEWAY_OPERATOR_TOKEN from your environment\n\n"
    if not operator_token:
        operator_token = env["GATEWAY_OPERATOR_TOKEN"] = secrets.token_urlsafe(32)
        operator_line = (
            f"  operator token: {operator_token}\n"
            "  (for this run only; set GATEWAY_OPERATOR_TOKEN to choose your own)\n\n"
            "As the operator (create and list accounts):\n"
            f"  export GATEWAY_OPERATOR_TOKEN={operator_token}\n"
        )
    children: list[subprocess.Popen[bytes]] = []
    pg: EmbeddedPostgres | None = None
    pg_started = False
    gateway_cmd = [sys.executable, "-m", "gateway.cli"]
    try:
        if not env.get("DATABASE_URL"):
            pg = EmbeddedPostgres(DATA_DIR / "pg")
            pg_started = pg.start()
            env["DATABASE_URL"] = pg.create_database("growpanel")
            how = "started" if pg_started else "already running, left running at exit"
            print(f"embedded Postgres ({how}): {env['DATABASE_URL']} (data in {pg.data_dir})")
        if not env.get("GATEWAY__PROXY__UPSTREAM"):
            port = free_port()
            upstream = subprocess.Popen([*gateway_cmd, "demo-upstream", "--port", str(port)])
            children.append(upstream)
            env["GATEWAY__PROXY__UPSTREAM"] = f"http://127.0.0.1:{port}"
            _wait_http(f"http://127.0.0.1:{port}/v1/customers", upstream)
        try:
            token, key = asyncio.run(_prepare(env["DATABASE_URL"], config_path))
        except MigrationError as exc:
            print(f"make run: {exc}", file=sys.stderr)
            return 1
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            # Unreachable, refused login, no such database: the clean-up below still runs.
            print(
                f"make run: cannot prepare the database: {type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
            return 1
        env.setdefault("GATEWAY__LOGGING__FORMAT", "text")
        gateway = subprocess.Popen([*gateway_cmd, "serve"], env=env)
        children.append(gateway)
        proxy_url = f"http://{config.proxy.host}:{config.proxy.port}"
        admin_url = f"http://{config.admin.host}:{config.admin.port}"
        _wait_http(f"{admin_url}/healthz", gateway)
        _wait_http(f"{proxy_url}/", gateway)
        print(
            "\n"
            "GrowPanel API gateway is running (Ctrl-C stops everything).\n"
            f"  proxy:        {proxy_url}\n"
            f"  admin:        {admin_url}  (open it in a browser: the API keys page)\n"
            f"  upstream:     {env['GATEWAY__PROXY__UPSTREAM']}\n"
            f"  owner token:  {token}\n"
            f"  demo API key: {key}\n"
            "  (both were issued just now and are shown only here)\n"
            f"{operator_line}"
            f'  curl -H "Authorization: Bearer $GATEWAY_OPERATOR_TOKEN" {admin_url}/v1/accounts\n\n'
            "Try:\n"
            f"  curl -H 'Authorization: Bearer {key}' {proxy_url}/v1/reports/mrr\n"
            "The `gateway` command is .venv/bin/gateway (or `source .venv/bin/activate`).\n",
            flush=True,
        )
        gateway.wait()
        return gateway.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=35)
            except subprocess.TimeoutExpired:
                child.kill()
        if pg is not None and pg_started:
            pg.stop()
            print("embedded Postgres stopped")


if __name__ == "__main__":
    sys.exit(main())
