"""The migrations runner, `gateway migrate` and `gateway serve`, on a database with no schema."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from yarl import URL

from gateway.db import (
    MIGRATION_LOCK_ID,
    Migration,
    MigrationError,
    create_pool,
    load_migrations,
    migrate,
    pending_migrations,
)

from .helpers import REPO_ROOT, gateway_command, make_config, wait_for

TABLES = {
    "accounts",
    "members",
    "api_keys",
    "api_key_last_used",
    "key_usage_hourly",
    "rate_limit_counters",
    "audit_log",
    "webhook_endpoints",
    "webhook_events",
    "webhook_deliveries",
    "webhook_key_notices",
}


@pytest.fixture
async def conn(empty_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a database with no schema at all."""
    connection = await asyncpg.connect(empty_database_url)
    yield connection
    await connection.close()


def command_environ(database_url: str, **extra: str) -> dict[str, str]:
    """The environment for a `gateway` subprocess: only the given database and settings."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("GATEWAY") and k != "DATABASE_URL"
    }
    env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


def run_gateway(database_url: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gateway_command(*args),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=command_environ(database_url, **extra),
        timeout=60,
    )


def plain_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if not line.startswith("{")]


async def recorded(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY 1")


async def public_tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    return {row["table_name"] for row in rows}


def test_migration_files_are_numbered_from_0001() -> None:
    """The files load in order, numbered 1, 2, … with no gaps, the first being 0001_initial."""
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert (migrations[0].version, migrations[0].name) == (1, "initial")


async def test_migrate_applies_and_records_each_file_with_its_checksum(
    conn: asyncpg.Connection,
) -> None:
    """A fresh database gets every migration, each recorded with its version and SHA-256."""
    migrations = load_migrations()
    assert await pending_migrations(conn) == migrations
    applied = await migrate(conn)
    assert applied == migrations
    rows = await recorded(conn)
    assert [(r["version"], r["name"], r["checksum"]) for r in rows] == [
        (m.version, m.name, m.checksum) for m in migrations
    ]
    assert all(len(r["checksum"]) == 64 for r in rows)
    assert await pending_migrations(conn) == []


async def test_migrate_creates_the_product_tables(conn: asyncpg.Connection) -> None:
    """The schema holds every table the product needs, and the migrations table."""
    await migrate(conn)
    assert await public_tables(conn) == TABLES | {"schema_migrations"}


async def test_the_tables_flushes_update_leave_room_for_hot_updates(
    conn: asyncpg.Connection,
) -> None:
    """Every flush rewrites its rows in place: their pages keep free room (0004)."""
    await migrate(conn)
    rows = await conn.fetch(
        "SELECT relname, reloptions FROM pg_class"
        " WHERE relname IN ('api_key_last_used', 'key_usage_hourly')"
    )
    assert {r["relname"]: r["reloptions"] for r in rows} == {
        "api_key_last_used": ["fillfactor=50"],
        "key_usage_hourly": ["fillfactor=70"],
    }


async def test_second_migrate_applies_nothing(conn: asyncpg.Connection) -> None:
    """Running migrate again on an up-to-date database is a no-op."""
    await migrate(conn)
    before = await recorded(conn)
    assert await migrate(conn) == []
    assert await recorded(conn) == before


async def test_edited_applied_migration_is_refused(conn: asyncpg.Connection) -> None:
    """Changing the SQL of an applied migration is an error, never a silent re-run."""
    await migrate(conn)
    edited = [
        dataclasses.replace(m, sql=m.sql + "\n-- an afterthought\n") if m.version == 1 else m
        for m in load_migrations()
    ]
    with pytest.raises(MigrationError, match=r"0001_initial\.sql was edited"):
        await migrate(conn, edited)
    with pytest.raises(MigrationError, match="edited"):
        await pending_migrations(conn, edited)


async def test_applied_migration_with_missing_file_is_refused(conn: asyncpg.Connection) -> None:
    """A migration recorded as applied whose file is gone is an error."""
    await migrate(conn)
    with pytest.raises(MigrationError, match="0001 is applied but its file is missing"):
        await migrate(conn, [])


async def test_new_migration_after_applied_ones_is_applied_alone(
    conn: asyncpg.Connection,
) -> None:
    """A file added later is the only one applied on the next run."""
    migrations = load_migrations()
    await migrate(conn)
    extra = Migration(len(migrations) + 1, "add_notes", "CREATE TABLE notes (id int)")
    assert await migrate(conn, [*migrations, extra]) == [extra]
    assert "notes" in await public_tables(conn)
    assert [r["version"] for r in await recorded(conn)][-1] == extra.version


@pytest.mark.parametrize(
    "sql",
    ["CREATE TABLE own_table (id int); ROLLBACK;", "COMMIT; CREATE TABLE own_table (id int);"],
)
async def test_a_migration_that_ends_its_own_transaction_is_never_recorded(
    conn: asyncpg.Connection, sql: str
) -> None:
    """The runner records each file in the transaction it gives it. A ROLLBACK of the
    file's own undid it, and the record was then written outside any transaction:
    applied, said the table, and nothing was."""
    files = [Migration(1, "good", "CREATE TABLE good_table (id int)"), Migration(2, "own", sql)]
    with pytest.raises(MigrationError, match=r"^0002_own\.sql ended its transaction itself"):
        await migrate(conn, files)
    assert [r["version"] for r in await recorded(conn)] == [1]


async def test_failing_migration_rolls_back_completely(conn: asyncpg.Connection) -> None:
    """A migration that fails half-way leaves no table and no record behind."""
    broken = [
        Migration(1, "good", "CREATE TABLE good_table (id int)"),
        Migration(
            2,
            "broken",
            "CREATE TABLE partial_table (id int);"
            " INSERT INTO partial_table VALUES (1);"
            " INSERT INTO no_such_table VALUES (1);",
        ),
    ]
    with pytest.raises(MigrationError, match=r"^0002_broken\.sql failed") as error:
        await migrate(conn, broken)
    assert isinstance(error.value.__cause__, asyncpg.UndefinedTableError)
    assert await public_tables(conn) == {"good_table", "schema_migrations"}
    assert [r["version"] for r in await recorded(conn)] == [1]
    # The advisory lock was released: the next run (with the file fixed) goes ahead.
    fixed = [broken[0], Migration(2, "fixed", "CREATE TABLE partial_table (id int)")]
    assert await migrate(conn, fixed) == [fixed[1]]


async def test_migrate_waits_for_the_migration_lock(
    conn: asyncpg.Connection, empty_database_url: str
) -> None:
    """While another session holds the migration lock, migrate waits, then applies."""
    other = await asyncpg.connect(empty_database_url)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        task = asyncio.create_task(migrate(conn))
        pid = conn.get_server_pid()

        async def waiting_for_lock() -> bool:
            return bool(
                await other.fetchval(
                    "SELECT count(*) FROM pg_locks"
                    " WHERE pid = $1 AND locktype = 'advisory' AND NOT granted",
                    pid,
                )
            )

        await wait_for(waiting_for_lock)
        assert not task.done()
        assert await public_tables(other) == set()
        await other.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
        assert await asyncio.wait_for(task, 30) == load_migrations()
    finally:
        await other.close()


# -- the command ------------------------------------------------------------------------


async def test_concurrent_migrate_commands_apply_the_schema_once(
    conn: asyncpg.Connection, empty_database_url: str
) -> None:
    """Two `gateway migrate` started together both succeed; each file is applied once."""
    env = command_environ(empty_database_url)
    processes = [
        subprocess.Popen(
            gateway_command("migrate"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    stdout = "".join(out for out, _ in outputs)
    assert stdout.count("applied 0001_initial") == 1, outputs
    assert stdout.count("migrations: up to date") == 1, outputs
    migrations = load_migrations()
    assert [r["version"] for r in await recorded(conn)] == [m.version for m in migrations]
    assert await public_tables(conn) >= TABLES


def test_serve_refuses_to_start_with_pending_migrations(empty_database_url: str) -> None:
    """`gateway serve` on an unmigrated database exits 1 with one line saying so."""
    result = run_gateway(
        empty_database_url,
        "serve",
        GATEWAY__PROXY__PORT="0",
        GATEWAY__ADMIN__PORT="0",
    )
    assert result.returncode == 1, result.stderr
    assert "pending migrations" in result.stderr
    assert "0001_initial" in result.stderr
    assert "--migrate" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("gateway: ")]
    assert len(errors) == 1, result.stderr


def test_migrate_command_applies_then_reports_up_to_date(empty_database_url: str) -> None:
    """`gateway migrate` names what it applied; the second run says it is up to date."""
    first = run_gateway(empty_database_url, "migrate")
    assert first.returncode == 0, first.stderr
    # Log lines (JSON) share stdout; the report lines are the plain ones.
    assert plain_lines(first.stdout) == [
        f"applied {m.version:04d}_{m.name}" for m in load_migrations()
    ]
    second = run_gateway(empty_database_url, "migrate")
    assert second.returncode == 0, second.stderr
    assert plain_lines(second.stdout) == ["migrations: up to date"]


def test_migrate_command_with_unreachable_database_exits_1() -> None:
    """No database at the URL: one line saying so, exit 1."""
    result = run_gateway(
        "postgresql://postgres@127.0.0.1:9/nothing",
        "migrate",
        GATEWAY__DATABASE__CONNECT_TIMEOUT_SECONDS="2",
    )
    assert result.returncode == 1
    assert result.stderr.startswith("gateway: cannot connect to the database")
    assert len(result.stderr.splitlines()) == 1, result.stderr


READ_ONLY = [
    "?default_transaction_read_only=on",
    "?options=-c%20default_transaction_read_only%3Don",
]


@pytest.mark.parametrize("query", READ_ONLY)
@pytest.mark.parametrize("args", [("migrate",), ("serve", "--migrate")])
def test_migrations_on_a_read_only_database_exit_1_with_one_line(
    empty_database_url: str, args: tuple[str, ...], query: str
) -> None:
    """A session that may not write (a standby, default_transaction_read_only): one line
    naming the refusal, exit 1 (it was a traceback from the runner's own CREATE TABLE)."""
    result = run_gateway(
        empty_database_url + query, *args, GATEWAY__PROXY__PORT="0", GATEWAY__ADMIN__PORT="0"
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gateway: the database refused the migrations runner: ")
    assert "read-only transaction" in lines[0]


async def test_migrate_as_a_role_without_create_exits_1_with_one_line(
    empty_database_url: str, conn: asyncpg.Connection
) -> None:
    """A role that may not create tables in the schema: one line, exit 1."""
    role = f"gw_no_create_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        await conn.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
        url = str(URL(empty_database_url).with_user(role))
        result = run_gateway(url, "migrate")
    finally:
        await conn.execute(f"DROP ROLE {role}")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gateway: the database refused the migrations runner: ")
    assert "InsufficientPrivilegeError" in lines[0]
    assert await public_tables(conn) == set()


async def test_a_released_pool_connection_costs_no_reset_round_trip(database_url: str) -> None:
    """The pool sends nothing when a connection goes back (asyncpg's default would send
    RESET ALL, UNLISTEN *, CLOSE ALL and pg_advisory_unlock_all() every time)."""
    pool = await create_pool(make_config(database_url).database, min_size=1, max_size=1)
    observer = await asyncpg.connect(database_url)
    try:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        async with pool.acquire() as conn:  # the same connection: it went back and came out
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid
        last = await observer.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
        assert last == "SELECT pg_backend_pid()"
    finally:
        await observer.close()
        await pool.close()
