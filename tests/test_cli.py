"""The `gateway` command: bootstrap and demo-upstream, run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from gateway.accounts import ADMIN_TOKEN_FORMAT
from gateway.embedded_pg import free_port

from .helpers import REPO_ROOT, gateway_command


def command_environ(database_url: str | None = None) -> dict[str, str]:
    """The environment for a `gateway` subprocess: no inherited gateway settings."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("GATEWAY") and k != "DATABASE_URL"
    }
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return env


def bootstrap(
    database_url: str, *args: str, settings: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gateway_command("bootstrap", *args),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**command_environ(database_url), **(settings or {})},
        timeout=60,
    )


async def dump_database(conn: asyncpg.Connection) -> str:
    """Every row of every table in the public schema, as text."""
    tables = await conn.fetch(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
    )
    rows = []
    for table in tables:
        name = table["table_name"].replace('"', '""')
        rows += await conn.fetch(f'SELECT t::text AS row FROM "{name}" t')  # noqa: S608
    return "\n".join(r["row"] for r in rows)


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


# -- bootstrap ---------------------------------------------------------------------------


async def test_bootstrap_json_prints_account_member_and_token_once(
    database_url: str, db: asyncpg.Connection
) -> None:
    """`bootstrap --json` prints one object with the ids and a `gpa_` Owner token."""
    result = bootstrap(
        database_url, "--account", "Acme", "--owner-email", "owner@acme.example", "--json"
    )
    assert result.returncode == 0, result.stderr
    printed = [obj for obj in json_lines(result.stdout) if "token" in obj]
    assert len(printed) == 1, result.stdout
    (created,) = printed
    assert set(created) == {"account_id", "member_id", "token"}
    token = created["token"]
    assert token.startswith("gpa_")
    parts = ADMIN_TOKEN_FORMAT.parse(token)
    assert parts is not None

    account = await db.fetchrow(
        "SELECT id, name FROM accounts WHERE id = $1", uuid.UUID(created["account_id"])
    )
    assert account is not None and account["name"] == "Acme"
    member = await db.fetchrow(
        "SELECT account_id, email, role, token_public_id, token_hash FROM members WHERE id = $1",
        uuid.UUID(created["member_id"]),
    )
    assert member is not None
    assert member["account_id"] == account["id"]
    assert (member["email"], member["role"]) == ("owner@acme.example", "owner")
    assert member["token_public_id"] == parts.public_id
    assert member["token_hash"].startswith("$argon2id$")

    dump = await dump_database(db)
    assert parts.public_id in dump  # the dump does hold the member's row
    assert token not in dump
    assert parts.secret not in dump
    assert token not in result.stderr


async def test_bootstrap_without_json_prints_the_token_with_a_warning(
    database_url: str,
) -> None:
    """Plain output shows the ids and the token, and says it is shown only once."""
    result = bootstrap(database_url, "--account", "Birch", "--owner-email", "o@birch.example")
    assert result.returncode == 0, result.stderr
    assert "token:     gpa_" in result.stdout
    assert "shown only this once" in result.stdout


async def test_each_bootstrap_creates_a_new_account(
    database_url: str, db: asyncpg.Connection
) -> None:
    """Each bootstrap makes a new account; the same email may own several accounts."""
    for _ in range(2):
        result = bootstrap(
            database_url, "--account", "Same", "--owner-email", "o@same.example", "--json"
        )
        assert result.returncode == 0, result.stderr
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE name = 'Same'") == 2


@pytest.mark.parametrize(
    ("account", "email", "setting"),
    [
        ("Acme", "not-an-email", "--owner-email"),
        ("Acme", "", "--owner-email"),
        ("", "owner@acme.example", "--account"),
        ("   ", "owner@acme.example", "--account"),
        ("x" * 101, "owner@acme.example", "--account"),
        # What the admin API refuses too (admin.validation); a byte that is not UTF-8
        # reaches Python as a lone surrogate, which was a traceback.
        ("Acme\udcff", "owner@acme.example", "--account"),
        ("Ac\x1b[31mme", "owner@acme.example", "--account"),
        ("Acme", "owner\udcff@acme.example", "--owner-email"),
        ("Acme", "owner\x01@acme.example", "--owner-email"),
        ("Acme", "owner@" + "a" * 300 + ".example", "--owner-email"),
    ],
)
async def test_bootstrap_with_bad_arguments_exits_2(
    database_url: str, db: asyncpg.Connection, account: str, email: str, setting: str
) -> None:
    """A name or email the admin API would refuse: one line naming the option, exit 2,
    nothing written."""
    result = bootstrap(database_url, "--account", account, "--owner-email", email, "--json")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert setting in lines[0]
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0


async def test_bootstrap_with_argon2_settings_out_of_range_exits_2(
    database_url: str, db: asyncpg.Connection
) -> None:
    """argon2 parameters it cannot take are a config error at load (it used to be an
    OverflowError traceback, exit 1, at the Owner token's hash)."""
    result = bootstrap(
        database_url,
        "--account",
        "Acme",
        "--owner-email",
        "owner@acme.example",
        settings={"GATEWAY__KEYS__ARGON2__MEMORY_KIB": "99999999999"},
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gateway: config error: keys.argon2.memory_kib: ")
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0


async def test_bootstrap_on_unmigrated_database_exits_1(empty_database_url: str) -> None:
    """Bootstrap refuses to run before the schema exists, and says why."""
    result = bootstrap(empty_database_url, "--account", "A", "--owner-email", "a@b.c")
    assert result.returncode == 1
    assert "pending migrations" in result.stderr


# -- demo-upstream -----------------------------------------------------------------------


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own http URL
        return response.status, json.loads(response.read())


@pytest.fixture(scope="module")
def demo_upstream() -> Iterator[str]:
    """`gateway demo-upstream` on a free port; yields its base URL once it answers."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        gateway_command("demo-upstream", "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=command_environ(),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                urllib.request.urlopen(f"{base}/v1/account", timeout=1).close()  # noqa: S310
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "demo upstream did not start within 30 s"
                time.sleep(0.05)  # polling interval of a bounded wait, not synchronisation
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


def test_demo_upstream_serves_customers_json(demo_upstream: str) -> None:
    """`/v1/customers` answers 200 with a JSON list of customers."""
    status, body = get_json(f"{demo_upstream}/v1/customers")
    assert status == 200
    assert body["items"]
    assert {"id", "name", "plan", "mrr", "currency"} <= set(body["items"][0])


@pytest.mark.parametrize(
    "path", ["/v1/reports/mrr", "/v1/customers", "/v1/data/churn", "/v1/account"]
)
def test_demo_upstream_serves_every_documented_route(demo_upstream: str, path: str) -> None:
    """Each stand-in route of the GrowPanel API answers 200 with JSON."""
    status, body = get_json(f"{demo_upstream}{path}")
    assert status == 200
    assert isinstance(body, dict) and body
