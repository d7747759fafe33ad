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

from gateway.accounts import ROLES
from gateway.config import SCOPES
from gateway.usage import OUTCOMES
from gateway.webhooks import EVENTS, URL_MAX

from . import validation as v
from .auth import OPERATOR, POLICY

JSON = "application/json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(
    properties: dict[str, Any], required: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    """A closed object: the API never sends, and never accepts, fields it does not name."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    schema["required"] = list(properties) if required is None else required
    if not schema["required"]:
        del schema["required"]
    schema.update(extra)
    return schema


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"]}


_UUID = {"type": "string", "format": "uuid"}
_TIME = {"type": "string", "format": "date-time"}
_NAME_IN = {
    "type": "string",
    "minLength": 1,
    "maxLength": v.NAME_MAX,
    "pattern": v.NAME_PATTERN,
    "description": "1–100 characters after trimming surrounding white space; no control "
    "characters. Not unique.",
}
_EMAIL_IN = {"type": "string", "maxLength": v.EMAIL_MAX, "pattern": v.EMAIL_PATTERN}
_LIMIT = {"type": "integer", "minimum": 1, "maximum": v.MAX_INT}
_SCOPES = {
    "type": "array",
    "items": {"type": "string", "enum": list(SCOPES)},
    "uniqueItems": True,
}
_CIDRS = {
    "type": "array",
    "maxItems": v.MAX_ALLOWLIST,
    "uniqueItems": True,
    "items": {"type": "string", "format": "cidr"},
    "description": "IPv4 or IPv6 networks in CIDR notation (a bare address is one host); "
    "host bits must be zero. Empty: any address.",
}
_ROLE = {"type": "string", "enum": list(ROLES)}
_URL_IN = {
    "type": "string",
    "format": "uri",
    "pattern": "^https?://",
    "maxLength": URL_MAX,
    "description": "http(s) URL, no credentials. Unless webhooks.allow_private_targets, it "
    "must resolve to public addresses only (400 otherwise).",
}
_EVENTS_IN = {
    "type": "array",
    "minItems": 1,
    "uniqueItems": True,
    "items": {"type": "string", "enum": list(EVENTS)},
}


def _schemas() -> dict[str, Any]:
    counts = {outcome: {"type": "integer", "minimum": 0} for outcome in (*OUTCOMES, "total")}
    member = {
        "id": _UUID,
        "account_id": _UUID,
        "email": {"type": "string"},
        "name": {"type": "string"},
        "role": _ROLE,
        "created_at": _TIME,
        "token_created_at": _TIME,
    }
    key = {
        "id": _UUID,
        "name": {"type": "string"},
        "partial_key": {
            "type": "string",
            "description": "Prefix, public id, '…' and the last 4 characters: what 'Copy' "
            "copies. Identifies the key and its generation; cannot be used.",
        },
        "created_at": _TIME,
        "created_by": _nullable(_UUID),
        "last_used_at": _nullable(_TIME),
        "regenerated_at": _nullable(_TIME),
        "expires_at": _nullable(_TIME),
        "enabled": {"type": "boolean"},
        "scopes": {"type": "array", "items": {"type": "string", "enum": list(SCOPES)}},
        "rate_limit": _obj(
            {"per_minute": _LIMIT, "per_day": _LIMIT},
            description="Effective limits: the key's override, else the configured default.",
        ),
        "ip_allowlist": {"type": "array", "items": {"type": "string"}},
        "rotation_due": {
            "type": "boolean",
            "description": "The secret is older than keys.rotation_days.",
        },
        "status": {"type": "string", "enum": ["active", "expired", "disabled"]},
        "leaked_at": {
            **_nullable(_TIME),
            "description": "When secret scanning first found the key's current secret in "
            "public (null: never). A leaked key cannot be enabled again; regenerate it "
            "(which clears leaked_at and leak_url).",
        },
        "leak_url": {
            "type": ["string", "null"],
            "description": "Where the leak was found (an http(s) URL), when known.",
        },
    }
    account = {"id": _UUID, "name": {"type": "string"}, "created_at": _TIME}
    webhook = {
        "id": _UUID,
        "url": {"type": "string"},
        "events": {"type": "array", "items": {"type": "string", "enum": list(EVENTS)}},
        "enabled": {"type": "boolean"},
        "created_at": _TIME,
        "created_by": _nullable(_UUID),
        "secret_created_at": _TIME,
    }
    cursor = {"type": ["string", "null"], "description": "Pass as ?cursor= for the next page."}
    rate_limit_in = _nullable(
        _obj(
            {"per_minute": _nullable(_LIMIT), "per_day": _nullable(_LIMIT)},
            required=[],
            description="Per-key overrides; null clears one (or, for the object, both).",
        )
    )
    return {
        "Error": _obj(
            {
                "error": _obj(
                    {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "request_id": {"type": "string"},
                        "fields": {
                            "type": "array",
                            "items": _obj(
                                {"field": {"type": "string"}, "message": {"type": "string"}}
                            ),
                        },
                    },
                    required=["code", "message", "request_id"],
                )
            }
        ),
        "Account": _obj(account),
        "AccountList": _obj(
            {"items": {"type": "array", "items": _ref("Account")}, "next_cursor": cursor}
        ),
        "AccountCreate": _obj({"name": _NAME_IN, "owner_email": _EMAIL_IN}),
        "AccountCreated": _obj(
            {
                "account": _ref("Account"),
                "owner": _ref("Member"),
                "token": {"type": "string", "description": "The Owner's admin token, shown once."},
            }
        ),
        "Member": _obj(member),
        "MemberWithToken": _obj(
            {**member, "token": {"type": "string", "description": "Admin token, shown once."}}
        ),
        "MemberList": _obj(
            {"items": {"type": "array", "items": _ref("Member")}, "next_cursor": cursor}
        ),
        "MemberCreate": _obj(
            {"email": _EMAIL_IN, "name": _NAME_IN, "role": _ROLE}, required=["email", "role"]
        ),
        "MemberUpdate": _obj({"name": _NAME_IN, "role": _ROLE}, required=[], minProperties=1),
        "Key": _obj(key),
        "KeyWithSecret": _obj(
            {
                **key,
                "key": {
                    "type": "string",
                    "description": "The full API key: in this response only, never again.",
                },
            }
        ),
        "KeyList": _obj({"items": {"type": "array", "items": _ref("Key")}, "next_cursor": cursor}),
        "KeyCreate": _obj(
            {
                "name": _NAME_IN,
                "scopes": {**_SCOPES, "description": "Default: every scope."},
                "rate_limit": rate_limit_in,
                "ip_allowlist": _CIDRS,
                "expires_at": {
                    **_nullable(_TIME),
                    "description": "RFC 3339, in the future; null: never.",
                },
            },
            required=["name"],
        ),
        "KeyUpdate": _obj(
            {
                "name": _NAME_IN,
                "scopes": _SCOPES,
                "rate_limit": rate_limit_in,
                "ip_allowlist": _CIDRS,
                "expires_at": {
                    **_nullable(_TIME),
                    "description": "RFC 3339, in the future; null: never.",
                },
                "enabled": {
                    "type": "boolean",
                    "description": "A disabled key gets 401 disabled_api_key until re-enabled.",
                },
            },
            required=[],
            minProperties=1,
        ),
        "KeyRegenerate": _obj(
            {
                "grace_seconds": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": v.MAX_GRACE_SECONDS,
                    "description": "Keep the old secret valid this long (default 0: it stops "
                    "working at once).",
                }
            },
            required=[],
        ),
        "UsageCounts": _obj(counts),
        "UsageHour": _obj({"hour": _TIME, **counts}),
        "Usage": _obj(
            {
                "key_id": _UUID,
                "from": _TIME,
                "to": _TIME,
                "totals": _ref("UsageCounts"),
                "items": {"type": "array", "items": _ref("UsageHour")},
            }
        ),
        "KeyUsageTotals": _obj(
            {
                "key_id": _UUID,
                "name": {"type": "string"},
                "deleted": {"type": "boolean"},
                **counts,
                "failures": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "failed_auth + denied.",
                },
            }
        ),
        "AccountUsage": _obj(
            {
                "from": _TIME,
                "to": _TIME,
                "totals": _ref("UsageCounts"),
                "items": {"type": "array", "items": _ref("UsageHour")},
                "top_by_requests": {"type": "array", "items": _ref("KeyUsageTotals")},
                "top_by_failures": {
                    "type": "array",
                    "items": _ref("KeyUsageTotals"),
                    "description": "Keys with at least one failure, most first.",
                },
            }
        ),
        "AuditEvent": _obj(
            {
                "id": {"type": "string"},
                "at": _TIME,
                "actor": _obj(
                    {
                        "type": {"type": "string", "enum": ["member", "operator", "system"]},
                        "id": _nullable(_UUID),
                    }
                ),
                "action": {"type": "string"},
                "target": _obj({"type": {"type": "string"}, "id": _nullable(_UUID)}),
                "client_ip": {"type": ["string", "null"]},
                "user_agent": {"type": ["string", "null"]},
                "details": {"type": "object"},
            }
        ),
        "Webhook": _obj(webhook),
        "WebhookWithSecret": _obj(
            {
                **webhook,
                "secret": {
                    "type": "string",
                    "description": "The signing secret (whsec_…): in this response only.",
                },
            }
        ),
        "WebhookList": _obj(
            {"items": {"type": "array", "items": _ref("Webhook")}, "next_cursor": cursor}
        ),
        "WebhookCreate": _obj(
            {"url": _URL_IN, "events": _EVENTS_IN, "enabled": {"type": "boolean"}},
            required=["url", "events"],
        ),
        "WebhookUpdate": _obj(
            {"url": _URL_IN, "events": _EVENTS_IN, "enabled": {"type": "boolean"}},
            required=[],
            minProperties=1,
        ),
        "WebhookRotate": _obj(
            {
                "grace_seconds": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": v.MAX_GRACE_SECONDS,
                    "description": "Sign with the old secret too for this long (default 0).",
                }
            },
            required=[],
        ),
        "Delivery": _obj(
            {
                "id": {"type": "string"},
                "webhook_id": {
                    "type": "string",
                    "description": "The message id (webhook-id header): the same on every "
                    "attempt and resend, for receivers to drop duplicates.",
                },
                "event_type": {"type": "string", "enum": list(EVENTS)},
                "status": {"type": "string", "enum": ["pending", "succeeded", "failed"]},
                "attempts": {"type": "integer", "minimum": 0},
                "response_status": {"type": ["integer", "null"]},
                "response_body": {
                    "type": ["string", "null"],
                    "description": "The first 1 KiB of the last answer.",
                },
                "last_error": {"type": ["string", "null"]},
                "latency_ms": {"type": ["number", "null"]},
                "created_at": _TIME,
                "last_attempt_at": _nullable(_TIME),
                "next_attempt_at": {
                    **_nullable(_TIME),
                    "description": "When a pending delivery is tried next.",
                },
                "delivered_at": _nullable(_TIME),
            }
        ),
        "DeliveryList": _obj(
            {"items": {"type": "array", "items": _ref("Delivery")}, "next_cursor": cursor}
        ),
        "AuditLog": _obj(
            {"items": {"type": "array", "items": _ref("AuditEvent")}, "next_cursor": cursor}
        ),
    }


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


_RESPONSES = {
    "BadRequest": _error(
        "validation_error (each offending field listed in error.fields) or invalid_json."
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
    "Id": {"name": "id", "in": "path", "required": True, "schema": _UUID},
    "Limit": {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": v.PAGE_MAX, "default": 50},
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
        "schema": _TIME,
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
        "schema": _UUID,
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
        "schema": _UUID,
        "description": "Only events about this key.",
    },
    "To": {
        "name": "to",
        "in": "query",
        "schema": _TIME,
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
        success["content"] = {JSON: {"schema": _ref(schema)}}
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
            "content": {JSON: {"schema": _ref(body)}},
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
            "Change a key's name, scopes, limits, allowlist, expiry or enabled (a leaked "
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
def document() -> dict[str, Any]:
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
            "schemas": _schemas(),
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
    return web.json_response(document())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", serve, allow_head=False)
