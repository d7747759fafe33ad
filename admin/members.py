"""`/v1/members`: who may manage the account, with which role (Owner, Admin, Read-only).

A member's admin token is returned once, by the request that created or regenerated it.
Changes to an account's membership take a row lock on the account first, so the rule
"the last Owner cannot be removed or demoted" holds under concurrent requests too.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from aiohttp import web

from gateway import accounts
from gateway.accounts import Member
from gateway.errors import GatewayError
from gateway.webhooks import emit

from . import paging
from . import validation as v
from .audit import record
from .auth import OWNER, PRINCIPAL, Principal, forbidden
from .keys import NO_STORE
from .state import HASHER, POOL


def member_object(member: Member) -> dict[str, Any]:
    return {
        "id": str(member.id),
        "account_id": str(member.account_id),
        "email": member.email,
        "name": member.name,
        "role": member.role,
        "created_at": v.rfc3339(member.created_at),
        "token_created_at": v.rfc3339(member.token_created_at),
    }


def member_data(member: Member) -> dict[str, Any]:
    """A member as webhook events describe it (no token, ever)."""
    return {"id": str(member.id), "email": member.email, "name": member.name, "role": member.role}


def last_owner() -> GatewayError:
    return GatewayError(
        409, "last_owner", "An account keeps at least one Owner: add another Owner first."
    )


async def list_members(request: web.Request) -> web.Response:
    fields = v.query(request, {"limit", "cursor"})
    limit = paging.page_limit(fields)
    after = fields.get("cursor", paging.time_cursor("member"))
    fields.check()
    async with request.app[POOL].acquire() as conn:
        members = await accounts.list_members(
            conn, request[PRINCIPAL].account_id, limit=limit + 1, after=after
        )
    page, next_cursor = paging.time_page("member", members, limit)
    return web.json_response(
        {"items": [member_object(m) for m in page], "next_cursor": next_cursor}
    )


async def add_member(request: web.Request) -> web.Response:
    who = request[PRINCIPAL]
    fields = v.Fields(await v.json_body(request), {"email", "name", "role"})
    email = fields.get("email", v.email, required=True)
    name = fields.get("name", v.name)
    role = fields.get("role", v.role, required=True)
    fields.check()
    assert email is not None and role is not None
    async with request.app[POOL].acquire() as conn, conn.transaction():
        try:
            member, token = await accounts.add_member(
                conn, request.app[HASHER], who.account_id, email=email, name=name or "", role=role
            )
        except accounts.DuplicateMember:
            raise GatewayError(
                409, "conflict", "A member with this email already belongs to the account."
            ) from None
        await record(
            conn, request, "member.create", "member", member.id, {"email": email, "role": role}
        )
        await emit(
            conn,
            who.account_id,
            "member.added",
            f"member:{member.id}",
            {"member": member_data(member)},
        )
    return web.json_response(
        {**member_object(member), "token": token},
        status=201,
        headers={**NO_STORE, "Location": f"/v1/members/{member.id}"},
    )


async def _target(conn: asyncpg.Connection, who: Principal, member_id: uuid.UUID) -> Member:
    """The member to change, under the account's lock, by a caller still an Owner."""
    await accounts.lock_account(conn, who.account_id)
    # The role was read before the lock: a concurrent demotion of the caller wins.
    assert who.actor_id is not None
    caller = await accounts.get_member(conn, who.account_id, who.actor_id)
    if caller is None or caller.role != OWNER:
        raise forbidden()
    member = await accounts.get_member(conn, who.account_id, member_id)
    if member is None:
        raise v.not_found("member")
    return member


async def update_member(request: web.Request) -> web.Response:
    who = request[PRINCIPAL]
    member_id = v.path_id(request, "member")
    body = await v.json_body(request)
    fields = v.Fields(body, {"name", "role"})
    name = fields.get("name", v.name)
    role = fields.get("role", v.role)
    if not body:
        fields.fail("body", "name at least one field to change")
    fields.check()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        target = await _target(conn, who, member_id)
        changes: dict[str, Any] = {}
        if role is not None and role != target.role:
            changes["role"] = {"from": target.role, "to": role}
        if name is not None and name != target.name:
            changes["name"] = name
        if not changes:  # nothing to write, so no audit event and no webhook
            return web.json_response(member_object(target))
        if (
            target.role == OWNER
            and role not in (None, OWNER)
            and await accounts.owner_count(conn, who.account_id) <= 1
        ):
            raise last_owner()
        updated = await accounts.update_member(
            conn, who.account_id, member_id, name=name, role=role
        )
        assert updated is not None
        await record(conn, request, "member.update", "member", member_id, {"changes": changes})
        if "role" in changes:
            await emit(
                conn,
                who.account_id,
                "member.role_changed",
                f"member:{member_id}",
                {"member": member_data(updated), "from": target.role, "to": updated.role},
            )
    return web.json_response(member_object(updated))


async def remove_member(request: web.Request) -> web.Response:
    who = request[PRINCIPAL]
    member_id = v.path_id(request, "member")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        target = await _target(conn, who, member_id)
        if target.role == OWNER and await accounts.owner_count(conn, who.account_id) <= 1:
            raise last_owner()
        await accounts.remove_member(conn, who.account_id, member_id)
        await record(conn, request, "member.delete", "member", member_id, {"email": target.email})
        await emit(
            conn,
            who.account_id,
            "member.removed",
            f"member:{member_id}",
            {"member": member_data(target)},
        )
    return web.Response(status=204)


async def regenerate_token(request: web.Request) -> web.Response:
    who = request[PRINCIPAL]
    member_id = v.path_id(request, "member")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        replaced = await accounts.replace_member_token(
            conn, request.app[HASHER], who.account_id, member_id
        )
        if replaced is None:
            raise v.not_found("member")
        member, token = replaced
        await record(conn, request, "member.regenerate_token", "member", member_id)
    return web.json_response({**member_object(member), "token": token}, headers=NO_STORE)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/members", list_members, allow_head=False)
    app.router.add_post("/v1/members", add_member)
    app.router.add_patch("/v1/members/{id}", update_member)
    app.router.add_delete("/v1/members/{id}", remove_member)
    app.router.add_post("/v1/members/{id}/regenerate-token", regenerate_token)
