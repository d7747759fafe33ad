"""`GET /v1/usage` (the account's usage across keys) and the audit log's filters."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
import pytest

from .test_admin_support import (  # noqa: F401 - fixtures
    World,
    admin_server_fixture,
    client_fixture,
    world_fixture,
)

HOUR = dt.datetime(2030, 1, 1, 10, tzinfo=dt.UTC)
WINDOW = "from=2030-01-01T10:00:00Z&to=2030-01-01T13:00:00Z"


async def new_key(world: World, token: str, name: str) -> uuid.UUID:
    reply = await world.client.call("POST", "/v1/keys", token, json_body={"name": name})
    assert reply.status == 201, reply.text
    return uuid.UUID(reply.body["id"])


async def counts(
    db: asyncpg.Connection, key_id: uuid.UUID, rows: list[tuple[int, str, int]]
) -> None:
    await db.executemany(
        "INSERT INTO key_usage_hourly (key_id, hour, outcome, count) VALUES ($1, $2, $3, $4)",
        [(key_id, HOUR + dt.timedelta(hours=h), outcome, n) for h, outcome, n in rows],
    )


def summary(items: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return [(i["name"], i["total"], i["failures"]) for i in items]


async def test_account_usage_sums_hours_and_ranks_keys_by_requests_and_failures(
    world: World, db: asyncpg.Connection
) -> None:
    busy = uuid.UUID(world.key_id)  # "Key of A"
    probed = await new_key(world, world.owner, "Probed")
    quiet = await new_key(world, world.owner, "Quiet")
    await counts(db, busy, [(0, "ok", 50), (1, "ok", 30), (1, "upstream_5xx", 2)])
    await counts(db, probed, [(0, "failed_auth", 7), (2, "denied", 3), (2, "ok", 1)])
    await counts(db, quiet, [(0, "rate_limited", 4), (5, "ok", 999)])  # hour 5: outside
    other = await new_key(world, world.other, "B's key")
    await counts(db, other, [(0, "ok", 10_000), (0, "failed_auth", 500)])

    reply = await world.client.call("GET", f"/v1/usage?{WINDOW}", world.admin)
    assert reply.status == 200, reply.text
    body = reply.body
    assert body["totals"] == {
        "ok": 81,
        "upstream_4xx": 0,
        "upstream_5xx": 2,
        "rate_limited": 4,
        "denied": 3,
        "failed_auth": 7,
        "total": 97,
    }
    assert [(i["hour"], i["total"], i["failed_auth"]) for i in body["items"]] == [
        ("2030-01-01T10:00:00.000000Z", 61, 7),
        ("2030-01-01T11:00:00.000000Z", 32, 0),
        ("2030-01-01T12:00:00.000000Z", 4, 0),
    ]
    assert summary(body["top_by_requests"]) == [
        ("Key of A", 82, 0),
        ("Probed", 11, 10),
        ("Quiet", 4, 0),
    ]
    assert summary(body["top_by_failures"]) == [("Probed", 11, 10)]
    assert body["top_by_requests"][1]["key_id"] == str(probed)

    top = await world.client.call("GET", f"/v1/usage?{WINDOW}&limit=1", world.owner)
    assert summary(top.body["top_by_requests"]) == [("Key of A", 82, 0)]


async def test_account_usage_keeps_a_deleted_keys_history_marked_deleted(
    world: World, db: asyncpg.Connection
) -> None:
    gone = await new_key(world, world.owner, "Retired")
    await counts(db, gone, [(0, "ok", 3)])
    assert (await world.client.call("DELETE", f"/v1/keys/{gone}", world.owner)).status == 204
    reply = await world.client.call("GET", f"/v1/usage?{WINDOW}", world.owner)
    assert [(i["name"], i["deleted"]) for i in reply.body["top_by_requests"]] == [("Retired", True)]


async def test_account_usage_of_another_account_is_never_counted(
    world: World, db: asyncpg.Connection
) -> None:
    await counts(db, uuid.UUID(world.key_id), [(0, "ok", 5)])
    theirs = await world.client.call("GET", f"/v1/usage?{WINDOW}", world.other)
    assert theirs.status == 200
    assert theirs.body["totals"]["total"] == 0
    assert theirs.body["items"] == theirs.body["top_by_requests"] == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z", "from"),
        ("from=2030-01-01T00:00:00Z&to=2030-06-01T00:00:00Z", "from"),
        ("from=yesterday", "from"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("key=abc", "key"),
    ],
)
async def test_account_usage_refuses_bad_queries_by_field(
    world: World, query: str, field: str
) -> None:
    reply = await world.client.call("GET", f"/v1/usage?{query}", world.owner)
    assert reply.status == 400
    assert field in [f["field"] for f in reply.body["error"]["fields"]]


async def test_audit_log_filters_by_actor_action_and_key(world: World) -> None:
    client = world.client
    zapier = await new_key(world, world.admin, "Zapier automation")
    sheets = await new_key(world, world.owner, "Sheets")
    reply = await client.call(
        "POST", f"/v1/keys/{zapier}/regenerate", world.owner, json_body={"grace_seconds": 86400}
    )
    assert reply.status == 200
    assert (
        await client.call("PATCH", f"/v1/keys/{sheets}", world.admin, json_body={"enabled": False})
    ).status == 200

    async def events(query: str) -> list[tuple[str, str | None]]:
        log = await client.call("GET", f"/v1/audit-log?{query}", world.owner)
        assert log.status == 200, log.text
        return [(e["action"], e["target"]["id"]) for e in log.body["items"]]

    assert await events(f"key={zapier}") == [
        ("key.regenerate", str(zapier)),
        ("key.create", str(zapier)),
    ]
    assert await events(f"actor={world.admin_id}&action=key.update") == [
        ("key.update", str(sheets))
    ]
    assert await events(f"actor={world.admin_id}") == [
        ("key.update", str(sheets)),
        ("key.create", str(zapier)),
    ]
    assert await events(f"action=key.regenerate&key={sheets}") == []
    # Paging keeps the filter: one event a page, in order, then no cursor.
    first = await client.call("GET", f"/v1/audit-log?key={zapier}&limit=1", world.owner)
    assert [e["action"] for e in first.body["items"]] == ["key.regenerate"]
    cursor = first.body["next_cursor"]
    second = await client.call(
        "GET", f"/v1/audit-log?key={zapier}&limit=1&cursor={cursor}", world.owner
    )
    assert [e["action"] for e in second.body["items"]] == ["key.create"]
    assert second.body["next_cursor"] is None
    # Another account's ids filter to nothing there (no oracle), and a bad value is a 400.
    assert (await client.call("GET", f"/v1/audit-log?key={zapier}", world.other)).body[
        "items"
    ] == []
    for bad in ("actor=me", "action=DROP%20TABLE", "key=1"):
        reply = await client.call("GET", f"/v1/audit-log?{bad}", world.owner)
        assert reply.status == 400, bad
