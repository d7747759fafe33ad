"""The admin API's data shapes for the OpenAPI document (`components.schemas`).

Built from the same constants the handlers use (the patterns and bounds in `validation`,
the roles, permission names and outcomes), so a shape and the check behind it cannot
drift apart; `openapi` assembles the paths around them. The webhook shapes are in
`webhook_schemas`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.accounts import ROLES
from gateway.usage import OUTCOMES

from . import validation as v

JSON = "application/json"


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(
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


def grace(description: str) -> dict[str, Any]:
    """Seconds an old secret is still honoured after a new one is made."""
    return {
        "type": "integer",
        "minimum": 0,
        "maximum": v.MAX_GRACE_SECONDS,
        "description": description,
    }


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"]}


UUID = {"type": "string", "format": "uuid"}
TIME = {"type": "string", "format": "date-time"}
NAME_IN = {
    "type": "string",
    "minLength": 1,
    "maxLength": v.NAME_MAX,
    "pattern": v.NAME_PATTERN,
    "description": "1–100 characters after trimming surrounding white space; no control "
    "characters. Not unique.",
}
EMAIL_IN = {"type": "string", "maxLength": v.EMAIL_MAX, "pattern": v.EMAIL_PATTERN}
LIMIT = {"type": "integer", "minimum": 1, "maximum": v.MAX_INT}
SCOPES_IN = {
    "type": "array",
    "items": {"type": "string", "enum": list(v.LEGACY_SCOPES)},
    "uniqueItems": True,
    "deprecated": True,
    "description": "Deprecated alias of permissions: reports, customers, data (read and "
    "write) and account stand for the permissions of the default route table. Not with "
    "permissions.",
}
CIDRS = {
    "type": "array",
    "maxItems": v.MAX_ALLOWLIST,
    "uniqueItems": True,
    "items": {"type": "string", "format": "cidr"},
    "description": "IPv4 or IPv6 networks in CIDR notation (a bare address is one host); "
    "host bits must be zero. Empty: any address.",
}
ROLE = {"type": "string", "enum": list(ROLES)}
CURSOR = {"type": ["string", "null"], "description": "Pass as ?cursor= for the next page."}


def schemas(permissions: Sequence[str]) -> dict[str, Any]:
    """The shapes, with the deployment's permission names (its route table)."""
    # What a key may be given: a permission of the table. What a key shows may include a
    # permission the table has dropped since (kept, granting nothing).
    permission_in = {
        "type": "string",
        "enum": list(permissions),
        "description": "A permission of the route table (`GET /v1/permissions`).",
    }
    permission = {"type": "string", "pattern": "^[a-z][a-z0-9_-]*:[a-z][a-z0-9_-]*$"}
    permissions_in = {"type": "array", "items": permission_in, "uniqueItems": True}
    counts = {outcome: {"type": "integer", "minimum": 0} for outcome in (*OUTCOMES, "total")}
    member = {
        "id": UUID,
        "account_id": UUID,
        "email": {"type": "string"},
        "name": {"type": "string"},
        "role": ROLE,
        "created_at": TIME,
        "token_created_at": TIME,
    }
    key = {
        "id": UUID,
        "name": {"type": "string"},
        "partial_key": {
            "type": "string",
            "description": "Prefix, public id, '…' and the last 4 characters: what 'Copy' "
            "copies. Identifies the key and its generation; cannot be used.",
        },
        "created_at": TIME,
        "created_by": nullable(UUID),
        "last_used_at": nullable(TIME),
        "regenerated_at": nullable(TIME),
        "expires_at": nullable(TIME),
        "enabled": {"type": "boolean"},
        "permissions": {"type": "array", "items": permission},
        "rate_limit": obj(
            {"per_minute": LIMIT, "per_day": LIMIT},
            description="Effective limits: the key's override, else the configured default.",
        ),
        "ip_allowlist": {"type": "array", "items": {"type": "string"}},
        "rotation_due": {
            "type": "boolean",
            "description": "The secret is older than keys.rotation_days.",
        },
        "status": {"type": "string", "enum": ["active", "expired", "disabled"]},
        "leaked_at": {
            **nullable(TIME),
            "description": "When secret scanning first found the key's current secret in "
            "public (null: never). A leaked key cannot be enabled again; regenerate it "
            "(which clears leaked_at and leak_url).",
        },
        "leak_url": {
            "type": ["string", "null"],
            "description": "Where the leak was found (an http(s) URL), when known.",
        },
    }
    account = {"id": UUID, "name": {"type": "string"}, "created_at": TIME}
    rate_limit_in = nullable(
        obj(
            {"per_minute": nullable(LIMIT), "per_day": nullable(LIMIT)},
            required=[],
            description="Per-key overrides; null clears one (or, for the object, both).",
        )
    )
    return {
        "Error": obj(
            {
                "error": obj(
                    {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "request_id": {"type": "string"},
                        "fields": {
                            "type": "array",
                            "items": obj(
                                {"field": {"type": "string"}, "message": {"type": "string"}}
                            ),
                        },
                    },
                    required=["code", "message", "request_id"],
                )
            }
        ),
        "Account": obj(account),
        "AccountList": obj(
            {"items": {"type": "array", "items": ref("Account")}, "next_cursor": CURSOR}
        ),
        "AccountCreate": obj({"name": NAME_IN, "owner_email": EMAIL_IN}),
        "AccountCreated": obj(
            {
                "account": ref("Account"),
                "owner": ref("Member"),
                "token": {"type": "string", "description": "The Owner's admin token, shown once."},
            }
        ),
        "Member": obj(member),
        "MemberWithToken": obj(
            {**member, "token": {"type": "string", "description": "Admin token, shown once."}}
        ),
        "MemberList": obj(
            {"items": {"type": "array", "items": ref("Member")}, "next_cursor": CURSOR}
        ),
        "MemberCreate": obj(
            {"email": EMAIL_IN, "name": NAME_IN, "role": ROLE}, required=["email", "role"]
        ),
        "MemberUpdate": obj({"name": NAME_IN, "role": ROLE}, required=[], minProperties=1),
        "Key": obj(key),
        "KeyWithSecret": obj(
            {
                **key,
                "key": {
                    "type": "string",
                    "description": "The full API key: in this response only, never again.",
                },
            }
        ),
        "Permission": obj(
            {
                "name": permission,
                "description": {"type": "string"},
                "resource": {"type": "string", "description": "The part before ':'."},
                "action": {"type": "string", "description": "The part after ':'."},
                "routes": {
                    "type": "array",
                    "items": obj(
                        {
                            "methods": {"type": "array", "items": {"type": "string"}},
                            "path": {"type": "string"},
                        }
                    ),
                },
            }
        ),
        "PermissionList": obj({"items": {"type": "array", "items": ref("Permission")}}),
        "KeyList": obj({"items": {"type": "array", "items": ref("Key")}, "next_cursor": CURSOR}),
        "KeyCreate": obj(
            {
                "name": NAME_IN,
                "permissions": {
                    **permissions_in,
                    "description": "Default: every permission the route table defines.",
                },
                "scopes": SCOPES_IN,
                "rate_limit": rate_limit_in,
                "ip_allowlist": CIDRS,
                "expires_at": {
                    **nullable(TIME),
                    "description": "RFC 3339, in the future; null: never.",
                },
            },
            required=["name"],
            # `scopes` is the deprecated alias of `permissions`: one or the other.
            **{"not": {"required": ["permissions", "scopes"]}},
        ),
        "KeyUpdate": obj(
            {
                "name": NAME_IN,
                "permissions": permissions_in,
                "scopes": SCOPES_IN,
                # An empty object names nothing to change: refused, like an empty body.
                "rate_limit": {**rate_limit_in, "minProperties": 1},
                "ip_allowlist": CIDRS,
                "expires_at": {
                    **nullable(TIME),
                    "description": "RFC 3339, in the future; null: never.",
                },
                "enabled": {
                    "type": "boolean",
                    "description": "A disabled key gets 401 disabled_api_key until re-enabled.",
                },
            },
            required=[],
            minProperties=1,
            **{"not": {"required": ["permissions", "scopes"]}},
        ),
        "KeyRegenerate": obj(
            {
                "grace_seconds": grace(
                    "Keep the old secret valid this long (default 0: it stops working at once)."
                )
            },
            required=[],
        ),
        "UsageCounts": obj(counts),
        "UsageHour": obj({"hour": TIME, **counts}),
        "Usage": obj(
            {
                "key_id": UUID,
                "from": TIME,
                "to": TIME,
                "totals": ref("UsageCounts"),
                "items": {"type": "array", "items": ref("UsageHour")},
            },
            description="Requests by outcome. A request authorised through the verify "
            "endpoint (/_gateway/verify, an ingress moves the bytes) counts as `ok`, "
            "meaning authorised: the upstream's answer is unknown to the gateway there.",
        ),
        "KeyUsageTotals": obj(
            {
                "key_id": UUID,
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
        "AccountUsage": obj(
            {
                "from": TIME,
                "to": TIME,
                "totals": ref("UsageCounts"),
                "items": {"type": "array", "items": ref("UsageHour")},
                "top_by_requests": {"type": "array", "items": ref("KeyUsageTotals")},
                "top_by_failures": {
                    "type": "array",
                    "items": ref("KeyUsageTotals"),
                    "description": "Keys with at least one failure, most first.",
                },
            }
        ),
        "AuditEvent": obj(
            {
                "id": {"type": "string"},
                "at": TIME,
                "actor": obj(
                    {
                        "type": {"type": "string", "enum": ["member", "operator", "system"]},
                        "id": nullable(UUID),
                    }
                ),
                "action": {"type": "string"},
                "target": obj({"type": {"type": "string"}, "id": nullable(UUID)}),
                "client_ip": {"type": ["string", "null"]},
                "user_agent": {"type": ["string", "null"]},
                "details": {"type": "object"},
            }
        ),
        "AuditLog": obj(
            {"items": {"type": "array", "items": ref("AuditEvent")}, "next_cursor": CURSOR}
        ),
    }
