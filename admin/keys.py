"""`/v1/keys`: the key lifecycle — create, list, get, patch, regenerate, delete.

All SQL on `api_keys` stays in `gateway.keys.KeyStore`; this module checks input, runs
each change and its audit event in one transaction, and shapes the key object of SPEC §6.
The schema's triggers NOTIFY every gateway process from that same transaction.
The full key is in the create and regenerate responses only, sent with `no-store`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from gateway import metrics
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.records import KeyInfo, NewKey
from gateway.webhooks import emit, key_data

from . import paging
from . import validation as v
from .audit import record
from .auth import PRINCIPAL, hold_caller
from .state import CONFIG, POOL, STORE

NO_STORE = {"Cache-Control": "no-store"}
_LIMIT_FIELDS = ("per_minute", "per_day")


def key_status(info: KeyInfo, now: dt.datetime) -> str:
    if not info.enabled:
        return "disabled"
    if info.expires_at is not None and info.expires_at <= now:
        return "expired"
    return "active"


def key_object(info: KeyInfo, config: Config, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or dt.datetime.now(dt.UTC)
    rotation_due = now - info.secret_created_at >= dt.timedelta(days=config.keys.rotation_days)
    return {
        "id": str(info.id),
        "name": info.name,
        "partial_key": info.partial_key,
        "created_at": v.rfc3339(info.created_at),
        "created_by": None if info.created_by is None else str(info.created_by),
        "last_used_at": v.rfc3339(info.last_used_at),
        "regenerated_at": v.rfc3339(info.regenerated_at),
        "expires_at": v.rfc3339(info.expires_at),
        "enabled": info.enabled,
        "permissions": list(info.permissions),
        "rate_limit": {
            "per_minute": info.rate_limit_per_minute or config.rate_limits.per_minute,
            "per_day": info.rate_limit_per_day or config.rate_limits.per_day,
        },
        "ip_allowlist": list(info.ip_allowlist),
        "rotation_due": rotation_due,
        "status": key_status(info, now),
        "leaked_at": v.rfc3339(info.leaked_at),
        "leak_url": info.leak_url,
    }


def _with_secret(info: KeyInfo, new: NewKey, config: Config) -> dict[str, Any]:
    return {**key_object(info, config), "key": new.key}


def _limits(fields: v.Fields) -> dict[str, int | None]:
    """`rate_limit` overrides: a number sets one, null (or a null object) clears them."""
    if not fields.has("rate_limit"):
        return {}
    if fields.data["rate_limit"] is None:
        return {f"rate_limit_{name}": None for name in _LIMIT_FIELDS}
    limits = fields.nested("rate_limit", _LIMIT_FIELDS)
    if limits is None:
        return {}
    return {
        f"rate_limit_{name}": limits.get(name, v.positive_limit, nullable=True)
        for name in _LIMIT_FIELDS
        if limits.has(name)
    }


def _permissions(fields: v.Fields, config: Config) -> list[str] | None:
    """`permissions`, or the deprecated `scopes` mapped to them; None when neither."""
    defined = list(config.permissions)
    if fields.has("scopes"):
        if fields.has("permissions"):
            fields.fail("scopes", "give permissions only (scopes is its deprecated alias)")
            return None
        return fields.get("scopes", v.legacy_scopes(defined))
    return fields.get("permissions", v.permissions(defined))


_CREATE_FIELDS = {"name", "permissions", "scopes", "rate_limit", "ip_allowlist", "expires_at"}
_PATCH_FIELDS = {*_CREATE_FIELDS, "enabled"}


async def create_key(request: web.Request) -> web.Response:
    who = request[PRINCIPAL]
    fields = v.Fields(await v.json_body(request), _CREATE_FIELDS)
    name = fields.get("name", v.name, required=True)
    permissions = _permissions(fields, request.app[CONFIG])
    limits = _limits(fields)
    allowlist = fields.get("ip_allowlist", v.cidrs)
    expires_at = fields.get("expires_at", v.future_timestamp, nullable=True)
    fields.check()
    assert name is not None
    store, config = request.app[STORE], request.app[CONFIG]
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await hold_caller(conn, who)  # the key names its creator
        new = await store.create(
            who.account_id,
            name,
            created_by=who.actor_id,
            # Default: every permission the route table defines, listed on the key.
            permissions=list(config.permissions) if permissions is None else permissions,
            ip_allowlist=allowlist or (),
            rate_limit_per_minute=limits.get("rate_limit_per_minute"),
            rate_limit_per_day=limits.get("rate_limit_per_day"),
            expires_at=expires_at,
            conn=conn,
        )
        info = await store.get(who.account_id, new.id, conn=conn)
        assert info is not None
        await record(conn, request, "key.create", "key", new.id, {"name": name})
        await emit(conn, who.account_id, "key.created", f"key:{new.id}", {"key": key_data(info)})
    metrics.KEY_LIFECYCLE.labels("created").inc()
    return web.json_response(
        _with_secret(info, new, request.app[CONFIG]),
        status=201,
        headers={**NO_STORE, "Location": f"/v1/keys/{new.id}"},
    )


async def list_keys(request: web.Request) -> web.Response:
    fields = v.query(request, {"limit", "cursor"})
    limit = paging.page_limit(fields)
    after = fields.get("cursor", paging.time_cursor("key"))
    fields.check()
    keys = await request.app[STORE].list_page(
        request[PRINCIPAL].account_id, limit=limit + 1, after=after
    )
    page, next_cursor = paging.time_page("key", keys, limit)
    config, now = request.app[CONFIG], dt.datetime.now(dt.UTC)
    return web.json_response(
        {"items": [key_object(k, config, now) for k in page], "next_cursor": next_cursor}
    )


async def get_key(request: web.Request) -> web.Response:
    key_id = v.path_id(request, "key")
    info = await request.app[STORE].get(request[PRINCIPAL].account_id, key_id)
    if info is None:
        raise v.not_found("key")
    return web.json_response(key_object(info, request.app[CONFIG]))


async def update_key(request: web.Request) -> web.Response:
    who = request[PRINCIPAL]
    key_id = v.path_id(request, "key")
    body = await v.json_body(request)
    fields = v.Fields(body, _PATCH_FIELDS)
    changes: dict[str, Any] = {}
    if fields.has("name"):
        changes["name"] = fields.get("name", v.name)
    permissions = _permissions(fields, request.app[CONFIG])
    if permissions is not None:
        changes["permissions"] = permissions
    changes.update(_limits(fields))
    if fields.has("ip_allowlist"):
        changes["ip_allowlist"] = fields.get("ip_allowlist", v.cidrs)
    if fields.has("expires_at"):
        changes["expires_at"] = fields.get("expires_at", v.future_timestamp, nullable=True)
    if fields.has("enabled"):
        changes["enabled"] = fields.get("enabled", v.boolean)
    if not body:
        fields.fail("body", "name at least one field to change")
    if body.get("rate_limit") == {}:
        fields.fail("rate_limit", "name per_minute or per_day (null clears it), or be null")
    fields.check()
    store, config = request.app[STORE], request.app[CONFIG]
    async with request.app[POOL].acquire() as conn, conn.transaction():
        current = await store.get(who.account_id, key_id, conn=conn, for_update=True)
        if current is None:
            raise v.not_found("key")
        if changes.get("enabled") is True and current.leaked_at is not None:
            raise leaked("it cannot be enabled again")
        # Only what differs from the key as it is: the audit event and the webhook list
        # those fields, and a PATCH that changes nothing writes neither.
        changes = {k: val for k, val in changes.items() if val != _setting(current, k)}
        if not changes:
            return web.json_response(key_object(current, config))
        info = await store.update(who.account_id, key_id, changes, conn=conn)
        assert info is not None  # the row is locked: still there
        logged = {k: _loggable(val) for k, val in changes.items()}
        await record(conn, request, "key.update", "key", key_id, {"changes": logged})
        await emit(
            conn,
            who.account_id,
            "key.updated",
            f"key:{key_id}",
            {"key": key_data(info), "changes": sorted(logged)},
        )
    metrics.KEY_LIFECYCLE.labels("updated").inc()
    return web.json_response(key_object(info, config))


def _setting(info: KeyInfo, column: str) -> Any:
    """A key's value of an updatable column, in the form `update_key` checks it into."""
    value = getattr(info, column)
    return list(value) if isinstance(value, tuple) else value


def leaked(action: str) -> GatewayError:
    return GatewayError(
        409,
        "key_leaked",
        f"This key's secret was found leaked: {action}. Regenerate it (without grace_seconds)"
        " to get a new secret; the leaked one never works again.",
    )


def _loggable(value: Any) -> Any:
    return v.rfc3339(value) if isinstance(value, dt.datetime) else value


async def regenerate_key(request: web.Request) -> web.Response:
    who = request[PRINCIPAL]
    key_id = v.path_id(request, "key")
    fields = v.Fields(await v.json_body(request, required=False), {"grace_seconds"})
    grace = fields.get(
        "grace_seconds",
        lambda value: v.integer(value, minimum=0, maximum=v.MAX_GRACE_SECONDS),
    )
    fields.check()
    store = request.app[STORE]
    async with request.app[POOL].acquire() as conn, conn.transaction():
        if grace:
            exists, leaked_at = await store.leaked_at(conn, who.account_id, key_id)
            if exists and leaked_at is not None:
                raise leaked("its old secret may not be kept valid")
        new = await store.regenerate(who.account_id, key_id, grace_seconds=grace or 0, conn=conn)
        if new is None:
            raise v.not_found("key")
        info = await store.get(who.account_id, key_id, conn=conn)
        assert info is not None
        await record(conn, request, "key.regenerate", "key", key_id, {"grace_seconds": grace or 0})
        await emit(
            conn,
            who.account_id,
            "key.regenerated",
            f"key:{key_id}",
            {"key": key_data(info), "grace_seconds": grace or 0},
        )
    metrics.KEY_LIFECYCLE.labels("regenerated").inc()
    return web.json_response(_with_secret(info, new, request.app[CONFIG]), headers=NO_STORE)


async def delete_key(request: web.Request) -> web.Response:
    who = request[PRINCIPAL]
    key_id = v.path_id(request, "key")
    store = request.app[STORE]
    async with request.app[POOL].acquire() as conn, conn.transaction():
        info = await store.get(who.account_id, key_id, conn=conn)
        if info is None or not await store.delete(who.account_id, key_id, conn=conn):
            raise v.not_found("key")
        await record(conn, request, "key.delete", "key", key_id)
        await emit(conn, who.account_id, "key.deleted", f"key:{key_id}", {"key": key_data(info)})
    metrics.KEY_LIFECYCLE.labels("deleted").inc()
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/keys", list_keys, allow_head=False)
    app.router.add_post("/v1/keys", create_key)
    app.router.add_get("/v1/keys/{id}", get_key, allow_head=False)
    app.router.add_patch("/v1/keys/{id}", update_key)
    app.router.add_delete("/v1/keys/{id}", delete_key)
    app.router.add_post("/v1/keys/{id}/regenerate", regenerate_key)
