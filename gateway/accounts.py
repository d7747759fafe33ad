"""Accounts and members: the SQL behind `gateway bootstrap` and the admin API.

A member's admin token has the same layout as an API key with its own prefix (`gpa_`), so
the same parser refuses mistyped tokens without I/O, and only its argon2id hash is stored.

Every change here is meant to run inside the caller's transaction together with its
`audit()` event, so the change and its trail commit or roll back as one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from typing import Any

import asyncpg

from .config import ADMIN_TOKEN_PREFIX
from .keyformat import Hasher, KeyFormat

ADMIN_TOKEN_FORMAT = KeyFormat(ADMIN_TOKEN_PREFIX)
ROLES = ("owner", "admin", "readonly")


@dataclasses.dataclass(frozen=True, slots=True)
class NewAccount:
    account_id: uuid.UUID
    member_id: uuid.UUID
    token: str


async def new_member_token(hasher: Hasher) -> tuple[str, str, str]:
    """(token, public id, hash) for a new admin token."""
    token, parts = ADMIN_TOKEN_FORMAT.generate()
    return token, parts.public_id, await hasher.hash_async(parts.secret)


async def create_account(
    pool: asyncpg.Pool,
    hasher: Hasher,
    name: str,
    owner_email: str,
    *,
    owner_name: str = "",
    actor_type: str = "operator",
    client_ip: str | None = None,
    user_agent: str | None = None,
) -> NewAccount:
    token, public_id, token_hash = await new_member_token(hasher)
    async with pool.acquire() as conn, conn.transaction():
        account_id = await conn.fetchval(
            "INSERT INTO accounts (name) VALUES ($1) RETURNING id", name
        )
        member_id = await conn.fetchval(
            """
            INSERT INTO members (account_id, email, name, role, token_public_id, token_hash)
            VALUES ($1, $2, $3, 'owner', $4, $5) RETURNING id
            """,
            account_id,
            owner_email,
            owner_name,
            public_id,
            token_hash,
        )
        await audit(
            conn,
            account_id,
            actor_type,
            None,
            "account.create",
            "account",
            account_id,
            client_ip=client_ip,
            user_agent=user_agent,
            details={"name": name, "owner_email": owner_email},
        )
    return NewAccount(account_id, member_id, token)


async def audit(
    conn: asyncpg.Connection,
    account_id: uuid.UUID | None,
    actor_type: str,
    actor_id: uuid.UUID | None,
    action: str,
    target_type: str,
    target_id: uuid.UUID | None,
    *,
    client_ip: str | None = None,
    user_agent: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """One audit event; call it inside the transaction of the change it records."""
    await conn.execute(
        """
        INSERT INTO audit_log (account_id, actor_type, actor_id, action, target_type,
                               target_id, client_ip, user_agent, details)
        VALUES ($1, $2, $3, $4, $5, $6, $7::inet, $8, $9::jsonb)
        """,
        account_id,
        actor_type,
        actor_id,
        action,
        target_type,
        target_id,
        client_ip,
        user_agent,
        json.dumps(details or {}),
    )


# -- reading and changing accounts, members and the audit log (the admin API) --------


@dataclasses.dataclass(frozen=True, slots=True)
class Account:
    id: uuid.UUID
    name: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    id: uuid.UUID
    account_id: uuid.UUID
    email: str
    name: str
    role: str
    created_at: dt.datetime
    token_created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    at: dt.datetime
    actor_type: str
    actor_id: uuid.UUID | None
    action: str
    target_type: str
    target_id: uuid.UUID | None
    client_ip: str | None
    user_agent: str | None
    details: dict[str, Any]


class DuplicateMember(Exception):
    """A member with this email already belongs to the account."""


_MEMBER_COLUMNS = "id, account_id, email, name, role, created_at, token_created_at"


def _member(row: asyncpg.Record) -> Member:
    return Member(
        row["id"],
        row["account_id"],
        row["email"],
        row["name"],
        row["role"],
        row["created_at"],
        row["token_created_at"],
    )


def _account(row: asyncpg.Record) -> Account:
    return Account(row["id"], row["name"], row["created_at"])


async def get_account(conn: asyncpg.Connection, account_id: uuid.UUID) -> Account | None:
    row = await conn.fetchrow("SELECT id, name, created_at FROM accounts WHERE id = $1", account_id)
    return None if row is None else _account(row)


async def list_accounts(
    conn: asyncpg.Connection, *, limit: int, after: tuple[dt.datetime, uuid.UUID] | None
) -> list[Account]:
    """Oldest first; `after` is the (created_at, id) of the previous page's last account."""
    after_at, after_id = after if after is not None else (None, None)
    rows = await conn.fetch(
        """
        SELECT id, name, created_at FROM accounts
         WHERE $1::timestamptz IS NULL OR (created_at, id) > ($1, $2::uuid)
         ORDER BY created_at, id
         LIMIT $3
        """,
        after_at,
        after_id,
        limit,
    )
    return [_account(row) for row in rows]


async def member_by_token_id(
    conn: asyncpg.Connection | asyncpg.Pool, token_public_id: str
) -> tuple[Member, str] | None:
    """The member holding the admin token with this public id, and the token's hash."""
    row = await conn.fetchrow(
        f"SELECT {_MEMBER_COLUMNS}, token_hash FROM members WHERE token_public_id = $1",  # noqa: S608
        token_public_id,
    )
    return None if row is None else (_member(row), row["token_hash"])


async def get_member(
    conn: asyncpg.Connection, account_id: uuid.UUID, member_id: uuid.UUID
) -> Member | None:
    row = await conn.fetchrow(
        f"SELECT {_MEMBER_COLUMNS} FROM members WHERE id = $1 AND account_id = $2",  # noqa: S608
        member_id,
        account_id,
    )
    return None if row is None else _member(row)


async def list_members(
    conn: asyncpg.Connection,
    account_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[dt.datetime, uuid.UUID] | None,
) -> list[Member]:
    """Oldest first (the first Owner leads); `after` as in `list_accounts`."""
    after_at, after_id = after if after is not None else (None, None)
    rows = await conn.fetch(
        f"""
        SELECT {_MEMBER_COLUMNS} FROM members
         WHERE account_id = $1
           AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
         ORDER BY created_at, id
         LIMIT $4
        """,  # noqa: S608 - constant column list
        account_id,
        after_at,
        after_id,
        limit,
    )
    return [_member(row) for row in rows]


async def lock_account(conn: asyncpg.Connection, account_id: uuid.UUID) -> None:
    """Serialise membership changes of one account until the transaction ends.

    Without it two Owners demoting each other at the same moment could both see another
    Owner left and leave the account with none.
    """
    await conn.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", account_id)


async def hold_member(
    conn: asyncpg.Connection, account_id: uuid.UUID, member_id: uuid.UUID
) -> bool:
    """Keep this member's row until the transaction ends; False if it is gone.

    FOR KEY SHARE is the lock a foreign key check takes: a removal that comes later
    waits for this transaction, and one that committed first leaves nothing to hold.
    """
    held = await conn.fetchval(
        "SELECT 1 FROM members WHERE id = $1 AND account_id = $2 FOR KEY SHARE",
        member_id,
        account_id,
    )
    return held is not None


async def owner_count(conn: asyncpg.Connection, account_id: uuid.UUID) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM members WHERE account_id = $1 AND role = 'owner'", account_id
    )
    return count


async def add_member(
    conn: asyncpg.Connection,
    hasher: Hasher,
    account_id: uuid.UUID,
    *,
    email: str,
    name: str,
    role: str,
) -> tuple[Member, str]:
    """A new member and its admin token (the only time the token exists)."""
    token, public_id, token_hash = await new_member_token(hasher)
    try:
        async with conn.transaction():  # a savepoint: the caller's transaction survives
            row = await conn.fetchrow(
                f"""
                INSERT INTO members (account_id, email, name, role, token_public_id, token_hash)
                VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_MEMBER_COLUMNS}
                """,  # noqa: S608 - constant column list
                account_id,
                email,
                name,
                role,
                public_id,
                token_hash,
            )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "members_account_email":
            raise DuplicateMember(email) from None
        raise
    return _member(row), token


async def update_member(
    conn: asyncpg.Connection,
    account_id: uuid.UUID,
    member_id: uuid.UUID,
    *,
    name: str | None = None,
    role: str | None = None,
) -> Member | None:
    row = await conn.fetchrow(
        f"""
        UPDATE members SET name = coalesce($3, name), role = coalesce($4, role)
         WHERE id = $1 AND account_id = $2
        RETURNING {_MEMBER_COLUMNS}
        """,  # noqa: S608 - constant column list
        member_id,
        account_id,
        name,
        role,
    )
    return None if row is None else _member(row)


async def remove_member(
    conn: asyncpg.Connection, account_id: uuid.UUID, member_id: uuid.UUID
) -> bool:
    status = await conn.execute(
        "DELETE FROM members WHERE id = $1 AND account_id = $2", member_id, account_id
    )
    return bool(status == "DELETE 1")


async def replace_member_token(
    conn: asyncpg.Connection, hasher: Hasher, account_id: uuid.UUID, member_id: uuid.UUID
) -> tuple[Member, str] | None:
    """A new admin token for a member of this account; the old one stops working."""
    token, public_id, token_hash = await new_member_token(hasher)
    row = await conn.fetchrow(
        f"""
        UPDATE members SET token_public_id = $3, token_hash = $4, token_created_at = now()
         WHERE id = $1 AND account_id = $2
        RETURNING {_MEMBER_COLUMNS}
        """,  # noqa: S608 - constant column list
        member_id,
        account_id,
        public_id,
        token_hash,
    )
    return None if row is None else (_member(row), token)


async def audit_page(
    conn: asyncpg.Connection,
    account_id: uuid.UUID,
    *,
    limit: int,
    before: int | None,
    actor_id: uuid.UUID | None = None,
    action: str | None = None,
    key_id: uuid.UUID | None = None,
) -> list[AuditEvent]:
    """Newest first; `before` is the id of the previous page's last event. The filters
    (who acted, what was done, on which key) are optional and combine."""
    rows = await conn.fetch(
        """
        SELECT id, at, actor_type, actor_id, action, target_type, target_id,
               host(client_ip) AS client_ip, user_agent, details::text AS details
          FROM audit_log
         WHERE account_id = $1 AND ($2::bigint IS NULL OR id < $2)
           AND ($4::uuid IS NULL OR actor_id = $4)
           AND ($5::text IS NULL OR action = $5)
           AND ($6::uuid IS NULL OR (target_type = 'key' AND target_id = $6))
         ORDER BY id DESC
         LIMIT $3
        """,
        account_id,
        before,
        limit,
        actor_id,
        action,
        key_id,
    )
    return [
        AuditEvent(
            row["id"],
            row["at"],
            row["actor_type"],
            row["actor_id"],
            row["action"],
            row["target_type"],
            row["target_id"],
            row["client_ip"],
            row["user_agent"],
            json.loads(row["details"]),
        )
        for row in rows
    ]
