"""Members and roles, admin tokens, the operator token, and the last-Owner rule."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from admin.app import create_admin_app
from admin.auth import AdminAuthenticator
from gateway.accounts import ADMIN_TOKEN_FORMAT
from gateway.config import Config, FailedAuthConfig
from gateway.errors import GatewayError
from gateway.keyformat import Hasher

from .helpers import wait_for
from .test_admin_support import (  # noqa: F401 - fixtures
    OPERATOR_TOKEN,
    AdminClient,
    World,
    add_member,
    admin_server_fixture,
    client_fixture,
    world_fixture,
)


async def test_added_member_gets_a_token_once_and_acts_with_its_role(world: World) -> None:
    client = world.client
    added = await client.call(
        "POST",
        "/v1/members",
        world.owner,
        json_body={"email": "Grace@Example.com", "name": " Grace ", "role": "admin"},
    )
    assert added.status == 201
    assert added.headers["Cache-Control"] == "no-store"
    token = added.body["token"]
    assert token.startswith("gpa_")
    assert (added.body["name"], added.body["role"]) == ("Grace", "admin")
    me = await client.call("GET", "/v1/me", token)
    assert me.body["id"] == added.body["id"] and "token" not in me.body
    listed = await client.call("GET", "/v1/members", world.owner)
    assert added.body["id"] in {m["id"] for m in listed.body["items"]}
    assert all("token" not in m for m in listed.body["items"])
    assert token not in listed.text
    # Emails are unique per account, whatever their case.
    again = await client.call(
        "POST",
        "/v1/members",
        world.owner,
        json_body={"email": "grace@example.COM", "role": "admin"},
    )
    assert (again.status, again.body["error"]["code"]) == (409, "conflict")


async def test_role_change_applies_to_the_next_request(world: World) -> None:
    client = world.client
    assert (await client.call("GET", "/v1/keys", world.admin)).status == 200
    changed = await client.call(
        "PATCH", f"/v1/members/{world.admin_id}", world.owner, json_body={"role": "readonly"}
    )
    assert changed.body["role"] == "readonly"
    assert (await client.call("GET", "/v1/keys", world.admin)).status == 403
    await client.call(
        "PATCH", f"/v1/members/{world.admin_id}", world.owner, json_body={"role": "owner"}
    )
    assert (await client.call("GET", "/v1/members", world.admin)).status == 200


async def test_removed_member_token_stops_working_at_once(world: World) -> None:
    client = world.client
    assert (await client.call("GET", "/v1/me", world.readonly)).status == 200  # now cached
    removed = await client.call("DELETE", f"/v1/members/{world.readonly_id}", world.owner)
    assert removed.status == 204
    reply = await client.call("GET", "/v1/me", world.readonly)
    assert (reply.status, reply.body["error"]["code"]) == (401, "invalid_token")
    assert (
        await client.call("DELETE", f"/v1/members/{world.readonly_id}", world.owner)
    ).status == 404


@pytest.mark.parametrize(
    ("role", "path", "body", "table"),
    [
        ("admin", "/v1/keys", {"name": "in flight"}, "api_keys"),
        (
            "owner",
            "/v1/webhooks",
            {"url": "http://127.0.0.1:9/hook", "events": ["key.created"]},
            "webhook_endpoints",
        ),
    ],
)
async def test_member_removed_while_their_create_is_in_flight_gets_401(
    world: World, db: asyncpg.Connection, role: str, path: str, body: Any, table: str
) -> None:
    """The new row names its creator (`created_by`): a removal that commits while the
    request waits for it answers 401, as the member's next request would get, and
    nothing is written."""
    client = world.client
    token, member_id = await add_member(client, world.owner, role)
    before = await db.fetchval(
        f"SELECT (SELECT count(*) FROM {table}) + (SELECT count(*) FROM audit_log)"  # noqa: S608
    )
    removal = db.transaction()
    await removal.start()
    await db.execute("DELETE FROM members WHERE id = $1", member_id)
    request = asyncio.create_task(client.call("POST", path, token, json_body=body))

    async def waiting_for_the_removal() -> bool:
        blocked: bool = await db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_locks"
            " WHERE NOT granted AND pg_backend_pid() = ANY (pg_blocking_pids(pid)))"
        )
        return blocked

    try:
        await wait_for(waiting_for_the_removal)
    finally:
        await removal.commit()
    reply = await request
    assert (reply.status, reply.body["error"]["code"]) == (401, "invalid_token"), reply.text
    after = await db.fetchval(
        f"SELECT (SELECT count(*) FROM {table}) + (SELECT count(*) FROM audit_log)"  # noqa: S608
    )
    assert after == before


async def test_regenerated_member_token_replaces_the_old_one_at_once(world: World) -> None:
    client = world.client
    assert (await client.call("GET", "/v1/me", world.admin)).status == 200  # now cached
    reissued = await client.call(
        "POST", f"/v1/members/{world.admin_id}/regenerate-token", world.owner
    )
    assert reissued.status == 200
    assert reissued.headers["Cache-Control"] == "no-store"
    new = reissued.body["token"]
    assert new != world.admin
    assert (await client.call("GET", "/v1/me", world.admin)).status == 401
    assert (await client.call("GET", "/v1/me", new)).status == 200


async def test_owner_can_regenerate_their_own_token(world: World) -> None:
    reissued = await world.client.call(
        "POST", f"/v1/members/{world.owner_id}/regenerate-token", world.owner
    )
    assert (await world.client.call("GET", "/v1/me", world.owner)).status == 401
    assert (await world.client.call("GET", "/v1/me", reissued.body["token"])).status == 200


async def test_last_owner_cannot_be_demoted_or_removed(world: World) -> None:
    client, path = world.client, f"/v1/members/{world.owner_id}"
    for method, body in [("PATCH", {"role": "admin"}), ("DELETE", None)]:
        reply = await client.call(method, path, world.owner, json_body=body)
        assert (reply.status, reply.body["error"]["code"]) == (409, "last_owner")
    # Renaming the last Owner, or "changing" it to owner, is fine.
    renamed = await client.call(
        "PATCH", path, world.owner, json_body={"name": "Boss", "role": "owner"}
    )
    assert renamed.status == 200
    # With a second Owner, the first may step down; then the second is the last.
    await client.call(
        "PATCH", f"/v1/members/{world.admin_id}", world.owner, json_body={"role": "owner"}
    )
    assert (
        await client.call("PATCH", path, world.owner, json_body={"role": "admin"})
    ).status == 200
    last = await client.call("DELETE", f"/v1/members/{world.admin_id}", world.admin)
    assert last.status == 409


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(
    world: World, db: asyncpg.Connection
) -> None:
    """The account row lock serialises the two: exactly one demotion succeeds."""
    client = world.client
    await client.call(
        "PATCH", f"/v1/members/{world.admin_id}", world.owner, json_body={"role": "owner"}
    )
    replies = await asyncio.gather(
        client.call(
            "PATCH", f"/v1/members/{world.admin_id}", world.owner, json_body={"role": "readonly"}
        ),
        client.call(
            "PATCH", f"/v1/members/{world.owner_id}", world.admin, json_body={"role": "readonly"}
        ),
    )
    assert sorted(r.status for r in replies) in ([200, 409], [200, 403])
    owners = await db.fetchval(
        "SELECT count(*) FROM members WHERE account_id = $1 AND role = 'owner'", world.account_id
    )
    assert owners == 1


async def test_members_list_pages_oldest_first(world: World) -> None:
    for role in ("readonly", "admin", "readonly"):
        await add_member(world.client, world.owner, role)
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await world.client.call("GET", f"/v1/members{query}", world.owner)
        assert len(page.body["items"]) <= 2
        seen.extend(m["id"] for m in page.body["items"])
        cursor = page.body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 6
    assert seen[0] == str(world.owner_id)


async def test_members_of_another_account_cannot_be_touched(world: World) -> None:
    """Account B's Owner gets 404 for A's members, exactly as for unknown ids."""
    for method, suffix, body in [
        ("PATCH", "", {"role": "owner"}),
        ("DELETE", "", None),
        ("POST", "/regenerate-token", None),
    ]:
        reply = await world.client.call(
            method, f"/v1/members/{world.owner_id}{suffix}", world.other, json_body=body
        )
        assert reply.status == 404
    assert (await world.client.call("GET", "/v1/me", world.owner)).status == 200


# -- the operator ----------------------------------------------------------------------


async def test_operator_lists_accounts_in_pages(world: World) -> None:
    for i in range(3):
        created = await world.client.call(
            "POST",
            "/v1/accounts",
            OPERATOR_TOKEN,
            json_body={"name": f"Paged {i}", "owner_email": f"o{i}@example.com"},
        )
        assert created.status == 201
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await world.client.call("GET", f"/v1/accounts{query}", OPERATOR_TOKEN)
        seen.extend(a["name"] for a in page.body["items"])
        cursor = page.body["next_cursor"]
        if cursor is None:
            break
    assert seen == ["Account A", "Account B", "Paged 0", "Paged 1", "Paged 2"]


@pytest.fixture
async def no_operator(config: Config) -> AsyncIterator[AdminClient]:
    server = TestServer(create_admin_app(config, environ={}), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield AdminClient(str(server.make_url("")), session)
    await server.close()


@pytest.mark.parametrize("token", [OPERATOR_TOKEN, "", "  "])
async def test_without_an_operator_token_operator_endpoints_are_401(
    no_operator: AdminClient, token: str
) -> None:
    for method, body in [("GET", None), ("POST", {"name": "x", "owner_email": "x@example.com"})]:
        reply = await no_operator.call(method, "/v1/accounts", token, json_body=body)
        assert reply.status == 401


async def test_operator_token_is_compared_whole(world: World) -> None:
    for token in (OPERATOR_TOKEN[:-1], OPERATOR_TOKEN + "x", OPERATOR_TOKEN.upper()):
        assert (await world.client.call("GET", "/v1/accounts", token)).status == 401


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Basic abc", "gpa_abc", "Bearer gpa_" + "A" * 46, "Bearer ünïcode"],
)
async def test_malformed_authorization_headers_are_401(world: World, header: str) -> None:
    reply = await world.client.call("GET", "/v1/me", headers={"Authorization": header})
    assert reply.status == 401
    assert reply.body["error"]["code"] in ("missing_token", "invalid_token")


async def test_wrong_secret_for_a_real_token_id_is_401(world: World) -> None:
    from gateway.accounts import ADMIN_TOKEN_FORMAT

    public_id = world.owner[len("gpa_") : len("gpa_") + 12]
    forged, _ = ADMIN_TOKEN_FORMAT.generate(public_id)
    assert (await world.client.call("GET", "/v1/me", forged)).status == 401
    assert (await world.client.call("GET", "/v1/me", world.owner)).status == 200


class CountingHasher(Hasher):
    """The real argon2id hasher, counting verifications."""

    verifications = 0

    def verify(self, secret_hash: str, secret: str) -> bool:
        type(self).verifications += 1
        return super().verify(secret_hash, secret)


async def test_verified_tokens_are_cached_but_follow_the_database(
    world: World, config: Config
) -> None:
    """One argon2 per token, not per request; a regenerated token still dies at once."""
    pool = await asyncpg.create_pool(config.database.url, min_size=1, max_size=2)
    hasher = CountingHasher(config.keys.argon2)
    auth = AdminAuthenticator(pool, hasher, None)
    try:
        header = f"Bearer {world.admin}"
        for _ in range(5):
            principal = await auth.authenticate(header)
            assert principal.role == "admin"
        assert CountingHasher.verifications == 1
        await world.client.call(
            "POST", f"/v1/members/{world.admin_id}/regenerate-token", world.owner
        )
        with pytest.raises(GatewayError) as refused:
            await auth.authenticate(header)
        assert refused.value.status == 401
    finally:
        auth.close()
        await pool.close()


async def test_made_up_tokens_are_throttled_before_argon2(world: World, config: Config) -> None:
    """25 made-up tokens (valid checksums) from one address: at most the per-IP budget
    of argon2 verifications, then 429 too_many_failed_attempts with Retry-After."""
    pool = await asyncpg.create_pool(config.database.url, min_size=1, max_size=2)
    CountingHasher.verifications = 0
    hasher = CountingHasher(config.keys.argon2)
    budget = FailedAuthConfig(per_ip_per_minute=5, per_key_per_minute=5)
    auth = AdminAuthenticator(pool, hasher, None, failed_auth=budget)
    statuses = []
    try:
        for _ in range(25):
            with pytest.raises(GatewayError) as refused:
                await auth.authenticate(f"Bearer {ADMIN_TOKEN_FORMAT.generate()[0]}", "192.0.2.7")
            statuses.append(refused.value.status)
            if refused.value.status == 429:
                assert refused.value.code == "too_many_failed_attempts"
                assert int(refused.value.headers["Retry-After"]) >= 1
        # Another address is not held back by this one's failures.
        principal = await auth.authenticate(f"Bearer {world.admin}", "192.0.2.8")
        assert principal.role == "admin"
    finally:
        auth.close()
        await pool.close()
    assert statuses == [401] * 5 + [429] * 20
    # Five made-up tokens (one dummy hash each, plus the dummy's creation) and the admin's.
    assert CountingHasher.verifications == 6


async def test_admin_listener_answers_429_after_failed_tokens(world: World) -> None:
    """Over the wire, with the default budget (30 per address per minute)."""
    statuses = set()
    for _ in range(40):
        reply = await world.client.call("GET", "/v1/me", ADMIN_TOKEN_FORMAT.generate()[0])
        statuses.add(reply.status)
    assert statuses == {401, 429}
