"""The seed's flows end to end: admin API on one socket, the real proxy on another."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestServer

from gateway.keyformat import KeyFormat

from .helpers import key_status, wait_for
from .test_admin_support import (  # noqa: F401 - fixtures
    OPERATOR_TOKEN,
    AdminClient,
    World,
    admin_server_fixture,
    client_fixture,
    world_fixture,
)


async def answers_within(
    gateway: TestServer, key: str, status: int, path: str = "/v1/customers", timeout: float = 1.0
) -> None:
    """SPEC §2: a change reaches every gateway process within a second (through NOTIFY)."""

    async def answered() -> bool:
        return await key_status(gateway, key, path) == status

    await wait_for(answered, timeout=timeout)


async def test_create_use_last_used_regenerate_delete(world: World, gateway: TestServer) -> None:
    """create → use → "Last used" after the flush → regenerate → old 401 / new 200 → delete."""
    client, owner = world.client, world.owner
    created = await client.call("POST", "/v1/keys", owner, json_body={"name": "Zapier"})
    assert created.status == 201
    key_id, first = created.body["id"], created.body["key"]
    assert created.body["last_used_at"] is None
    assert await key_status(gateway, first) == 200

    async def last_used() -> str | None:
        reply = await client.call("GET", f"/v1/keys/{key_id}", owner)
        value: str | None = reply.body["last_used_at"]
        return value

    await wait_for(last_used)  # the gateway flushes every 0.2 s in tests
    listed = await client.call("GET", "/v1/keys", owner)
    assert next(k for k in listed.body["items"] if k["id"] == key_id)["last_used_at"]

    rolled = await client.call("POST", f"/v1/keys/{key_id}/regenerate", owner)
    assert rolled.status == 200
    second = rolled.body["key"]
    assert (rolled.body["id"], rolled.body["name"]) == (key_id, "Zapier")
    assert second != first and rolled.body["partial_key"] != created.body["partial_key"]
    await answers_within(gateway, first, 401)
    assert await key_status(gateway, second) == 200

    deleted = await client.call("DELETE", f"/v1/keys/{key_id}", owner)
    assert deleted.status == 204
    await answers_within(gateway, second, 401)
    assert (await client.call("GET", f"/v1/keys/{key_id}", owner)).status == 404
    listed = await client.call("GET", "/v1/keys", owner)
    assert key_id not in {k["id"] for k in listed.body["items"]}
    assert (await client.call("DELETE", f"/v1/keys/{key_id}", owner)).status == 404


async def test_regenerate_with_grace_keeps_the_old_secret_working(
    world: World, gateway: TestServer
) -> None:
    created = await world.client.call("POST", "/v1/keys", world.owner, json_body={"name": "g"})
    old = created.body["key"]
    assert await key_status(gateway, old) == 200
    rolled = await world.client.call(
        "POST",
        f"/v1/keys/{created.body['id']}/regenerate",
        world.owner,
        json_body={"grace_seconds": 3600},
    )
    assert rolled.status == 200
    assert await key_status(gateway, old) == 200
    assert await key_status(gateway, rolled.body["key"]) == 200


async def test_patch_changes_what_the_proxy_enforces(world: World, gateway: TestServer) -> None:
    client, owner = world.client, world.owner
    created = await client.call("POST", "/v1/keys", owner, json_body={"name": "patched"})
    key, path = created.body["key"], f"/v1/keys/{created.body['id']}"
    assert await key_status(gateway, key) == 200

    disabled = await client.call("PATCH", path, owner, json_body={"enabled": False})
    assert (disabled.body["enabled"], disabled.body["status"]) == (False, "disabled")
    await answers_within(gateway, key, 401)
    await client.call("PATCH", path, owner, json_body={"enabled": True})
    await answers_within(gateway, key, 200)

    scoped = await client.call("PATCH", path, owner, json_body={"permissions": ["reports:read"]})
    assert scoped.body["permissions"] == ["reports:read"]
    await answers_within(gateway, key, 403, "/v1/customers")
    assert await key_status(gateway, key, "/v1/reports/mrr") == 200

    fenced = await client.call("PATCH", path, owner, json_body={"ip_allowlist": ["192.0.2.0/24"]})
    assert fenced.body["ip_allowlist"] == ["192.0.2.0/24"]
    await answers_within(gateway, key, 403, "/v1/reports/mrr")
    opened = await client.call(
        "PATCH", path, owner, json_body={"ip_allowlist": ["127.0.0.1", "::1"]}
    )
    assert opened.body["ip_allowlist"] == ["127.0.0.1/32", "::1/128"]
    await answers_within(gateway, key, 200, "/v1/reports/mrr")


async def test_usage_counts_requests_by_outcome_after_the_flush(
    world: World, gateway: TestServer
) -> None:
    created = await world.client.call("POST", "/v1/keys", world.owner, json_body={"name": "u"})
    key, key_id = created.body["key"], created.body["id"]
    assert await key_status(gateway, key) == 200
    assert await key_status(gateway, key, "/v1/status/404") == 404
    # A wrong secret for this key's id: what an attacker or a stale integration sends.
    wrong, _ = KeyFormat("gp_").generate(key[3:15])
    assert await key_status(gateway, wrong) == 401

    async def totals() -> dict[str, int] | None:
        reply = await world.client.call("GET", f"/v1/keys/{key_id}/usage", world.owner)
        counts: dict[str, int] = reply.body["totals"]
        return counts if counts["total"] == 3 else None

    await wait_for(totals)
    counts = await totals()
    assert counts is not None
    assert (counts["ok"], counts["upstream_4xx"], counts["failed_auth"]) == (1, 1, 1)


async def test_operator_creates_an_account_whose_owner_manages_keys(
    client: AdminClient, gateway: TestServer
) -> None:
    created = await client.call(
        "POST",
        "/v1/accounts",
        OPERATOR_TOKEN,
        json_body={"name": "  Acme GmbH ", "owner_email": "boss@acme.example"},
    )
    assert created.status == 201
    assert created.body["account"]["name"] == "Acme GmbH"
    assert created.body["owner"]["role"] == "owner"
    owner = created.body["token"]
    me = await client.call("GET", "/v1/me", owner)
    assert me.body["email"] == "boss@acme.example"
    account = await client.call("GET", "/v1/account", owner)
    assert account.body == created.body["account"]
    key = await client.call("POST", "/v1/keys", owner, json_body={"name": "first"})
    assert await key_status(gateway, key.body["key"]) == 200
    listed = await client.call("GET", "/v1/accounts", OPERATOR_TOKEN)
    assert created.body["account"] in listed.body["items"]


@pytest.mark.parametrize("grace", [None, 0])
async def test_regenerated_key_is_refused_even_from_the_cache(
    world: World, gateway: TestServer, grace: int | None
) -> None:
    """The proxy had the key cached; the admin API's change reaches it through NOTIFY."""
    created = await world.client.call("POST", "/v1/keys", world.owner, json_body={"name": "c"})
    old = created.body["key"]
    for _ in range(3):
        assert await key_status(gateway, old) == 200
    body = None if grace is None else {"grace_seconds": grace}
    await world.client.call(
        "POST", f"/v1/keys/{created.body['id']}/regenerate", world.owner, json_body=body
    )
    await answers_within(gateway, old, 401)
