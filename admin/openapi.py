"""`GET /openapi.json`: the admin API described as an OpenAPI 3.1 document.

Built from the same constants the handlers use (the role table in `auth.POLICY`, the
patterns and bounds in `validation`), so the description and the behaviour cannot drift
apart silently; the tests validate the document, check real responses against it and
run schemathesis on it.
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from gateway.config import DEFAULT_PERMISSIONS

from . import paging
from .auth import OPERATOR, POLICY
from .schemas import JSON, TIME, UUID, ref, schemas
from .state import CONFIG
from .webhook_schemas import webhook_schemas


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": ref("Error")}}}


_RESPONSES = {
    "BadRequest": _error(
        "validation_error (each offending field listed in error.fields), invalid_json (also"
        " a body that does not decode under its Content-Encoding), or invalid_request (refused"
        " by the HTTP parser)."
    ),
    "Unauthorized": {
        **_error("missing_token or invalid_token: no valid admin token."),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    "Forbidden": _error("forbidden: the token's role may not do this."),
    "TooManyFailedAttempts": {
        **_error(
            "too_many_failed_attempts: this address or token id failed authentication too"
            " often (rate_limits.failed_auth); retry after Retry-After seconds."
        ),
        "headers": {"Retry-After": {"schema": {"type": "string"}}},
    },
    "NotFound": _error("not_found: no such id in your account (other accounts' ids too)."),
    "Conflict": _error("The change would break a rule (last_owner, conflict, key_leaked)."),
    "TooLarge": _error("request_too_large: the body is over 64 KiB."),
    "UnsupportedMediaType": _error("unsupported_media_type: send application/json."),
}

_PARAMETERS = {
    "Id": {"name": "id", "in": "path", "required": True, "schema": UUID},
    "Limit": {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": paging.PAGE_MAX, "default": 50},
    },
    "Cursor": {
        "name": "cursor",
        "in": "query",
        "schema": {"type": "string"},
        "description": "next_cursor of the previous page.",
    },
    "From": {
        "name": "from",
        "in": "query",
        "schema": TIME,
        "description": "RFC 3339; default: 24 hours before `to`.",
    },
    "DeliveryId": {
        "name": "delivery_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,17}$"},
    },
    "AuditActor": {
        "name": "actor",
        "in": "query",
        "schema": UUID,
        "description": "Only events by this member.",
    },
    "AuditAction": {
        "name": "action",
        "in": "query",
        "schema": {"type": "string", "pattern": "^[a-z_]{1,40}[.][a-z_]{1,40}$"},
        "description": "Only this action, e.g. key.regenerate.",
    },
    "AuditKey": {
        "name": "key",
        "in": "query",
        "schema": UUID,
        "description": "Only events about this key.",
    },
    "To": {
        "name": "to",
        "in": "query",
        "schema": TIME,
        "description": "RFC 3339; default: now. At most 93 days after `from`.",
    },
}


def _operation(
    method: str,
    path: str,
    summary: str,
    *,
    ok: tuple[int, str | None, str],
    body: str | None = None,
    body_required: bool = True,
    params: tuple[str, ...] = (),
    conflict: bool = False,
) -> tuple[str, str, dict[str, Any]]:
    roles = sorted(POLICY[(method.upper(), path)])
    status, schema, description = ok
    success: dict[str, Any] = {"description": description}
    if schema is not None:
        success["content"] = {JSON: {"schema": ref(schema)}}
    responses: dict[str, Any] = {str(status): success}
    if body is not None or params:
        responses["400"] = {"$ref": "#/components/responses/BadRequest"}
    responses["401"] = {"$ref": "#/components/responses/Unauthorized"}
    responses["403"] = {"$ref": "#/components/responses/Forbidden"}
    if "{id}" in path:
        responses["404"] = {"$ref": "#/components/responses/NotFound"}
    if conflict:
        responses["409"] = {"$ref": "#/components/responses/Conflict"}
    responses["429"] = {"$ref": "#/components/responses/TooManyFailedAttempts"}
    if body is not None:
        responses["413"] = {"$ref": "#/components/responses/TooLarge"}
        responses["415"] = {"$ref": "#/components/responses/UnsupportedMediaType"}
    scheme = "operatorToken" if roles == [OPERATOR] else "memberToken"
    operation: dict[str, Any] = {
        "summary": summary,
        "description": f"Allowed for: {', '.join(roles)}.",
        "operationId": f"{method}_{path}".replace("/v1/", "")
        .replace("/", "_")
        .replace("{id}", "by_id")
        .replace("{delivery_id}", "by_delivery_id")
        .replace("-", "_"),
        "security": [{scheme: []}],
        "x-roles": roles,
        "responses": responses,
    }
    parameters = [{"$ref": f"#/components/parameters/{p}"} for p in params]
    if "{id}" in path:
        parameters.insert(0, {"$ref": "#/components/parameters/Id"})
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {
            "required": body_required,
            "content": {JSON: {"schema": ref(body)}},
        }
    return method, path, operation


def _paths() -> dict[str, Any]:
    page = ("Limit", "Cursor")
    ops = [
        _operation(
            "post",
            "/v1/accounts",
            "Create an account and its first Owner (the Owner's token, once)",
            ok=(201, "AccountCreated", "Created."),
            body="AccountCreate",
        ),
        _operation(
            "get", "/v1/accounts", "List accounts", ok=(200, "AccountList", "A page."), params=page
        ),
        _operation("get", "/v1/me", "The calling member", ok=(200, "Member", "You.")),
        _operation(
            "get", "/v1/account", "The calling member's account", ok=(200, "Account", "It.")
        ),
        _operation(
            "get",
            "/v1/permissions",
            "The permissions the route table defines, with their routes",
            ok=(200, "PermissionList", "All of them, in the table's order."),
        ),
        _operation(
            "get", "/v1/members", "List members", ok=(200, "MemberList", "A page."), params=page
        ),
        _operation(
            "post",
            "/v1/members",
            "Add a member (its admin token, once)",
            ok=(201, "MemberWithToken", "Created."),
            body="MemberCreate",
            conflict=True,
        ),
        _operation(
            "patch",
            "/v1/members/{id}",
            "Change a member's role or name (the last Owner cannot be demoted)",
            ok=(200, "Member", "Changed."),
            body="MemberUpdate",
            conflict=True,
        ),
        _operation(
            "delete",
            "/v1/members/{id}",
            "Remove a member (not the last Owner); its token stops working at once",
            ok=(204, None, "Removed."),
            conflict=True,
        ),
        _operation(
            "post",
            "/v1/members/{id}/regenerate-token",
            "Issue a member a new admin token (once); the old one stops working at once",
            ok=(200, "MemberWithToken", "The new token."),
        ),
        _operation("get", "/v1/keys", "List API keys", ok=(200, "KeyList", "A page."), params=page),
        _operation(
            "post",
            "/v1/keys",
            "Create an API key (the full key, once)",
            ok=(201, "KeyWithSecret", "Created."),
            body="KeyCreate",
        ),
        _operation("get", "/v1/keys/{id}", "One API key", ok=(200, "Key", "The key.")),
        _operation(
            "patch",
            "/v1/keys/{id}",
            "Change a key's name, permissions, limits, allowlist, expiry or enabled (a leaked "
            "key cannot be enabled again: 409 key_leaked)",
            ok=(200, "Key", "Changed."),
            body="KeyUpdate",
            conflict=True,
        ),
        _operation(
            "post",
            "/v1/keys/{id}/regenerate",
            "New secret, same key (the full key, once); the old secret stops working at once "
            "or after grace_seconds",
            ok=(200, "KeyWithSecret", "The new key."),
            body="KeyRegenerate",
            body_required=False,
            conflict=True,
        ),
        _operation(
            "delete",
            "/v1/keys/{id}",
            "Delete a key for good: refused at once, gone from listings",
            ok=(204, None, "Deleted."),
        ),
        _operation(
            "get",
            "/v1/keys/{id}/usage",
            "Hourly request counts by outcome",
            ok=(200, "Usage", "Counts."),
            params=("From", "To"),
        ),
        _operation(
            "get",
            "/v1/usage",
            "The account's hourly counts by outcome, and its busiest and most failing keys",
            ok=(200, "AccountUsage", "Counts."),
            params=("From", "To", "Limit"),
        ),
        _operation(
            "get",
            "/v1/webhooks",
            "List webhook endpoints",
            ok=(200, "WebhookList", "A page."),
            params=page,
        ),
        _operation(
            "post",
            "/v1/webhooks",
            "Add a webhook endpoint (its signing secret, once)",
            ok=(201, "WebhookWithSecret", "Created."),
            body="WebhookCreate",
            conflict=True,
        ),
        _operation("get", "/v1/webhooks/{id}", "One webhook endpoint", ok=(200, "Webhook", "It.")),
        _operation(
            "patch",
            "/v1/webhooks/{id}",
            "Change an endpoint's URL, events or enabled",
            ok=(200, "Webhook", "Changed."),
            body="WebhookUpdate",
        ),
        _operation(
            "delete",
            "/v1/webhooks/{id}",
            "Remove an endpoint and its delivery log",
            ok=(204, None, "Removed."),
        ),
        _operation(
            "post",
            "/v1/webhooks/{id}/rotate-secret",
            "New signing secret (once); the old one signs too for grace_seconds",
            ok=(200, "WebhookWithSecret", "The new secret."),
            body="WebhookRotate",
            body_required=False,
        ),
        _operation(
            "get",
            "/v1/webhooks/{id}/deliveries",
            "The endpoint's delivery log, newest first",
            ok=(200, "DeliveryList", "A page."),
            params=page,
        ),
        _operation(
            "post",
            "/v1/webhooks/{id}/deliveries/{delivery_id}/resend",
            "Send a delivery's message again (same webhook-id), as a new delivery",
            ok=(202, "Delivery", "Queued."),
            params=("DeliveryId",),
        ),
        _operation(
            "get",
            "/v1/audit-log",
            "Audit events, newest first",
            ok=(200, "AuditLog", "A page."),
            params=(*page, "AuditActor", "AuditAction", "AuditKey"),
        ),
    ]
    paths: dict[str, Any] = {}
    for method, path, operation in ops:
        paths.setdefault(path, {})[method] = operation
    return paths


@functools.cache
def document(permissions: tuple[str, ...] = tuple(DEFAULT_PERMISSIONS)) -> dict[str, Any]:
    """The document, for a deployment with these permissions (its route table's)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "GrowPanel API gateway — admin API",
            "version": "1",
            "description": "Key lifecycle, members and roles, audit log and usage. "
            "Authenticate with 'Authorization: Bearer <admin token>' (a member's token, "
            "or the operator token from GATEWAY_OPERATOR_TOKEN for /v1/accounts). "
            'Errors are {"error": {"code", "message", "request_id"}}.',
        },
        "paths": _paths(),
        "components": {
            "schemas": {**schemas(permissions), **webhook_schemas()},
            "responses": _RESPONSES,
            "parameters": _PARAMETERS,
            "securitySchemes": {
                "memberToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A member's admin token (gpa_…); its role decides.",
                },
                "operatorToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The operator token from GATEWAY_OPERATOR_TOKEN.",
                },
            },
        },
    }


async def serve(request: web.Request) -> web.Response:
    return web.json_response(document(tuple(request.app[CONFIG].permissions)))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", serve, allow_head=False)
