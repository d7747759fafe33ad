"""Postgres: the connection pool and the migrations runner.

Migrations are the numbered SQL files in `migrations/` (`0001_name.sql`). `migrate()` takes a
session advisory lock so that replicas starting together apply each file once, runs every
file in its own transaction and records its SHA-256; a file whose applied checksum no
longer matches is an error, never silently re-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from . import metrics
from .config import DatabaseConfig

T = TypeVar("T")

log = logging.getLogger("gateway.db")

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# An arbitrary constant shared by every gateway: "GPMIGRAT" as a 64-bit integer.
MIGRATION_LOCK_ID = 0x47504D4947524154 - (1 << 63)
_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# Errors that mean "the database cannot be reached right now" rather than a bug:
# callers fall back (stale cache, keep pending counters) instead of failing hard.
UNAVAILABLE = (
    OSError,
    TimeoutError,
    # SQLSTATE class 08 (connection exceptions), ConnectionDoesNotExistError included.
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    # A connection cut mid-statement can leave asyncpg's protocol state behind ("cannot
    # switch to state ...; another operation is in progress"): seen during outages, and
    # transient, since the pool replaces the connection.
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.QueryCanceledError,
)


class MigrationError(Exception):
    pass


async def create_pool(config: DatabaseConfig, **overrides: Any) -> asyncpg.Pool:
    options: dict[str, Any] = {
        "min_size": config.pool_min_size,
        "max_size": config.pool_max_size,
        "timeout": config.connect_timeout_seconds,
        "command_timeout": config.statement_timeout_seconds,
        # Connections that sat idle are recycled so a restarted Postgres is noticed.
        "max_inactive_connection_lifetime": 60.0,
        "reset": _keep_session,
        **_pooler_options(config),
    }
    options.update(overrides)
    return await asyncpg.create_pool(config.url, **options)


def _pooler_options(config: DatabaseConfig) -> dict[str, Any]:
    """Through PgBouncer in transaction pooling, consecutive statements of a connection
    may run on different server connections, so no named prepared statement may be kept.
    With its statement cache off, asyncpg (0.29+) prepares each statement unnamed and
    re-sends it with its Bind, in one exchange that PgBouncer keeps on one server."""
    return {"statement_cache_size": 0} if config.pgbouncer else {}


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing beyond what asyncpg always does.

    asyncpg's default sends `RESET ALL; UNLISTEN *; CLOSE ALL; pg_advisory_unlock_all()`
    on every release: one more round trip for every key lookup, flush and sync (4% of the
    proxy's CPU with 10,000 keys being re-confirmed). Pooled connections here never change
    session state (no SET, LISTEN, cursors or session advisory locks: the listener and the
    migration lock have connections of their own), and an open transaction is still rolled
    back and listeners removed by asyncpg before this runs.
    """


def array_literal(values: Iterable[object]) -> str:
    """An array literal of uuids, integers or plain words (no element needs quoting or
    escaping), sent as one text parameter and cast in the statement (`$1::text::uuid[]`).

    asyncpg encodes a list element by element, checking each one against three abstract
    base classes. The rate-limit sync's six arrays of 2,600 elements took 4.6-8.4 ms of
    the event loop's CPU as lists, 2.2-4.0 ms as literals; a usage flush of 10,000 keys
    (four arrays) 17-25 against 7-11 ms, its statement no slower. Not for floats: their
    repr is slow, and so is Postgres parsing them.
    """
    return "{" + ",".join(map(str, values)) + "}"


async def for_live_keys(
    run: Callable[..., Awaitable[T]], statement: str, key_column: str, *args: Any
) -> T:
    """Run a batched per-key write; `{live_keys}` in `statement` is where a join with
    api_keys goes when some key of the batch no longer exists.

    A batch carries keys used moments ago. One removed outright since (with its account:
    keys themselves are only ever soft-deleted) would break the foreign key, and with it
    the whole batch. Joining api_keys on every batch costs a scan of all keys (~10 ms at
    100,000), so the batch runs without the join and, only when Postgres reports a missing
    key, once more with it (the failed attempt wrote nothing).
    """
    try:
        return await run(statement.replace("{live_keys}", ""), *args)
    except asyncpg.ForeignKeyViolationError:
        join = f"JOIN api_keys live ON live.id = {key_column}"
        return await run(statement.replace("{live_keys}", join), *args)


async def sample_pool(pool: asyncpg.Pool, name: str, interval: float = 1.0) -> None:
    """Keep the pool gauges current (multiprocess mode allows no callback gauges)."""
    try:
        while True:
            size = pool.get_size()
            metrics.DB_POOL_SIZE.labels(name).set(size)
            metrics.DB_POOL_IN_USE.labels(name).set(size - pool.get_idle_size())
            await asyncio.sleep(interval)
    finally:
        metrics.DB_POOL_SIZE.labels(name).set(0)
        metrics.DB_POOL_IN_USE.labels(name).set(0)


async def connect(config: DatabaseConfig, *, direct: bool = False) -> asyncpg.Connection:
    """One connection outside the pool. `direct`: to Postgres itself
    (`database.listen_url` when set), for what needs a session of its own, which a
    transaction-pooling PgBouncer cannot give: LISTEN, the migrations' advisory lock."""
    if direct:
        return await asyncpg.connect(config.direct_url, timeout=config.connect_timeout_seconds)
    return await asyncpg.connect(
        config.url, timeout=config.connect_timeout_seconds, **_pooler_options(config)
    )


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILENAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a number")
    return migrations


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


async def _applied(conn: asyncpg.Connection) -> dict[int, str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {row["version"]: row["checksum"] for row in rows}


def _check(migrations: list[Migration], applied: dict[int, str]) -> list[Migration]:
    """Return the pending migrations; raise if an applied one was edited or removed."""
    known = {m.version: m for m in migrations}
    for version, checksum in sorted(applied.items()):
        migration = known.get(version)
        if migration is None:
            raise MigrationError(f"migration {version:04d} is applied but its file is missing")
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {version:04d}_{migration.name}.sql was edited after it was applied"
                " (checksum differs); add a new migration instead"
            )
    return [m for m in migrations if m.version not in applied]


async def pending_migrations(
    conn: asyncpg.Connection, migrations: list[Migration] | None = None
) -> list[Migration]:
    migrations = load_migrations() if migrations is None else migrations
    with _refusals():
        return _check(migrations, await _applied(conn))


async def migrate(
    conn: asyncpg.Connection, migrations: list[Migration] | None = None
) -> list[Migration]:
    """Apply every pending migration; return those applied by this call."""
    migrations = load_migrations() if migrations is None else migrations
    with _refusals():
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            await conn.execute(_CREATE_TABLE)
            pending = _check(migrations, await _applied(conn))
            for migration in pending:
                try:
                    await _apply(conn, migration)
                except asyncpg.PostgresError as exc:
                    raise MigrationError(
                        f"{migration.version:04d}_{migration.name}.sql failed and was rolled"
                        f" back: {type(exc).__name__}: {exc}"
                    ) from exc
                log.info(
                    "applied migration",
                    extra={"migration": f"{migration.version:04d}_{migration.name}"},
                )
            return pending
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """Postgres refusing the runner's own statements (a read-only session or standby, a
    role without CREATE on the schema or SELECT on schema_migrations) is a MigrationError,
    reported in one line like a failing file, not a traceback."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        raise MigrationError(
            f"the database refused the migrations runner: {type(exc).__name__}: {exc}"
        ) from exc


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    async with conn.transaction():
        await conn.execute(migration.sql)
        if not conn.is_in_transaction():
            # A COMMIT or ROLLBACK of the file's own ended the transaction the runner gave
            # it: the record below would be written outside it, whatever the file left.
            raise MigrationError(
                f"{migration.version:04d}_{migration.name}.sql ended its transaction itself"
                " (a COMMIT or ROLLBACK of its own): not recorded; a migration must hold"
                " none, the runner gives each file one transaction"
            )
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            migration.version,
            migration.name,
            migration.checksum,
        )
