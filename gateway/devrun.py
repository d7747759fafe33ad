"""`make run`: everything a first-time user needs, in one command.

Starts an embedded Postgres under `.data/pg` unless DATABASE_URL is set, applies the
migrations, creates a demo account and key on the first run (and on later runs issues them
new secrets, since secrets are never stored to be shown again), starts the demo upstream
unless GATEWAY__PROXY__UPSTREAM is set, then the gateway, and prints how to call it.
Ctrl-C stops everything it started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .accounts import create_account, regenerate_member_token
from .config import ConfigError, load_config
from .db import connect, create_pool, migrate
from .embedded_pg import EmbeddedPostgres, free_port
from .keys import Hasher, KeyFormat, KeyStore

DATA_DIR = Path(".data")
DEMO_ACCOUNT = "Demo account"
DEMO_OWNER = "owner@demo.growpanel.example"
DEMO_KEY = "Demo key"


async def _prepare(database_url: str, config_path: str | None) -> tuple[str, str]:
    """Migrate, then return (owner token, demo key) with fresh secrets."""
    config = load_config(config_path, {**os.environ, "DATABASE_URL": database_url})
    conn = await connect(config.database)
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
            async with pool.acquire() as c:
                token = await regenerate_member_token(c, hasher, member_id) or ""
        key_id = await pool.fetchval(
            "SELECT id FROM api_keys WHERE account_id = $1 AND name = $2"
            " AND deleted_at IS NULL ORDER BY created_at LIMIT 1",
            account_id,
            DEMO_KEY,
        )
        new = None
        if key_id is not None:
            new = await store.regenerate(account_id, key_id)
        if new is None:
            new = await store.create(account_id, DEMO_KEY, created_by=member_id)
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


def main() -> int:
    # SIGTERM (from a supervisor, or `timeout`) stops everything like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    config_path = os.environ.get("GATEWAY_CONFIG")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"gateway: config error: {exc}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    children: list[subprocess.Popen[bytes]] = []
    pg: EmbeddedPostgres | None = None
    gateway_cmd = [sys.executable, "-m", "gateway.cli"]
    try:
        if not env.get("DATABASE_URL"):
            pg = EmbeddedPostgres(DATA_DIR / "pg")
            pg.start()
            env["DATABASE_URL"] = pg.create_database("growpanel")
            print(f"embedded Postgres: {env['DATABASE_URL']} (data in {pg.data_dir})")
        if not env.get("GATEWAY__PROXY__UPSTREAM"):
            port = free_port()
            upstream = subprocess.Popen([*gateway_cmd, "demo-upstream", "--port", str(port)])
            children.append(upstream)
            env["GATEWAY__PROXY__UPSTREAM"] = f"http://127.0.0.1:{port}"
            _wait_http(f"http://127.0.0.1:{port}/v1/customers", upstream)
        token, key = asyncio.run(_prepare(env["DATABASE_URL"], config_path))
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
            "  (both were issued just now and are shown only here)\n\n"
            "Try:\n"
            f"  curl -H 'Authorization: Bearer {key}' {proxy_url}/v1/reports/mrr\n",
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
        if pg is not None:
            pg.stop()
            print("embedded Postgres stopped")


if __name__ == "__main__":
    sys.exit(main())
