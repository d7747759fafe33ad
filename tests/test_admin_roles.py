"""SPEC §6's role table, enforced: every endpoint × every kind of caller, exact status."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from gateway.webhooks import new_secret

from .test_admin_support import (  # noqa: F401 - fixtures
    OPERATOR_TOKEN,
    World,
    admin_server_fixture,
    client_fixture,
    world_fixture,
)

CALLERS = ("none", "bad", "owner", "admin", "readonly", "operator", "other")

# endpoint -> (body, expected status per caller in CALLERS order). "{key}" is a key of
# account A, "{member}" the Admin member of account A; "other" is account B's Owner, for
# whom A's ids must not exist (404) while collection endpoints serve B's own data.
MATRIX: dict[tuple[str, str], tuple[Any, tuple[int, ...]]] = {
    ("POST", "/v1/accounts"): (
        {"name": "New", "owner_email": "new@example.com"},
        (401, 401, 403, 403, 403, 201, 403),
    ),
    ("GET", "/v1/accounts"): (None, (401, 401, 403, 403, 403, 200, 403)),
    ("GET", "/v1/me"): (None, (401, 401, 200, 200, 200, 403, 200)),
    ("GET", "/v1/account"): (None, (401, 401, 200, 200, 200, 403, 200)),
    ("GET", "/v1/permissions"): (None, (401, 401, 200, 200, 200, 403, 200)),
    ("GET", "/v1/members"): (None, (401, 401, 200, 200, 403, 403, 200)),
    ("POST", "/v1/members"): (
        {"email": "m@example.com", "name": "M", "role": "readonly"},
        (401, 401, 201, 403, 403, 403, 201),
    ),
    ("PATCH", "/v1/members/{member}"): (
        {"role": "readonly"},
        (401, 401, 200, 403, 403, 403, 404),
    ),
    ("DELETE", "/v1/members/{member}"): (None, (401, 401, 204, 403, 403, 403, 404)),
    ("POST", "/v1/members/{member}/regenerate-token"): (
        None,
        (401, 401, 200, 403, 403, 403, 404),
    ),
    ("GET", "/v1/keys"): (None, (401, 401, 200, 200, 403, 403, 200)),
    ("GET", "/v1/keys/{key}"): (None, (401, 401, 200, 200, 403, 403, 404)),
    ("POST", "/v1/keys"): ({"name": "k"}, (401, 401, 201, 201, 403, 403, 201)),
    ("PATCH", "/v1/keys/{key}"): ({"name": "renamed"}, (401, 401, 200, 200, 403, 403, 404)),
    ("POST", "/v1/keys/{key}/regenerate"): (None, (401, 401, 200, 200, 403, 403, 404)),
    ("DELETE", "/v1/keys/{key}"): (None, (401, 401, 204, 204, 403, 403, 404)),
    ("GET", "/v1/keys/{key}/usage"): (None, (401, 401, 200, 200, 403, 403, 404)),
    ("GET", "/v1/usage"): (None, (401, 401, 200, 200, 403, 403, 200)),
    ("GET", "/v1/audit-log"): (None, (401, 401, 200, 200, 403, 403, 200)),
    ("GET", "/v1/webhooks"): (None, (401, 401, 200, 403, 403, 403, 200)),
    ("POST", "/v1/webhooks"): (
        {"url": "http://127.0.0.1:9/hook", "events": ["key.created"]},
        (401, 401, 201, 403, 403, 403, 201),
    ),
    ("GET", "/v1/webhooks/{webhook}"): (None, (401, 401, 200, 403, 403, 403, 404)),
    ("PATCH", "/v1/webhooks/{webhook}"): (
        {"enabled": False},
        (401, 401, 200, 403, 403, 403, 404),
    ),
    ("DELETE", "/v1/webhooks/{webhook}"): (None, (401, 401, 204, 403, 403, 403, 404)),
    ("POST", "/v1/webhooks/{webhook}/rotate-secret"): (
        None,
        (401, 401, 200, 403, 403, 403, 404),
    ),
    ("GET", "/v1/webhooks/{webhook}/deliveries"): (None, (401, 401, 200, 403, 403, 403, 404)),
    ("POST", "/v1/webhooks/{webhook}/deliveries/{delivery}/resend"): (
        None,
        (401, 401, 202, 403, 403, 403, 404),
    ),
    ("GET", "/openapi.json"): (None, (200, 200, 200, 200, 200, 200, 200)),
}

CASES = [
    pytest.param(method, path, caller, body, statuses[i], id=f"{method} {path} as {caller}")
    for (method, path), (body, statuses) in MATRIX.items()
    for i, caller in enumerate(CALLERS)
]


@pytest.fixture
async def hook(world: World, db: asyncpg.Connection) -> tuple[str, str]:
    """A webhook endpoint of account A with one delivery in its log: (id, delivery id)."""
    endpoint = await db.fetchval(
        "INSERT INTO webhook_endpoints (account_id, url, events, secret)"
        " VALUES ($1, 'http://127.0.0.1:9/hook', '{key.created}', $2) RETURNING id",
        world.account_id,
        new_secret(),
    )
    event = await db.fetchval(
        "INSERT INTO webhook_events (msg_id, account_id, type, subject, payload)"
        " VALUES ('msg_test', $1, 'key.created', 'key:x', '{}') RETURNING id",
        world.account_id,
    )
    delivery = await db.fetchval(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id, subject, status)"
        " VALUES ($1, $2, 'key:x', 'failed') RETURNING id",
        endpoint,
        event,
    )
    return str(endpoint), str(delivery)


@pytest.mark.parametrize(("method", "path", "caller", "body", "expected"), CASES)
async def test_role_matrix(
    world: World,
    hook: tuple[str, str],
    method: str,
    path: str,
    caller: str,
    body: Any,
    expected: int,
) -> None:
    url = path.format(key=world.key_id, member=world.admin_id, webhook=hook[0], delivery=hook[1])
    reply = await world.client.call(method, url, world.token(caller), json_body=body)
    assert reply.status == expected, reply.text
    if expected == 403:
        assert reply.body["error"]["code"] == "forbidden"
    if expected == 401:
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    if expected == 404:
        # Indistinguishable from an id that never existed.
        missing = await world.client.call(
            method,
            path.format(
                key="00000000-0000-4000-8000-000000000000",
                member="00000000-0000-4000-8000-000000000000",
                webhook="00000000-0000-4000-8000-000000000000",
                delivery="999999",
            ),
            world.token(caller),
            json_body=body,
        )
        assert missing.status == 404
        assert missing.body["error"]["code"] == reply.body["error"]["code"]
        assert missing.body["error"]["message"] == reply.body["error"]["message"]


def test_matrix_covers_every_documented_operation() -> None:
    """A new endpoint cannot slip in without a row here (and a policy in admin.auth)."""
    from admin.auth import POLICY
    from admin.openapi import document

    documented = {
        (method.upper(), path)
        for path, operations in document()["paths"].items()
        for method in operations
    }
    in_matrix = {
        (
            m,
            p.replace("{key}", "{id}")
            .replace("{member}", "{id}")
            .replace("{webhook}", "{id}")
            .replace("{delivery}", "{delivery_id}"),
        )
        for m, p in MATRIX
        if p != "/openapi.json"
    }
    assert documented == in_matrix == set(POLICY)


def test_operator_token_is_not_a_member_token() -> None:
    assert not OPERATOR_TOKEN.startswith("gpa_")
