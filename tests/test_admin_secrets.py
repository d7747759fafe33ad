"""Secrets through a real `gateway serve`: each shown once, stored and logged nowhere.

The process gets its operator token from the environment only. Every admin response body
is collected; each full key and admin token must appear in exactly one of them (the one
that created it), and neither it nor its secret part in the database or the process's
output (logged at DEBUG, so that nothing hides below the default level).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp.test_utils import TestServer

from gateway.embedded_pg import free_port

from .helpers import FAST_ARGON2, gateway_command, served_config_file, wait_for
from .test_admin_support import OPERATOR_TOKEN, AdminClient

SECRET_START, SECRET_END = 12, -6  # public id (12) before the secret, checksum (6) after


def secret_of(token: str) -> str:
    prefix = "gpa_" if token.startswith("gpa_") else "gp_"
    return token[len(prefix) + SECRET_START : SECRET_END]


async def dump_database(db: asyncpg.Connection) -> str:
    tables = await db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    rows: list[str] = []
    for table in tables:
        found = await db.fetch(f'SELECT t::text AS row FROM "{table["table_name"]}" t')  # noqa: S608
        rows.extend(row["row"] for row in found)
    return "\n".join(rows)


async def test_keys_and_tokens_appear_in_exactly_one_response_and_nowhere_else(
    database_url: str, upstream: TestServer, tmp_path: Path, db: asyncpg.Connection
) -> None:
    proxy_port, admin_port = free_port(), free_port()
    log_path = tmp_path / "gateway.log"
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "GATEWAY_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "GATEWAY__PROXY__UPSTREAM": str(upstream.make_url("")).rstrip("/"),
        "GATEWAY__PROXY__PORT": str(proxy_port),
        "GATEWAY__ADMIN__PORT": str(admin_port),
        "GATEWAY__KEYS__ARGON2__TIME_COST": str(FAST_ARGON2["time_cost"]),
        "GATEWAY__KEYS__ARGON2__MEMORY_KIB": str(FAST_ARGON2["memory_kib"]),
        "GATEWAY__USAGE__FLUSH_INTERVAL_SECONDS": "0.2",
        "GATEWAY__LOGGING__LEVEL": "DEBUG",
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            gateway_command("--config", str(served_config_file()), "serve"),
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    admin_url, proxy_url = f"http://127.0.0.1:{admin_port}", f"http://127.0.0.1:{proxy_port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                assert process.poll() is None, log_path.read_text()
                try:
                    async with session.get(f"{admin_url}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_for(ready, timeout=20)
            client = AdminClient(admin_url, session)

            async def proxied(key: str) -> int:
                async with session.get(
                    f"{proxy_url}/v1/customers", headers={"Authorization": f"Bearer {key}"}
                ) as response:
                    return response.status

            account = await client.call(
                "POST",
                "/v1/accounts",
                OPERATOR_TOKEN,
                json_body={"name": "Secretive", "owner_email": "owner@example.com"},
            )
            owner = account.body["token"]
            member = await client.call(
                "POST",
                "/v1/members",
                owner,
                json_body={"email": "admin@example.com", "name": "Ada", "role": "admin"},
            )
            first_admin_token = member.body["token"]
            created = await client.call("POST", "/v1/keys", owner, json_body={"name": "k"})
            key_id, first_key = created.body["id"], created.body["key"]
            assert await proxied(first_key) == 200
            await client.call("GET", "/v1/keys", owner)
            await client.call("GET", f"/v1/keys/{key_id}", first_admin_token)
            await client.call("PATCH", f"/v1/keys/{key_id}", owner, json_body={"name": "k2"})
            rolled = await client.call("POST", f"/v1/keys/{key_id}/regenerate", owner)
            second_key = rolled.body["key"]

            async def old_key_refused() -> bool:
                return await proxied(first_key) == 401

            await wait_for(old_key_refused, timeout=1)
            assert await proxied(second_key) == 200
            reissued = await client.call(
                "POST", f"/v1/members/{member.body['id']}/regenerate-token", owner
            )
            second_admin_token = reissued.body["token"]
            assert (await client.call("GET", "/v1/me", first_admin_token)).status == 401
            assert (await client.call("GET", "/v1/me", second_admin_token)).status == 200
            await client.call("GET", f"/v1/keys/{key_id}/usage", owner)
            audit = await client.call("GET", "/v1/audit-log", owner)
            assert audit.status == 200
            bodies = client.bodies
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    logs = log_path.read_text(errors="replace")
    database = await dump_database(db)
    assert key_id in database and "admin@example.com" in database  # the dump is real
    assert "listening" in logs  # and so is the log
    secrets = [owner, first_admin_token, second_admin_token, first_key, second_key]
    for token in secrets:
        assert sum(token in body for body in bodies) == 1, token
        for text in (token, secret_of(token)):
            assert text not in database
            assert text not in logs
    assert OPERATOR_TOKEN not in database and OPERATOR_TOKEN not in logs
    assert not any(OPERATOR_TOKEN in body for body in bodies)
