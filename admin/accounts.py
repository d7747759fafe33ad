"""Accounts: the operator creates and lists them; a member reads its own (`/v1/account`).

`/v1/me` answers who the calling member is.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import accounts
from gateway.accounts import Account

from . import paging
from . import validation as v
from .audit import client_ip, user_agent
from .auth import PRINCIPAL
from .keys import NO_STORE
from .members import member_object
from .state import HASHER, POOL


def account_object(account: Account) -> dict[str, Any]:
    return {
        "id": str(account.id),
        "name": account.name,
        "created_at": v.rfc3339(account.created_at),
    }


async def create_account(request: web.Request) -> web.Response:
    fields = v.Fields(await v.json_body(request), {"name", "owner_email"})
    name = fields.get("name", v.name, required=True)
    owner_email = fields.get("owner_email", v.email, required=True)
    fields.check()
    assert name is not None and owner_email is not None
    pool = request.app[POOL]
    # One transaction inside: the account, its first Owner and the audit event.
    created = await accounts.create_account(
        pool,
        request.app[HASHER],
        name,
        owner_email,
        actor_type="operator",
        client_ip=client_ip(request),
        user_agent=user_agent(request),
    )
    async with pool.acquire() as conn:
        account = await accounts.get_account(conn, created.account_id)
        owner = await accounts.get_member(conn, created.account_id, created.member_id)
    assert account is not None and owner is not None
    return web.json_response(
        {"account": account_object(account), "owner": member_object(owner), "token": created.token},
        status=201,
        headers=NO_STORE,
    )


async def list_accounts(request: web.Request) -> web.Response:
    fields = v.query(request, {"limit", "cursor"})
    limit = paging.page_limit(fields)
    after = fields.get("cursor", paging.time_cursor("account"))
    fields.check()
    async with request.app[POOL].acquire() as conn:
        found = await accounts.list_accounts(conn, limit=limit + 1, after=after)
    page, next_cursor = paging.time_page("account", found, limit)
    return web.json_response(
        {"items": [account_object(a) for a in page], "next_cursor": next_cursor}
    )


async def me(request: web.Request) -> web.Response:
    member = request[PRINCIPAL].member
    assert member is not None
    return web.json_response(member_object(member))


async def my_account(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        account = await accounts.get_account(conn, request[PRINCIPAL].account_id)
    if account is None:  # deleted between authentication and now
        raise v.not_found("account")
    return web.json_response(account_object(account))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/accounts", create_account)
    app.router.add_get("/v1/accounts", list_accounts, allow_head=False)
    app.router.add_get("/v1/me", me, allow_head=False)
    app.router.add_get("/v1/account", my_account, allow_head=False)
