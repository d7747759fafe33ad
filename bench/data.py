"""The bench's database: where it runs, and the account and keys the scenarios use.

Owns starting an embedded Postgres (unless DATABASE_URL is set), migrating it, and making
the keys: one hot key, the bulk keys (cheap argon2, inserted in one COPY) and, on demand,
keys with the default argon2 parameters for the cold path. Every key gets rate limits
that never bite, so the limiter runs on every request without refusing one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

from gateway.accounts import create_account
from gateway.config import DEFAULT_PERMISSIONS, Argon2Config
from gateway.db import migrate
from gateway.embedded_pg import EmbeddedPostgres
from gateway.keyformat import Hasher, KeyFormat
from gateway.keys import KeyStore

HIGH = 10**9  # rate limits that never bite: the limiter still runs on every request
# Bulk keys are hashed with argon2's cheapest parameters so that setting up 100,000 keys
# and warming 10,000 of them takes seconds, not an hour; the hash records its parameters,
# so the gateway verifies each with what it was made with. The cold-path figures use keys
# made with the default (OWASP) parameters.
CHEAP_ARGON2 = Argon2Config(time_cost=1, memory_kib=8, parallelism=1)
BULK_COLUMNS = [
    "id",
    "account_id",
    "public_id",
    "name",
    "partial_key",
    "secret_hash",
    "rate_limit_per_minute",
    "rate_limit_per_day",
    "permissions",
]
# Every key may call every route of the default table (and of the 200-route one).
PERMISSIONS = sorted(DEFAULT_PERMISSIONS)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What the scenarios need from the database: the account, its hot key, the bulk."""

    account_id: uuid.UUID
    owner_token: str
    hot: str
    bulk: list[str]
    bulk_ids: list[uuid.UUID]


@contextlib.contextmanager
def database() -> Iterator[tuple[str, EmbeddedPostgres | None]]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url, None
        return
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="gateway-bench-")) / "pg", fast_unsafe=True)
    pg.start()
    pg.psql("DROP DATABASE IF EXISTS bench")
    try:
        yield pg.create_database("bench"), pg
    finally:
        pg.stop()


async def prepare_database(url: str, bulk: int) -> Prepared:
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    owasp = Hasher(Argon2Config())
    account = await create_account(pool, owasp, "Benchmark", "bench@example.com")
    store = KeyStore(pool, KeyFormat("gp_"), owasp)
    hot = await store.create(
        account.account_id,
        "hot",
        rate_limit_per_minute=HIGH,
        rate_limit_per_day=HIGH,
        permissions=PERMISSIONS,
    )
    keys, rows = _bulk_rows(account.account_id, bulk)
    async with pool.acquire() as c:
        await c.copy_records_to_table("api_keys", records=rows, columns=BULK_COLUMNS)
        await c.execute("ANALYZE api_keys")
    await pool.close()
    return Prepared(
        account_id=account.account_id,
        owner_token=account.token,
        hot=hot.key,
        bulk=keys,
        bulk_ids=[r[0] for r in rows],
    )


def _bulk_rows(account_id: uuid.UUID, count: int) -> tuple[list[str], list[tuple[Any, ...]]]:
    """`count` new keys, and their `api_keys` rows in BULK_COLUMNS' order."""
    cheap = Hasher(CHEAP_ARGON2)
    fmt = KeyFormat("gp_")
    keys: list[str] = []
    rows = []
    for _ in range(count):
        key, parts = fmt.generate()
        keys.append(key)
        rows.append(
            (
                uuid.uuid4(),
                account_id,
                parts.public_id,
                "bulk",
                fmt.partial(key),
                cheap.hash(parts.secret),
                HIGH,
                HIGH,
                PERMISSIONS,
            )
        )
    return keys, rows


async def new_owasp_keys(url: str, account_id: uuid.UUID, count: int) -> list[str]:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    store = KeyStore(pool, KeyFormat("gp_"), Hasher(Argon2Config()))
    keys = [
        (
            await store.create(
                account_id,
                "cold",
                rate_limit_per_minute=HIGH,
                rate_limit_per_day=HIGH,
                permissions=PERMISSIONS,
            )
        ).key
        for _ in range(count)
    ]
    await pool.close()
    return keys
