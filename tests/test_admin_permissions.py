"""Keys carry permissions from the route table: the admin API's side, and the migration
that mapped the former scopes."""

from __future__ import annotations

import uuid

import asyncpg

from gateway.db import load_migrations, migrate

from .test_admin_support import (  # noqa: F401 - fixtures
    World,
    admin_server_fixture,
    client_fixture,
    world_fixture,
)


async def test_permissions_lists_the_route_table_in_its_order(world: World) -> None:
    reply = await world.client.call("GET", "/v1/permissions", world.readonly)
    assert reply.status == 200
    items = reply.body["items"]
    assert [p["name"] for p in items] == [
        "reports:read",
        "customers:read",
        "data:read",
        "data:write",
        "account:read",
        "test:any",
    ]
    write = items[3]
    assert (write["resource"], write["action"]) == ("data", "write")
    assert write["description"] == "Push data (imports)"
    assert write["routes"] == [
        {"methods": ["DELETE", "PATCH", "POST", "PUT"], "path": "/v1/data/**"}
    ]
    assert items[5]["routes"] == [{"methods": ["*"], "path": "/**"}]


async def test_unknown_permission_is_refused_listing_the_valid_ones(world: World) -> None:
    reply = await world.client.call(
        "POST", "/v1/keys", world.owner, json_body={"name": "k", "permissions": ["billing:read"]}
    )
    assert reply.status == 400
    (field,) = reply.body["error"]["fields"]
    assert field["field"] == "permissions"
    assert "'billing:read'" in field["message"]
    for name in ("reports:read", "customers:read", "data:write", "account:read"):
        assert name in field["message"]


async def test_deprecated_scopes_are_answered_with_permissions(world: World) -> None:
    created = await world.client.call(
        "POST", "/v1/keys", world.owner, json_body={"name": "k", "scopes": ["customers"]}
    )
    assert created.status == 201
    assert created.body["permissions"] == ["customers:read"]
    assert "scopes" not in created.body
    path = f"/v1/keys/{created.body['id']}"
    patched = await world.client.call("PATCH", path, world.owner, json_body={"scopes": ["data"]})
    assert patched.body["permissions"] == ["data:read", "data:write"]
    got = await world.client.call("GET", path, world.owner)
    assert got.body["permissions"] == ["data:read", "data:write"]


async def test_a_key_created_without_permissions_gets_every_one_listed(world: World) -> None:
    created = await world.client.call("POST", "/v1/keys", world.owner, json_body={"name": "k"})
    listed = await world.client.call("GET", "/v1/permissions", world.owner)
    assert created.body["permissions"] == sorted(p["name"] for p in listed.body["items"])


async def test_migration_maps_each_scope_to_the_permissions_that_cover_it(
    empty_database_url: str,
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        migrations = load_migrations()
        before = [m for m in migrations if m.version < 7]
        await migrate(conn, before)
        account = await conn.fetchval("INSERT INTO accounts (name) VALUES ('A') RETURNING id")
        scopes = {
            "all (the former default)": None,
            "reports only": ["reports"],
            "data and account": ["data", "account"],
            "none": [],
        }
        ids = {}
        for name, granted in scopes.items():
            columns = "account_id, public_id, name, partial_key, secret_hash"
            values = "$1, $2, $3, 'p', 'h'"
            args: list[object] = [account, uuid.uuid4().hex[:12], name]
            if granted is not None:
                columns, values = columns + ", scopes", values + ", $4"
                args.append(granted)
            ids[name] = await conn.fetchval(
                f"INSERT INTO api_keys ({columns}) VALUES ({values}) RETURNING id",  # noqa: S608
                *args,
            )
        await migrate(conn)
        got = {
            name: await conn.fetchval("SELECT permissions FROM api_keys WHERE id = $1", key_id)
            for name, key_id in ids.items()
        }
    finally:
        await conn.close()
    assert got == {
        "all (the former default)": [
            "account:read",
            "customers:read",
            "data:read",
            "data:write",
            "reports:read",
        ],
        "reports only": ["reports:read"],
        "data and account": ["account:read", "data:read", "data:write"],
        "none": [],
    }
