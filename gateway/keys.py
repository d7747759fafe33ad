"""The key store: every statement on `api_keys`.

It returns the records of `gateway.records`; the token format and its argon2id hashing
are `gateway.keyformat`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from .db import for_live_keys
from .keyformat import Hasher, KeyFormat
from .records import INFO_COLUMNS, RECORD_COLUMNS, KeyInfo, KeyRecord, NewKey, key_info, key_record

# The settings `KeyStore.update` may change; the keys double as column names.
UPDATABLE_COLUMNS = frozenset(
    {
        "name",
        "permissions",
        "ip_allowlist",
        "rate_limit_per_minute",
        "rate_limit_per_day",
        "expires_at",
        "enabled",
    }
)


class KeyStore:
    """Every query on `api_keys`. The notify triggers in the schema tell the gateways."""

    def __init__(self, pool: asyncpg.Pool, key_format: KeyFormat, hasher: Hasher) -> None:
        self.pool = pool
        self.format = key_format
        self.hasher = hasher

    async def lookup(self, public_id: str) -> KeyRecord | None:
        """The live key with this public id (deleted keys are never returned)."""
        row = await self.pool.fetchrow(
            f"SELECT {RECORD_COLUMNS} FROM api_keys WHERE public_id = $1 AND deleted_at IS NULL",  # noqa: S608 - constant column list
            public_id,
        )
        return None if row is None else key_record(row)

    async def lookup_many(self, public_ids: Iterable[str]) -> dict[str, KeyRecord]:
        """The live keys among these public ids, in one query."""
        rows = await self.pool.fetch(
            f"SELECT {RECORD_COLUMNS} FROM api_keys"  # noqa: S608 - constant column list
            " WHERE public_id = ANY($1::text[]) AND deleted_at IS NULL",
            list(public_ids),
        )
        return {record.public_id: record for record in map(key_record, rows)}

    async def create(
        self,
        account_id: uuid.UUID,
        name: str,
        *,
        created_by: uuid.UUID | None = None,
        permissions: Iterable[str],
        ip_allowlist: Sequence[str] = (),
        rate_limit_per_minute: int | None = None,
        rate_limit_per_day: int | None = None,
        expires_at: dt.datetime | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> NewKey:
        key, parts = self.format.generate()
        secret_hash = await self.hasher.hash_async(parts.secret)
        executor: Any = conn or self.pool
        key_id = await executor.fetchval(
            """
            INSERT INTO api_keys (account_id, public_id, name, partial_key, secret_hash,
                                  created_by, permissions, ip_allowlist, rate_limit_per_minute,
                                  rate_limit_per_day, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8::cidr[], $9, $10, $11)
            RETURNING id
            """,
            account_id,
            parts.public_id,
            name,
            self.format.partial(key),
            secret_hash,
            created_by,
            sorted(set(permissions)),
            list(ip_allowlist),
            rate_limit_per_minute,
            rate_limit_per_day,
            expires_at,
        )
        return NewKey(key_id, parts.public_id, self.format.partial(key), key)

    async def regenerate(
        self,
        account_id: uuid.UUID,
        key_id: uuid.UUID,
        *,
        grace_seconds: int = 0,
        conn: asyncpg.Connection | None = None,
    ) -> NewKey | None:
        """Replace the secret; the old one dies now, or after `grace_seconds`."""
        executor: Any = conn or self.pool
        public_id = await executor.fetchval(
            "SELECT public_id FROM api_keys"
            " WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL",
            key_id,
            account_id,
        )
        if public_id is None:
            return None
        key, parts = self.format.generate(public_id)
        secret_hash = await self.hasher.hash_async(parts.secret)
        updated = await executor.fetchval(
            """
            UPDATE api_keys
               SET previous_secret_hash = CASE WHEN $4 > 0 THEN secret_hash END,
                   previous_secret_expires_at =
                       CASE WHEN $4 > 0 THEN now() + make_interval(secs => $4) END,
                   secret_hash = $3, partial_key = $5,
                   secret_created_at = now(), regenerated_at = now(),
                   -- The leaked secret is gone: so is the leak (its audit events stay).
                   leaked_at = NULL, leak_url = NULL
             WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL
            RETURNING id
            """,
            key_id,
            account_id,
            secret_hash,
            grace_seconds,
            self.format.partial(key),
        )
        if updated is None:
            return None
        return NewKey(key_id, public_id, self.format.partial(key), key)

    async def delete(
        self,
        account_id: uuid.UUID,
        key_id: uuid.UUID,
        *,
        conn: asyncpg.Connection | None = None,
    ) -> bool:
        """Permanent: the hash is erased and the key never authenticates or lists again."""
        executor: Any = conn or self.pool
        status = await executor.execute(
            """
            UPDATE api_keys
               SET deleted_at = now(), secret_hash = NULL,
                   previous_secret_hash = NULL, previous_secret_expires_at = NULL
             WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL
            """,
            key_id,
            account_id,
        )
        return bool(status == "UPDATE 1")

    async def leaked_at(
        self, conn: asyncpg.Connection, account_id: uuid.UUID, key_id: uuid.UUID
    ) -> tuple[bool, dt.datetime | None]:
        """(exists, leaked_at) of a live key, its row locked until the transaction ends."""
        row = await conn.fetchrow(
            "SELECT leaked_at FROM api_keys"
            " WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL FOR UPDATE",
            key_id,
            account_id,
        )
        return (False, None) if row is None else (True, row["leaked_at"])

    async def mark_leaked(
        self,
        conn: asyncpg.Connection,
        key_id: uuid.UUID,
        url: str | None,
        action: str,
        *,
        secret_hash: str | None = None,
    ) -> bool:
        """Record a leak of a live key and apply `action` (disable, revoke, report).

        `secret_hash`: the hash the leaked secret was verified against; the leak is
        recorded only while that secret still works. A regenerate that commits between
        the verification and this statement replaced it: the new secret was not leaked.

        Disable and revoke change columns the notify trigger watches: every gateway
        process hears of it when the caller's transaction commits.
        """
        # Re-checked on the row as it is once its lock is ours (READ COMMITTED).
        status = await conn.execute(
            """
            UPDATE api_keys
               SET leaked_at = coalesce(leaked_at, now()), leak_url = $2,
                   enabled = enabled AND $3 = 'report'
             WHERE id = $1 AND deleted_at IS NULL
               AND ($4::text IS NULL OR secret_hash = $4
                    OR (previous_secret_hash = $4 AND previous_secret_expires_at > now()))
            """,
            key_id,
            url,
            action,
            secret_hash,
        )
        if status != "UPDATE 1":
            return False
        if action == "revoke":
            account_id = await conn.fetchval(
                "SELECT account_id FROM api_keys WHERE id = $1", key_id
            )
            await self.delete(account_id, key_id, conn=conn)
        return True

    async def set_enabled(self, account_id: uuid.UUID, key_id: uuid.UUID, enabled: bool) -> bool:
        status = await self.pool.execute(
            "UPDATE api_keys SET enabled = $3"
            " WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL",
            key_id,
            account_id,
            enabled,
        )
        return bool(status == "UPDATE 1")

    async def get(
        self,
        account_id: uuid.UUID,
        key_id: uuid.UUID,
        *,
        conn: asyncpg.Connection | None = None,
        for_update: bool = False,
    ) -> KeyInfo | None:
        """One live key of this account; None for deleted keys and other accounts' ids.
        `for_update`: its row stays locked until `conn`'s transaction ends."""
        executor: Any = conn or self.pool
        row = await executor.fetchrow(
            f"SELECT {INFO_COLUMNS} FROM api_keys"  # noqa: S608 - constant column list
            " WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL"
            + (" FOR UPDATE" if for_update else ""),
            key_id,
            account_id,
        )
        return None if row is None else key_info(row)

    async def list_page(
        self,
        account_id: uuid.UUID,
        *,
        limit: int,
        after: tuple[dt.datetime, uuid.UUID] | None = None,
    ) -> list[KeyInfo]:
        """Live keys newest first; `after` is the (created_at, id) of the previous page's last."""
        after_at, after_id = after if after is not None else (None, None)
        rows = await self.pool.fetch(
            f"""
            SELECT {INFO_COLUMNS} FROM api_keys
             WHERE account_id = $1 AND deleted_at IS NULL
               AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
             ORDER BY created_at DESC, id DESC
             LIMIT $4
            """,  # noqa: S608 - constant column list
            account_id,
            after_at,
            after_id,
            limit,
        )
        return [key_info(row) for row in rows]

    async def update(
        self,
        account_id: uuid.UUID,
        key_id: uuid.UUID,
        changes: dict[str, Any],
        *,
        conn: asyncpg.Connection | None = None,
    ) -> KeyInfo | None:
        """Change settings (keys from `UPDATABLE_COLUMNS`); the trigger tells the gateways."""
        unknown = set(changes) - UPDATABLE_COLUMNS
        if unknown:
            raise ValueError(f"not updatable: {', '.join(sorted(unknown))}")
        executor: Any = conn or self.pool
        if not changes:
            return await self.get(account_id, key_id, conn=conn)
        columns = sorted(changes)
        assignments = ", ".join(
            f"{column} = ${i}" + ("::cidr[]" if column == "ip_allowlist" else "")
            for i, column in enumerate(columns, start=3)
        )
        row = await executor.fetchrow(
            f"UPDATE api_keys SET {assignments}"  # noqa: S608 - columns from a fixed set
            f" WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL RETURNING {INFO_COLUMNS}",
            key_id,
            account_id,
            *(sorted(set(changes[c])) if c == "permissions" else changes[c] for c in columns),
        )
        return None if row is None else key_info(row)

    async def record_last_used(self, used: dict[uuid.UUID, float]) -> None:
        """One statement for every key used since the last flush (times in seconds since
        the epoch, sent as they are: no datetime made per key); never moves backwards."""
        await for_live_keys(
            self.pool.execute,
            """
            INSERT INTO api_key_last_used AS l (key_id, last_used_at)
            SELECT u.id, to_timestamp(u.at)
              FROM unnest($1::uuid[], $2::float8[]) AS u(id, at)
              {live_keys}
             ORDER BY u.id  -- one lock order in every process: no deadlocks between them
            ON CONFLICT (key_id) DO UPDATE SET last_used_at = EXCLUDED.last_used_at
             WHERE l.last_used_at < EXCLUDED.last_used_at
            """,
            "u.id",
            list(used),
            list(used.values()),
        )
