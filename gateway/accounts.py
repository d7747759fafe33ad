"""Accounts and members: the SQL behind `gateway bootstrap` and the admin API.

A member's admin token has the same layout as an API key with its own prefix (`gpa_`), so
the same parser refuses mistyped tokens without I/O, and only its argon2id hash is stored.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import asyncpg

from .keys import Hasher, KeyFormat

ADMIN_TOKEN_FORMAT = KeyFormat("gpa_")
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


async def regenerate_member_token(
    conn: asyncpg.Connection, hasher: Hasher, member_id: uuid.UUID
) -> str | None:
    token, public_id, token_hash = await new_member_token(hasher)
    updated = await conn.fetchval(
        "UPDATE members SET token_public_id = $2, token_hash = $3, token_created_at = now()"
        " WHERE id = $1 RETURNING id",
        member_id,
        public_id,
        token_hash,
    )
    return token if updated else None


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
