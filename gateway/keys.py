"""API keys: the format, argon2id hashing, and the key store (all SQL on `api_keys`).

A key reads `gp_` + public id (12) + secret (28) + checksum (6), all base62 after the prefix:

- the public id is stored in clear and indexed: it finds the row in one lookup;
- the secret carries 28 × log2(62) ≈ 166 bits from `secrets`; only its argon2id hash is kept;
- the checksum is the CRC32 of everything before it, in base62 (GitHub-token style), so a
  mistyped or invented key is refused without touching the database, and secret scanners
  can recognise a real key.

CRC32 catches every error confined to 32 consecutive bits, so every single-character
change to a key is detected; base62 with 6 digits is injective over 32-bit values.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ipaddress
import secrets
import uuid
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import argon2
import asyncpg

from .config import SCOPES, Argon2Config
from .db import for_live_keys

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PUBLIC_ID_LENGTH = 12
SECRET_LENGTH = 28
CHECKSUM_LENGTH = 6

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


# Every two-digit base-62 number, so a checksum takes three divisions, not six: the
# checksum is computed on every request.
_BASE62_PAIRS = [a + b for a in BASE62 for b in BASE62]


def _checksum(body: str) -> str:
    value = zlib.crc32(body.encode())  # < 2**32 < 62**6: six digits always suffice
    value, low = divmod(value, 3844)
    high, middle = divmod(value, 3844)
    return _BASE62_PAIRS[high] + _BASE62_PAIRS[middle] + _BASE62_PAIRS[low]


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedKey:
    public_id: str
    secret: str


@dataclasses.dataclass(frozen=True, slots=True)
class KeyFormat:
    """One token family: API keys (`gp_`) and admin tokens share the layout."""

    prefix: str
    length: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        length = len(self.prefix) + PUBLIC_ID_LENGTH + SECRET_LENGTH + CHECKSUM_LENGTH
        object.__setattr__(self, "length", length)

    def generate(self, public_id: str | None = None) -> tuple[str, ParsedKey]:
        """A new key (or a new secret for `public_id`): the full key and its parts."""
        public_id = public_id or _random_base62(PUBLIC_ID_LENGTH)
        secret = _random_base62(SECRET_LENGTH)
        body = self.prefix + public_id + secret
        return body + _checksum(body), ParsedKey(public_id, secret)

    def parse(self, token: str) -> ParsedKey | None:
        """The parts of a well-formed key with a valid checksum, else None. No I/O."""
        if len(token) != self.length or not token.startswith(self.prefix):
            return None
        rest = token[len(self.prefix) :]
        if not (rest.isascii() and rest.isalnum()):  # ASCII letters and digits: base 62
            return None
        body, checksum = token[:-CHECKSUM_LENGTH], token[-CHECKSUM_LENGTH:]
        if _checksum(body) != checksum:
            return None
        return ParsedKey(rest[:PUBLIC_ID_LENGTH], rest[PUBLIC_ID_LENGTH:-CHECKSUM_LENGTH])

    def partial(self, token: str) -> str:
        """What "Copy" copies: identifies the key and its generation, never usable."""
        return f"{token[: len(self.prefix) + PUBLIC_ID_LENGTH]}…{token[-4:]}"


class Hasher:
    """argon2id with OWASP's parameters by default (m=19456 KiB, t=2, p=1)."""

    def __init__(self, config: Argon2Config) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=config.time_cost,
            memory_cost=config.memory_kib,
            parallelism=config.parallelism,
            type=argon2.Type.ID,
        )

    def hash(self, secret: str) -> str:
        return self._hasher.hash(secret)

    def verify(self, secret_hash: str, secret: str) -> bool:
        try:
            return self._hasher.verify(secret_hash, secret)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    async def hash_async(self, secret: str) -> str:
        # argon2-cffi releases the GIL: hashing in a thread keeps the loop responsive.
        return await asyncio.get_running_loop().run_in_executor(None, self.hash, secret)


@dataclasses.dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the gateway needs to authenticate and authorise one key."""

    id: uuid.UUID
    account_id: uuid.UUID
    public_id: str
    secret_hash: str
    previous_secret_hash: str | None
    previous_secret_expires_at: dt.datetime | None
    scopes: frozenset[str]
    ip_allowlist: tuple[IPNetwork, ...]
    rate_limit_per_minute: int | None
    rate_limit_per_day: int | None
    expires_at: dt.datetime | None
    enabled: bool
    # The ids as text, made once per key rather than per request (~1 µs each): the access
    # log and the identity headers use them.
    id_text: str = dataclasses.field(init=False, repr=False, compare=False)
    account_id_text: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: fields made here are set once, like the others
        set_(self, "id_text", str(self.id))
        set_(self, "account_id_text", str(self.account_id))

    def accepts_hash(self, secret_hash: str, now: dt.datetime) -> bool:
        """Is a secret verified against `secret_hash` still a valid secret of this key?"""
        if secret_hash == self.secret_hash:
            return True
        return (
            secret_hash == self.previous_secret_hash
            and self.previous_secret_expires_at is not None
            and now < self.previous_secret_expires_at
        )

    def candidate_hashes(self, now: dt.datetime) -> list[str]:
        hashes = [self.secret_hash]
        if self.previous_secret_hash and self.accepts_hash(self.previous_secret_hash, now):
            hashes.append(self.previous_secret_hash)
        return hashes


RECORD_COLUMNS = """
    id, account_id, public_id, secret_hash, previous_secret_hash, previous_secret_expires_at,
    scopes, ip_allowlist, rate_limit_per_minute, rate_limit_per_day, expires_at, enabled
"""


def key_record(row: asyncpg.Record) -> KeyRecord:
    """A `KeyRecord` from a row selected with `RECORD_COLUMNS`."""
    return KeyRecord(
        id=row["id"],
        account_id=row["account_id"],
        public_id=row["public_id"],
        secret_hash=row["secret_hash"],
        previous_secret_hash=row["previous_secret_hash"],
        previous_secret_expires_at=row["previous_secret_expires_at"],
        scopes=frozenset(row["scopes"]),
        ip_allowlist=tuple(row["ip_allowlist"]),
        rate_limit_per_minute=row["rate_limit_per_minute"],
        rate_limit_per_day=row["rate_limit_per_day"],
        expires_at=row["expires_at"],
        enabled=row["enabled"],
    )


@dataclasses.dataclass(frozen=True, slots=True)
class KeyInfo:
    """A live key as the admin API shows it: every setting, no hash."""

    id: uuid.UUID
    account_id: uuid.UUID
    public_id: str
    name: str
    partial_key: str
    created_at: dt.datetime
    created_by: uuid.UUID | None
    secret_created_at: dt.datetime
    regenerated_at: dt.datetime | None
    last_used_at: dt.datetime | None
    expires_at: dt.datetime | None
    enabled: bool
    scopes: tuple[str, ...]
    ip_allowlist: tuple[str, ...]
    rate_limit_per_minute: int | None
    rate_limit_per_day: int | None
    leaked_at: dt.datetime | None = None
    leak_url: str | None = None


_INFO_COLUMNS = """
    id, account_id, public_id, name, partial_key, created_at, created_by, secret_created_at,
    regenerated_at, expires_at, enabled, scopes, ip_allowlist,
    rate_limit_per_minute, rate_limit_per_day, leaked_at, leak_url,
    (SELECT l.last_used_at FROM api_key_last_used l WHERE l.key_id = api_keys.id)
        AS last_used_at
"""

# The settings `KeyStore.update` may change; the keys double as column names.
UPDATABLE_COLUMNS = frozenset(
    {
        "name",
        "scopes",
        "ip_allowlist",
        "rate_limit_per_minute",
        "rate_limit_per_day",
        "expires_at",
        "enabled",
    }
)


def _info(row: asyncpg.Record) -> KeyInfo:
    return KeyInfo(
        id=row["id"],
        account_id=row["account_id"],
        public_id=row["public_id"],
        name=row["name"],
        partial_key=row["partial_key"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        secret_created_at=row["secret_created_at"],
        regenerated_at=row["regenerated_at"],
        last_used_at=row["last_used_at"],
        expires_at=row["expires_at"],
        enabled=row["enabled"],
        scopes=tuple(sorted(row["scopes"])),
        ip_allowlist=tuple(str(network) for network in row["ip_allowlist"]),
        rate_limit_per_minute=row["rate_limit_per_minute"],
        rate_limit_per_day=row["rate_limit_per_day"],
        leaked_at=row["leaked_at"],
        leak_url=row["leak_url"],
    )


@dataclasses.dataclass(frozen=True, slots=True)
class NewKey:
    """A key as just created or regenerated: the only time `key` exists."""

    id: uuid.UUID
    public_id: str
    partial_key: str
    key: str


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
        scopes: Iterable[str] = SCOPES,
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
                                  created_by, scopes, ip_allowlist, rate_limit_per_minute,
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
            sorted(set(scopes)),
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
        self, conn: asyncpg.Connection, key_id: uuid.UUID, url: str | None, action: str
    ) -> bool:
        """Record a leak of a live key and apply `action` (disable, revoke, report).

        Disable and revoke change columns the notify trigger watches: every gateway
        process hears of it when the caller's transaction commits.
        """
        status = await conn.execute(
            """
            UPDATE api_keys
               SET leaked_at = coalesce(leaked_at, now()), leak_url = $2,
                   enabled = enabled AND $3 = 'report'
             WHERE id = $1 AND deleted_at IS NULL
            """,
            key_id,
            url,
            action,
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
    ) -> KeyInfo | None:
        """One live key of this account; None for deleted keys and other accounts' ids."""
        executor: Any = conn or self.pool
        row = await executor.fetchrow(
            f"SELECT {_INFO_COLUMNS} FROM api_keys"  # noqa: S608 - constant column list
            " WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL",
            key_id,
            account_id,
        )
        return None if row is None else _info(row)

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
            SELECT {_INFO_COLUMNS} FROM api_keys
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
        return [_info(row) for row in rows]

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
            f" WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL RETURNING {_INFO_COLUMNS}",
            key_id,
            account_id,
            *(sorted(set(changes[c])) if c == "scopes" else changes[c] for c in columns),
        )
        return None if row is None else _info(row)

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
