"""`/v1/webhooks`: an account's webhook endpoints, their secrets and delivery logs (Owners).

The signing secret is in the create and rotate-secret responses only (`no-store`). A URL
is checked when saved (http(s), no credentials; unless `webhooks.allow_private_targets`,
public addresses only) and again by the deliverer at every connection. Every change
writes its audit event in its transaction. Delivery logs are per endpoint, newest first;
"resend" queues the same message (same `webhook-id`) once more.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from aiohttp import web

from gateway.errors import GatewayError
from gateway.webhooks import CHANNEL, EVENTS, UnsafeTarget, check_target, new_secret

from . import paging
from . import validation as v
from .audit import record
from .auth import PRINCIPAL, hold_caller
from .keys import NO_STORE
from .state import CONFIG, POOL

MAX_ENDPOINTS = 20
MAX_GRACE_SECONDS = 7 * 24 * 3600

_ENDPOINT_COLUMNS = "id, url, events, enabled, created_at, created_by, secret_created_at"
_DELIVERY_COLUMNS = """
    d.id, e.msg_id, e.type, d.status, d.attempts, d.response_status, d.response_body,
    d.last_error, d.latency_ms, d.created_at, d.last_attempt_at, d.next_attempt_at,
    d.delivered_at
"""


def endpoint_object(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "url": row["url"],
        "events": list(row["events"]),
        "enabled": row["enabled"],
        "created_at": v.rfc3339(row["created_at"]),
        "created_by": None if row["created_by"] is None else str(row["created_by"]),
        "secret_created_at": v.rfc3339(row["secret_created_at"]),
    }


def delivery_object(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "webhook_id": row["msg_id"],
        "event_type": row["type"],
        "status": row["status"],
        "attempts": row["attempts"],
        "response_status": row["response_status"],
        "response_body": row["response_body"],
        "last_error": row["last_error"],
        "latency_ms": row["latency_ms"],
        "created_at": v.rfc3339(row["created_at"]),
        "last_attempt_at": v.rfc3339(row["last_attempt_at"]),
        "next_attempt_at": v.rfc3339(row["next_attempt_at"])
        if row["status"] == "pending"
        else None,
        "delivered_at": v.rfc3339(row["delivered_at"]),
    }


def events(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise v.FieldError("must be a non-empty list of event types")
    unknown = [e for e in value if e not in EVENTS]
    if unknown:
        raise v.FieldError(f"unknown event {unknown[0]!r} (one of {', '.join(EVENTS)})")
    if len(set(value)) != len(value):
        raise v.FieldError("must not repeat an event")
    return sorted(value)


def url_text(value: Any) -> str:
    if not isinstance(value, str):
        raise v.FieldError("must be a string")
    return value


async def _checked_url(request: web.Request, fields: v.Fields, url: str | None) -> None:
    """The target check needs DNS: run it once the other fields are known to be fine."""
    if url is None:
        return
    try:
        await check_target(url, request.app[CONFIG].webhooks.allow_private_targets)
    except UnsafeTarget as exc:
        fields.fail("url", str(exc))


def _webhook_id(request: web.Request) -> uuid.UUID:
    return v.path_id(request, "webhook")


async def _endpoint(
    conn: asyncpg.Connection,
    account_id: uuid.UUID,
    webhook_id: uuid.UUID,
    *,
    for_update: bool = False,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints"  # noqa: S608 - constant columns
        " WHERE id = $1 AND account_id = $2" + (" FOR UPDATE" if for_update else ""),
        webhook_id,
        account_id,
    )
    if row is None:
        raise v.not_found("webhook")
    return row


async def list_webhooks(request: web.Request) -> web.Response:
    fields = v.query(request, {"limit", "cursor"})
    limit = paging.page_limit(fields)
    after = fields.get("cursor", paging.time_cursor("webhook"))
    fields.check()
    after_at, after_id = after if after is not None else (None, None)
    async with request.app[POOL].acquire() as conn:
        rows = await conn.fetch(
            f"""
            SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints
             WHERE account_id = $1
               AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
             ORDER BY created_at, id
             LIMIT $4
            """,  # noqa: S608 - constant column list
            request[PRINCIPAL].account_id,
            after_at,
            after_id,
            limit + 1,
        )
    page = rows[:limit]
    next_cursor = (
        paging.make_time_cursor("webhook", page[-1]["created_at"], page[-1]["id"])
        if len(rows) > limit
        else None
    )
    return web.json_response(
        {"items": [endpoint_object(r) for r in page], "next_cursor": next_cursor}
    )


async def create_webhook(request: web.Request) -> web.Response:
    who = request[PRINCIPAL]
    fields = v.Fields(await v.json_body(request), {"url", "events", "enabled"})
    url = fields.get("url", url_text, required=True)
    event_types = fields.get("events", events, required=True)
    enabled = fields.get("enabled", v.boolean)
    fields.check()
    await _checked_url(request, fields, url)
    fields.check()
    secret = new_secret()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", who.account_id
        )  # counts below stay true until commit
        # The endpoint names its creator. After the account, as a member's removal locks
        # them: the same order, so neither waits for the other in a circle.
        await hold_caller(conn, who)
        count = await conn.fetchval(
            "SELECT count(*) FROM webhook_endpoints WHERE account_id = $1", who.account_id
        )
        if count >= MAX_ENDPOINTS:
            raise GatewayError(
                409, "conflict", f"An account has at most {MAX_ENDPOINTS} webhook endpoints."
            )
        row = await conn.fetchrow(
            f"""
            INSERT INTO webhook_endpoints (account_id, url, events, enabled, secret, created_by)
            VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_ENDPOINT_COLUMNS}
            """,  # noqa: S608 - constant column list
            who.account_id,
            url,
            event_types,
            True if enabled is None else enabled,
            secret,
            who.actor_id,
        )
        await record(
            conn,
            request,
            "webhook.create",
            "webhook",
            row["id"],
            {"url": url, "events": event_types},
        )
    return web.json_response(
        {**endpoint_object(row), "secret": secret},
        status=201,
        headers={**NO_STORE, "Location": f"/v1/webhooks/{row['id']}"},
    )


async def get_webhook(request: web.Request) -> web.Response:
    webhook_id = _webhook_id(request)
    async with request.app[POOL].acquire() as conn:
        row = await _endpoint(conn, request[PRINCIPAL].account_id, webhook_id)
    return web.json_response(endpoint_object(row))


async def update_webhook(request: web.Request) -> web.Response:
    who = request[PRINCIPAL]
    webhook_id = _webhook_id(request)
    body = await v.json_body(request)
    fields = v.Fields(body, {"url", "events", "enabled"})
    url = fields.get("url", url_text)
    event_types = fields.get("events", events)
    enabled = fields.get("enabled", v.boolean)
    if not body:
        fields.fail("body", "name at least one field to change")
    fields.check()
    async with request.app[POOL].acquire() as conn:
        await _endpoint(conn, who.account_id, webhook_id)  # 404 before any DNS work
    await _checked_url(request, fields, url)
    fields.check()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        current = await _endpoint(conn, who.account_id, webhook_id, for_update=True)
        wanted = {"url": url, "events": event_types, "enabled": enabled}
        changes = {k: val for k, val in wanted.items() if val is not None and val != current[k]}
        if not changes:  # nothing to write, so no audit event
            return web.json_response(endpoint_object(current))
        row = await conn.fetchrow(
            f"""
            UPDATE webhook_endpoints
               SET url = coalesce($3, url), events = coalesce($4, events),
                   enabled = coalesce($5, enabled)
             WHERE id = $1 AND account_id = $2
            RETURNING {_ENDPOINT_COLUMNS}
            """,  # noqa: S608 - constant column list
            webhook_id,
            who.account_id,
            url,
            event_types,
            enabled,
        )
        await record(conn, request, "webhook.update", "webhook", webhook_id, {"changes": changes})
    return web.json_response(endpoint_object(row))


async def delete_webhook(request: web.Request) -> web.Response:
    who = request[PRINCIPAL]
    webhook_id = _webhook_id(request)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        url = await conn.fetchval(
            "DELETE FROM webhook_endpoints WHERE id = $1 AND account_id = $2 RETURNING url",
            webhook_id,
            who.account_id,
        )
        if url is None:
            raise v.not_found("webhook")
        await record(conn, request, "webhook.delete", "webhook", webhook_id, {"url": url})
    return web.Response(status=204)


async def rotate_secret(request: web.Request) -> web.Response:
    who = request[PRINCIPAL]
    webhook_id = _webhook_id(request)
    fields = v.Fields(await v.json_body(request, required=False), {"grace_seconds"})
    grace = fields.get(
        "grace_seconds", lambda value: v.integer(value, minimum=0, maximum=MAX_GRACE_SECONDS)
    )
    fields.check()
    secret = new_secret()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""
            UPDATE webhook_endpoints
               SET previous_secret = CASE WHEN $4 > 0 THEN secret END,
                   previous_secret_expires_at =
                       CASE WHEN $4 > 0 THEN now() + make_interval(secs => $4) END,
                   secret = $3, secret_created_at = now()
             WHERE id = $1 AND account_id = $2
            RETURNING {_ENDPOINT_COLUMNS}
            """,  # noqa: S608 - constant column list
            webhook_id,
            who.account_id,
            secret,
            grace or 0,
        )
        if row is None:
            raise v.not_found("webhook")
        await record(
            conn,
            request,
            "webhook.rotate_secret",
            "webhook",
            webhook_id,
            {"grace_seconds": grace or 0},
        )
    return web.json_response({**endpoint_object(row), "secret": secret}, headers=NO_STORE)


def _delivery_cursor(value: Any) -> int:
    (ident,) = paging.decode_cursor(str(value), "delivery", 2)
    if not (ident.isascii() and ident.isdigit()) or len(ident) > 18:
        raise v.FieldError("not a cursor from this API")
    return int(ident)


async def list_deliveries(request: web.Request) -> web.Response:
    who = request[PRINCIPAL]
    webhook_id = _webhook_id(request)
    fields = v.query(request, {"limit", "cursor"})
    limit = paging.page_limit(fields)
    before = fields.get("cursor", _delivery_cursor)
    fields.check()
    async with request.app[POOL].acquire() as conn:
        await _endpoint(conn, who.account_id, webhook_id)
        rows = await conn.fetch(
            f"""
            SELECT {_DELIVERY_COLUMNS}
              FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
             WHERE d.endpoint_id = $1 AND ($2::bigint IS NULL OR d.id < $2)
             ORDER BY d.id DESC
             LIMIT $3
            """,  # noqa: S608 - constant column list
            webhook_id,
            before,
            limit + 1,
        )
    page = rows[:limit]
    next_cursor = (
        paging.encode_cursor("delivery", str(page[-1]["id"])) if len(rows) > limit else None
    )
    return web.json_response(
        {"items": [delivery_object(r) for r in page], "next_cursor": next_cursor}
    )


async def resend(request: web.Request) -> web.Response:
    who = request[PRINCIPAL]
    webhook_id = _webhook_id(request)
    raw = request.match_info["delivery_id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or raw != str(int(raw)):
        raise v.not_found("delivery")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await _endpoint(conn, who.account_id, webhook_id)
        new_id = await conn.fetchval(
            """
            INSERT INTO webhook_deliveries (endpoint_id, event_id, subject)
            SELECT endpoint_id, event_id, subject FROM webhook_deliveries
             WHERE id = $1 AND endpoint_id = $2
            RETURNING id
            """,
            int(raw),
            webhook_id,
        )
        if new_id is None:
            raise v.not_found("delivery")
        await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
        row = await conn.fetchrow(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries d"  # noqa: S608
            " JOIN webhook_events e ON e.id = d.event_id WHERE d.id = $1",
            new_id,
        )
        await record(
            conn,
            request,
            "webhook.resend",
            "webhook",
            webhook_id,
            {"delivery_id": raw, "webhook_id": row["msg_id"]},
        )
    return web.json_response(delivery_object(row), status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/webhooks", list_webhooks, allow_head=False)
    app.router.add_post("/v1/webhooks", create_webhook)
    app.router.add_get("/v1/webhooks/{id}", get_webhook, allow_head=False)
    app.router.add_patch("/v1/webhooks/{id}", update_webhook)
    app.router.add_delete("/v1/webhooks/{id}", delete_webhook)
    app.router.add_post("/v1/webhooks/{id}/rotate-secret", rotate_secret)
    app.router.add_get("/v1/webhooks/{id}/deliveries", list_deliveries, allow_head=False)
    app.router.add_post("/v1/webhooks/{id}/deliveries/{delivery_id}/resend", resend)
