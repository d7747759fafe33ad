"""The audit log: writing an event beside each change, and `GET /v1/audit-log`.

`record()` runs inside the transaction of the change it describes, so a change without
its event (or an event without its change) cannot be committed.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from typing import Any

import asyncpg
from aiohttp import web

from gateway.accounts import AuditEvent, audit, audit_page

from . import paging
from . import validation as v
from .auth import PRINCIPAL, Principal
from .state import POOL

USER_AGENT_MAX = 512


def client_ip(request: web.Request) -> str | None:
    # The admin listener is private (127.0.0.1 by default): the peer is the client.
    remote = request.remote
    if not remote:
        return None
    try:
        return str(ipaddress.ip_address(remote))
    except ValueError:
        return None  # a Unix socket path, not an address


def user_agent(request: web.Request) -> str | None:
    value = request.headers.get("User-Agent")
    if value is None:
        return None
    # Header bytes that are not UTF-8 arrive as surrogates, which Postgres cannot store.
    clean = value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
    return clean[:USER_AGENT_MAX]


async def record(
    conn: asyncpg.Connection,
    request: web.Request,
    action: str,
    target_type: str,
    target_id: uuid.UUID | None,
    details: dict[str, Any] | None = None,
    *,
    account_id: uuid.UUID | None = None,
) -> None:
    principal: Principal = request[PRINCIPAL]
    await audit(
        conn,
        account_id if account_id is not None else principal.account_id,
        principal.kind,
        principal.actor_id,
        action,
        target_type,
        target_id,
        client_ip=client_ip(request),
        user_agent=user_agent(request),
        details=details,
    )


def event_object(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "at": v.rfc3339(event.at),
        "actor": {
            "type": event.actor_type,
            "id": None if event.actor_id is None else str(event.actor_id),
        },
        "action": event.action,
        "target": {
            "type": event.target_type,
            "id": None if event.target_id is None else str(event.target_id),
        },
        "client_ip": event.client_ip,
        "user_agent": event.user_agent,
        "details": event.details,
    }


def _before(value: Any) -> int:
    (ident,) = paging.decode_cursor(str(value), "audit", 2)
    if not (ident.isascii() and ident.isdigit()) or len(ident) > 18:
        raise v.FieldError("not a cursor from this API")
    return int(ident)


def _uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise v.FieldError("must be an id (UUID)") from None


def _action(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z_]{1,40}\.[a-z_]{1,40}", value):
        raise v.FieldError("must be an action such as key.regenerate")
    return value


async def list_events(request: web.Request) -> web.Response:
    fields = v.query(request, {"limit", "cursor", "actor", "action", "key"})
    limit = paging.page_limit(fields)
    before = fields.get("cursor", _before)
    actor_id = fields.get("actor", _uuid)
    action = fields.get("action", _action)
    key_id = fields.get("key", _uuid)
    fields.check()
    async with request.app[POOL].acquire() as conn:
        events = await audit_page(
            conn,
            request[PRINCIPAL].account_id,
            limit=limit + 1,
            before=before,
            actor_id=actor_id,
            action=action,
            key_id=key_id,
        )
    page = events[:limit]
    next_cursor = paging.encode_cursor("audit", str(page[-1].id)) if len(events) > limit else None
    return web.json_response({"items": [event_object(e) for e in page], "next_cursor": next_cursor})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/audit-log", list_events, allow_head=False)
