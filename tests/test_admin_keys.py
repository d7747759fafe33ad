"""The key object of SPEC §6, key listing pages, the audit log and the usage report."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .test_admin_support import (  # noqa: F401 - fixtures
    World,
    admin_server_fixture,
    client_fixture,
    world_fixture,
)

KEY_FIELDS = {
    "id",
    "name",
    "partial_key",
    "created_at",
    "created_by",
    "last_used_at",
    "regenerated_at",
    "expires_at",
    "enabled",
    "permissions",
    "rate_limit",
    "ip_allowlist",
    "rotation_due",
    "status",
    "leaked_at",
    "leak_url",
}


async def test_created_key_object_has_every_field_and_the_key_once(world: World) -> None:
    reply = await world.client.call(
        "POST", "/v1/keys", world.admin, json_body={"name": "Sheets"}, headers={"User-Agent": "t/1"}
    )
    assert reply.status == 201
    assert set(reply.body) == KEY_FIELDS | {"key"}
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["Location"] == f"/v1/keys/{reply.body['id']}"
    body, key = reply.body, reply.body["key"]
    assert key.startswith("gp_") and len(key) == 49
    assert body["partial_key"] == f"{key[:15]}…{key[-4:]}"
    assert body["created_by"] == str(world.admin_id)
    assert body["permissions"] == [
        "account:read",
        "customers:read",
        "data:read",
        "data:write",
        "reports:read",
        "test:any",
    ]
    assert body["rate_limit"] == {"per_minute": 600, "per_day": 50_000}
    assert (body["status"], body["enabled"], body["rotation_due"]) == ("active", True, False)
    assert body["ip_allowlist"] == [] and body["expires_at"] is None
    assert body["created_at"].endswith("Z")
    got = await world.client.call("GET", f"/v1/keys/{body['id']}", world.owner)
    assert set(got.body) == KEY_FIELDS
    assert got.body == {k: v for k, v in body.items() if k != "key"}
    assert key not in got.text


async def test_status_and_rotation_due_follow_the_row(world: World, db: asyncpg.Connection) -> None:
    path = f"/v1/keys/{world.key_id}"
    key_id = uuid.UUID(world.key_id)
    await db.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1", key_id
    )
    assert (await world.client.call("GET", path, world.owner)).body["status"] == "expired"
    await world.client.call("PATCH", path, world.owner, json_body={"enabled": False})
    assert (await world.client.call("GET", path, world.owner)).body["status"] == "disabled"
    await db.execute(
        "UPDATE api_keys SET secret_created_at = now() - interval '90 days 1 minute' WHERE id = $1",
        key_id,
    )
    assert (await world.client.call("GET", path, world.owner)).body["rotation_due"] is True
    rolled = await world.client.call("POST", f"{path}/regenerate", world.owner)
    assert rolled.body["rotation_due"] is False
    assert rolled.body["regenerated_at"] is not None


async def test_key_list_pages_newest_first_without_gaps_or_repeats(world: World) -> None:
    for i in range(6):
        created = await world.client.call(
            "POST", "/v1/keys", world.owner, json_body={"name": f"k{i}"}
        )
        assert created.status == 201
    names: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await world.client.call("GET", f"/v1/keys{query}", world.owner)
        assert len(page.body["items"]) <= 3
        names.extend(k["name"] for k in page.body["items"])
        cursor, pages = page.body["next_cursor"], pages + 1
        if cursor is None:
            break
    assert names == ["k5", "k4", "k3", "k2", "k1", "k0", "Key of A"]
    assert pages == 3
    everything = await world.client.call("GET", "/v1/keys", world.owner)
    assert everything.body["next_cursor"] is None and len(everything.body["items"]) == 7


async def test_key_list_is_per_account(world: World) -> None:
    mine = await world.client.call("GET", "/v1/keys", world.owner)
    theirs = await world.client.call("GET", "/v1/keys", world.other)
    assert [k["id"] for k in mine.body["items"]] == [world.key_id]
    assert theirs.body["items"] == []


async def test_audit_log_records_every_change_newest_first(world: World) -> None:
    client, path = world.client, f"/v1/keys/{world.key_id}"
    ua = {"User-Agent": "audit-test/1.0"}
    await client.call("PATCH", path, world.owner, json_body={"name": "renamed"}, headers=ua)
    await client.call(
        "POST", f"{path}/regenerate", world.admin, json_body={"grace_seconds": 60}, headers=ua
    )
    await client.call("DELETE", path, world.owner, headers=ua)
    await client.call(
        "PATCH",
        f"/v1/members/{world.readonly_id}",
        world.owner,
        json_body={"role": "admin"},
        headers=ua,
    )
    # A refused change leaves no trace.
    await client.call("DELETE", path, world.owner, headers=ua)
    log = await client.call("GET", "/v1/audit-log?limit=4", world.admin)
    events = log.body["items"]
    assert [e["action"] for e in events] == [
        "member.update",
        "key.delete",
        "key.regenerate",
        "key.update",
    ]
    member_update, delete, regenerate, update = events
    assert member_update["details"] == {"changes": {"role": {"from": "readonly", "to": "admin"}}}
    assert member_update["target"] == {"type": "member", "id": str(world.readonly_id)}
    assert delete["actor"] == {"type": "member", "id": str(world.owner_id)}
    assert delete["target"] == {"type": "key", "id": world.key_id}
    assert regenerate["actor"]["id"] == str(world.admin_id)
    assert regenerate["details"] == {"grace_seconds": 60}
    assert update["details"] == {"changes": {"name": "renamed"}}
    for event in events:
        assert (event["client_ip"], event["user_agent"]) == ("127.0.0.1", "audit-test/1.0")
        assert event["at"].endswith("Z")
    rest = await client.call("GET", f"/v1/audit-log?cursor={log.body['next_cursor']}", world.owner)
    older = [e["action"] for e in rest.body["items"]]
    # The world's set-up: account creation (by the operator), two members, one key.
    assert older == ["key.create", "member.create", "member.create", "account.create"]
    assert rest.body["next_cursor"] is None
    other = await client.call("GET", "/v1/audit-log", world.other)
    assert [e["action"] for e in other.body["items"]] == ["account.create"]


EVERY_PERMISSION = ["test:any", "reports:read", "data:write", "data:read", "customers:read"]
NO_CHANGE: list[tuple[str, str, Any]] = [
    ("key", "/v1/keys/{key}", {"name": " Key of A "}),
    ("key", "/v1/keys/{key}", {"enabled": True, "ip_allowlist": []}),
    ("key", "/v1/keys/{key}", {"rate_limit": {"per_minute": None}, "expires_at": None}),
    ("key", "/v1/keys/{key}", {"rate_limit": None}),
    ("key", "/v1/keys/{key}", {"permissions": [*EVERY_PERMISSION, "account:read"]}),
    ("member", "/v1/members/{member}", {"role": "readonly"}),
    ("webhook", "/v1/webhooks/{webhook}", {"enabled": True}),
]


async def _hook(world: World) -> str:
    """An endpoint for the events a change emits: the change would queue them."""
    hook = await world.client.call(
        "POST",
        "/v1/webhooks",
        world.owner,
        json_body={
            "url": "http://127.0.0.1:9/hook",
            "events": ["key.updated", "member.role_changed"],
        },
    )
    assert hook.status == 201, hook.text
    return str(hook.body["id"])


@pytest.mark.parametrize(("kind", "path", "body"), NO_CHANGE)
async def test_a_patch_that_changes_nothing_leaves_no_trace(
    world: World, db: asyncpg.Connection, kind: str, path: str, body: Any
) -> None:
    """200 with the resource as it is: no audit event, no webhook event."""
    hook = await _hook(world)
    url = path.format(key=world.key_id, member=world.readonly_id, webhook=hook)
    trail = "SELECT (SELECT count(*) FROM audit_log) + (SELECT count(*) FROM webhook_events)"
    before = await db.fetchval(trail)
    reply = await world.client.call("PATCH", url, world.owner, json_body=body)
    assert reply.status == 200, reply.text
    if kind != "member":  # members have no GET of one
        assert reply.body == (await world.client.call("GET", url, world.owner)).body
    assert await db.fetchval(trail) == before


async def test_a_patch_records_only_what_it_changed(world: World, db: asyncpg.Connection) -> None:
    await _hook(world)
    reply = await world.client.call(
        "PATCH",
        f"/v1/keys/{world.key_id}",
        world.owner,
        json_body={"name": "Key of A", "enabled": False, "rate_limit": {"per_day": None}},
    )
    assert (reply.status, reply.body["enabled"]) == (200, False)
    log = await world.client.call("GET", "/v1/audit-log?action=key.update", world.owner)
    assert [e["details"] for e in log.body["items"]] == [{"changes": {"enabled": False}}]
    payload = await db.fetchval("SELECT payload FROM webhook_events WHERE type = 'key.updated'")
    assert json.loads(payload)["data"]["changes"] == ["enabled"]


async def test_audit_event_is_written_with_the_change_or_not_at_all(
    world: World, db: asyncpg.Connection
) -> None:
    """A change that fails after its audit insert leaves neither (one transaction)."""
    before = await db.fetchval("SELECT count(*) FROM audit_log")
    # The member's email collides: the INSERT fails, so no member.create event either.
    email = await db.fetchval("SELECT email FROM members WHERE id = $1", world.admin_id)
    reply = await world.client.call(
        "POST", "/v1/members", world.owner, json_body={"email": email.upper(), "role": "admin"}
    )
    assert reply.status == 409
    assert await db.fetchval("SELECT count(*) FROM audit_log") == before


async def test_usage_reads_hourly_counters_in_the_window(
    world: World, db: asyncpg.Connection
) -> None:
    key_id = uuid.UUID(world.key_id)
    hour = dt.datetime(2030, 1, 1, 10, tzinfo=dt.UTC)
    rows = [
        (hour, "ok", 5),
        (hour, "failed_auth", 2),
        (hour + dt.timedelta(hours=1), "upstream_5xx", 1),
        (hour + dt.timedelta(hours=5), "ok", 100),  # outside the window below
    ]
    await db.executemany(
        "INSERT INTO key_usage_hourly (key_id, hour, outcome, count) VALUES ($1, $2, $3, $4)",
        [(key_id, *row) for row in rows],
    )
    reply = await world.client.call(
        "GET",
        f"/v1/keys/{world.key_id}/usage?from=2030-01-01T10:30:00Z&to=2030-01-01T12:00:00Z",
        world.admin,
    )
    assert reply.status == 200
    assert reply.body["totals"] == {
        "ok": 5,
        "upstream_4xx": 0,
        "upstream_5xx": 1,
        "rate_limited": 0,
        "denied": 0,
        "failed_auth": 2,
        "total": 8,
    }
    assert [(i["hour"], i["total"]) for i in reply.body["items"]] == [
        ("2030-01-01T10:00:00.000000Z", 7),
        ("2030-01-01T11:00:00.000000Z", 1),
    ]
    default = await world.client.call("GET", f"/v1/keys/{world.key_id}/usage", world.owner)
    assert default.body["items"] == [] and default.body["totals"]["total"] == 0


def _sample(text: str, name: str, labels: dict[str, str]) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_lifecycle_events_and_admin_requests_are_counted(world: World) -> None:
    """By event and by route template: never a key id in a label."""
    before = (await world.client.call("GET", "/metrics")).text
    path = f"/v1/keys/{world.key_id}"
    await world.client.call("PATCH", path, world.owner, json_body={"name": "m"})
    await world.client.call("POST", f"{path}/regenerate", world.owner)
    await world.client.call("DELETE", path, world.owner)
    await world.client.call("GET", path, world.owner)  # 404
    after = (await world.client.call("GET", "/metrics")).text
    for event in ("updated", "regenerated", "deleted"):
        name = "gateway_key_lifecycle_events_total"
        assert _sample(after, name, {"event": event}) == _sample(before, name, {"event": event}) + 1
    labels = {"route": "/v1/keys/{id}", "method": "GET", "status_class": "4xx"}
    name = "gateway_admin_requests_total"
    assert _sample(after, name, labels) == _sample(before, name, labels) + 1
    assert world.key_id not in after
