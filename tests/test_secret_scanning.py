"""`POST /_gateway/secret-scanning/github`: a local key pair plays GitHub, alerts are really
signed, and real keys are found, disabled, revoked or reported."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import Config

from . import secret_scan
from .conftest import GatewayFactory, Seed
from .helpers import key_status, make_config, sample, wait_for
from .reliability import StartServe, serve  # noqa: F401 - fixture
from .test_admin_support import (  # noqa: F401 - fixtures
    World,
    admin_server_fixture,
    client_fixture,
    world_fixture,
)

PATH = "/_gateway/secret-scanning/github"


@dataclasses.dataclass
class FakeGitHub:
    """GitHub's side: signing keys, and the public-keys document on a real socket."""

    server: TestServer
    keys: dict[str, ec.EllipticCurvePrivateKey]
    fetches: int = 0
    up: bool = True

    @property
    def url(self) -> str:
        return str(self.server.make_url("/meta/public_keys/secret_scanning"))

    def add_key(self) -> str:
        key_id = uuid.uuid4().hex * 2
        self.keys[key_id] = ec.generate_private_key(ec.SECP256R1())
        return key_id

    @property
    def key_id(self) -> str:
        return next(iter(self.keys))

    def sign(self, body: bytes, key_id: str | None = None) -> dict[str, str]:
        key_id = key_id or self.key_id
        signature = self.keys[key_id].sign(body, ec.ECDSA(hashes.SHA256()))
        return {
            "Github-Public-Key-Identifier": key_id,
            "Github-Public-Key-Signature": base64.b64encode(signature).decode(),
            "Content-Type": "application/json",
        }

    def document(self) -> dict[str, Any]:
        return {
            "public_keys": [
                {
                    "key_identifier": key_id,
                    "key": key.public_key()
                    .public_bytes(
                        serialization.Encoding.PEM,
                        serialization.PublicFormat.SubjectPublicKeyInfo,
                    )
                    .decode(),
                    "is_current": True,
                }
                for key_id, key in self.keys.items()
            ]
        }


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    fake: FakeGitHub

    async def public_keys(request: web.Request) -> web.Response:
        fake.fetches += 1
        if not fake.up:
            return web.Response(status=503)
        return web.json_response(fake.document())

    app = web.Application()
    app.router.add_get("/meta/public_keys/secret_scanning", public_keys)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake = FakeGitHub(server, {})
    fake.add_key()
    yield fake
    await server.close()


def scanning_config(config: Config, github: FakeGitHub, **settings: Any) -> Config:
    return make_config(
        config.database.url,
        config.proxy.upstream,
        secret_scanning={
            "public_keys_url": github.url,
            "refresh_min_interval_seconds": 0,
            **settings,
        },
    )


def alert(*tokens: str, url: str = "https://github.com/octo/repo/blob/abc/leak.py") -> bytes:
    return json.dumps(
        [{"token": t, "type": "growpanel_api_key", "url": url, "source": "content"} for t in tokens]
    ).encode()


async def post(server: TestServer, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(server.make_url(PATH), data=body, headers=headers) as response:
            data = await response.json(content_type=None)
            return response.status, data


def mistype(key: str) -> str:
    i = len(key) // 2
    return key[:i] + ("A" if key[i] != "A" else "B") + key[i + 1 :]


async def test_alert_labels_live_deleted_mistyped_and_foreign_tokens(
    start_gateway: GatewayFactory,
    config: Config,
    github: FakeGitHub,
    seed: Seed,
    db: asyncpg.Connection,
) -> None:
    gateway = await start_gateway(config=scanning_config(config, github))
    account = await seed.account()
    await db.execute(
        "INSERT INTO webhook_endpoints (account_id, url, events, secret)"
        " VALUES ($1, 'http://127.0.0.1:9/hook', '{key.leaked}', 'whsec_AAAA')",
        account.account_id,
    )
    live, deleted, other = [await seed.key(account) for _ in range(3)]
    assert await seed.store.delete(account.account_id, deleted.id)
    wrong_secret, _ = seed.store.format.generate(other.public_id)  # valid checksum
    tokens = [
        live.key,
        deleted.key,
        mistype(other.key),
        wrong_secret,
        "ghp_" + "x" * 36,
        "gp_" + "0" * 46,
        live.key,  # the same token twice: checked once, answered twice
    ]
    body = alert(*tokens)
    status, answer = await post(gateway, body, github.sign(body))
    assert status == 200, answer
    assert answer == [
        {"token_raw": t, "token_type": "growpanel_api_key", "label": label}
        for t, label in zip(
            tokens,
            ["true_positive", *["false_positive"] * 5, "true_positive"],
            strict=True,
        )
    ]
    assert await key_status(gateway, live.key) == 401
    assert await key_status(gateway, other.key) == 200
    info = await seed.store.get(account.account_id, live.id)
    assert info is not None and not info.enabled and info.leaked_at is not None
    assert info.leak_url == "https://github.com/octo/repo/blob/abc/leak.py"
    events = await db.fetch(
        "SELECT actor_type, target_id, details::text FROM audit_log WHERE action = 'key.leaked'"
    )
    assert len(events) == 1
    assert events[0]["actor_type"] == "system" and events[0]["target_id"] == live.id
    details = json.loads(events[0]["details"])
    assert details["url"] == info.leak_url
    assert (details["source"], details["action"]) == ("content", "disabled")
    assert live.key not in events[0]["details"]
    # The webhook event commits with the leak (docs/webhooks.md).
    (payload,) = await db.fetch("SELECT payload FROM webhook_events WHERE type = 'key.leaked'")
    leaked = json.loads(payload["payload"])["data"]
    assert leaked["key"]["id"] == str(live.id) and leaked["action"] == "disabled"
    assert leaked["url"] == info.leak_url and live.key not in payload["payload"]


async def test_an_alert_whose_body_arrives_in_pieces_is_read_whole(
    start_gateway: GatewayFactory, config: Config, github: FakeGitHub, seed: Seed
) -> None:
    """The body is read to its end, however the network cuts it, before the signature
    is checked."""
    gateway = await start_gateway(config=scanning_config(config, github))
    key = await seed.key()
    body = alert(key.key)
    head = "".join(f"{name}: {value}\r\n" for name, value in github.sign(body).items())
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    writer.write(
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}"
        "Connection: close\r\n\r\n".encode()
        + body[:10]
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # the gateway has the head and a piece: shapes the packets
    writer.write(body[10:])
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert await key_status(gateway, key.key) == 401


@pytest.mark.parametrize(("action", "after"), [("revoke", "invalid_api_key"), ("report", None)])
async def test_action_revoke_deletes_and_report_only_records(
    start_gateway: GatewayFactory,
    config: Config,
    github: FakeGitHub,
    seed: Seed,
    action: str,
    after: str | None,
) -> None:
    gateway = await start_gateway(config=scanning_config(config, github, action=action))
    account = await seed.account()
    key = await seed.key(account)
    body = alert(key.key)
    status, answer = await post(gateway, body, github.sign(body))
    assert (status, answer[0]["label"]) == (200, "true_positive")
    info = await seed.store.get(account.account_id, key.id)
    if after is None:
        assert info is not None and info.enabled and info.leaked_at is not None
        assert await key_status(gateway, key.key) == 200
    else:
        assert info is None  # deleted: gone from the admin API
        assert await key_status(gateway, key.key) == 401


def _lookups() -> float:
    return sample("gateway_secret_scanning_lookups_total")


async def test_bad_requests_are_refused_before_any_key_lookup(
    start_gateway: GatewayFactory,
    config: Config,
    github: FakeGitHub,
    seed: Seed,
    db: asyncpg.Connection,
) -> None:
    gateway = await start_gateway(config=scanning_config(config, github, max_tokens=3))
    key = await seed.key()
    body = alert(key.key)
    impostor = ec.generate_private_key(ec.SECP256R1())
    forged = base64.b64encode(impostor.sign(body, ec.ECDSA(hashes.SHA256()))).decode()
    signed = github.sign(body)
    big = alert(*[key.key] * 4)
    huge = b"[" + b" " * (256 * 1024) + b"]"
    surrogate = alert(key.key, url="https://github.com/\ud800")  # JSON escapes it
    cases: list[tuple[bytes, dict[str, str], int, str]] = [
        (body, {"Content-Type": "application/json"}, 401, "invalid_signature"),
        (body, {**signed, "Github-Public-Key-Signature": forged}, 401, "invalid_signature"),
        (body, {**signed, "Github-Public-Key-Signature": "not base64!"}, 401, "invalid_signature"),
        (body, {**signed, "Github-Public-Key-Identifier": "f" * 64}, 401, "invalid_signature"),
        (body + b" ", signed, 401, "invalid_signature"),  # the body changed after signing
        (huge, github.sign(huge), 413, "request_too_large"),
        (big, github.sign(big), 413, "too_many_tokens"),
        (b"{not json", github.sign(b"{not json"), 400, "invalid_payload"),
        (b'{"token": "x"}', github.sign(b'{"token": "x"}'), 400, "invalid_payload"),
        (b'[{"token": 1}]', github.sign(b'[{"token": 1}]'), 400, "invalid_payload"),
        (b"\xff\xfe", github.sign(b"\xff\xfe"), 400, "invalid_payload"),
        (surrogate, github.sign(surrogate), 400, "invalid_payload"),
    ]
    before = _lookups()
    for data, headers, expected, code in cases:
        status, answer = await post(gateway, data, headers)
        assert (status, answer["error"]["code"]) == (expected, code), (data[:40], headers)
    assert _lookups() == before
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'key.leaked'") == 0
    assert await key_status(gateway, key.key) == 200
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.make_url(PATH)) as response:
            assert response.status == 405  # never forwarded upstream, never a key check


async def test_an_unknown_key_id_fetches_the_document_again(
    start_gateway: GatewayFactory, config: Config, github: FakeGitHub, seed: Seed
) -> None:
    """GitHub rotates its keys: an alert signed by a new one is verified after a refresh;
    refreshes for unknown ids are spaced by refresh_min_interval_seconds."""
    gateway = await start_gateway(config=scanning_config(config, github))
    key = await seed.key()
    harmless = alert("gp_nothing")
    assert (await post(gateway, harmless, github.sign(harmless)))[0] == 200
    assert github.fetches == 1
    assert (await post(gateway, harmless, github.sign(harmless)))[0] == 200
    assert github.fetches == 1  # cached
    new_id = github.add_key()
    body = alert(key.key)
    status, answer = await post(gateway, body, github.sign(body, new_id))
    assert (status, answer[0]["label"]) == (200, "true_positive")
    assert github.fetches == 2

    spaced = await start_gateway(
        config=scanning_config(config, github, refresh_min_interval_seconds=3600)
    )
    assert (await post(spaced, harmless, github.sign(harmless)))[0] == 200
    fetched = github.fetches
    for _ in range(3):
        headers = {**github.sign(harmless), "Github-Public-Key-Identifier": "f" * 64}
        status, _ = await post(spaced, harmless, headers)
        assert status == 401
    assert github.fetches == fetched


async def test_unreachable_public_keys_answer_503(
    start_gateway: GatewayFactory, config: Config, github: FakeGitHub
) -> None:
    """GitHub retries an alert that failed: better than a wrong 401."""
    github.up = False
    gateway = await start_gateway(config=scanning_config(config, github))
    body = alert("gp_x")
    status, answer = await post(gateway, body, github.sign(body))
    assert (status, answer["error"]["code"]) == (503, "secret_scanning_unavailable")


async def test_failed_fetches_of_the_public_keys_are_spaced_too(
    start_gateway: GatewayFactory, config: Config, github: FakeGitHub
) -> None:
    """While GitHub's document cannot be read, requests naming any key id (signed or
    not) cause at most one fetch per refresh_min_interval_seconds, each answered 503."""
    github.up = False
    gateway = await start_gateway(
        config=scanning_config(config, github, refresh_min_interval_seconds=3600)
    )
    body = alert("gp_x")
    for key_id in (github.key_id, "f" * 64, github.key_id):
        headers = {**github.sign(body), "Github-Public-Key-Identifier": key_id}
        status, answer = await post(gateway, body, headers)
        assert (status, answer["error"]["code"]) == (503, "secret_scanning_unavailable")
    assert github.fetches == 1


async def test_each_token_costs_at_most_one_argon2_verification_and_malformed_none(
    start_gateway: GatewayFactory, config: Config, github: FakeGitHub, seed: Seed
) -> None:
    """The per-alert budget: checksum first (no I/O), a row look-up only for a valid
    checksum, argon2 only for a public id that exists."""
    gateway = await start_gateway(config=scanning_config(config, github))
    account = await seed.account()
    live, other = await seed.key(account), await seed.key(account)
    wrong_secret, _ = seed.store.format.generate(other.public_id)
    unknown_id, _ = seed.store.format.generate()
    tokens = [live.key, wrong_secret, unknown_id, mistype(other.key), "ghp_" + "x" * 36]
    body = alert(*tokens)
    verifications = sample("gateway_argon2_verifications_total")
    lookups = _lookups()
    status, answer = await post(gateway, body, github.sign(body))
    assert status == 200
    assert [a["label"] for a in answer] == ["true_positive"] + ["false_positive"] * 4
    assert _lookups() - lookups == 3  # the three with a valid checksum
    assert sample("gateway_argon2_verifications_total") - verifications == 2  # known ids


async def test_leaked_key_is_refused_by_two_processes_within_a_second(
    serve: StartServe,  # noqa: F811
    upstream: TestServer,
    github: FakeGitHub,
    seed: Seed,
) -> None:
    env = {"GATEWAY__SECRET_SCANNING__PUBLIC_KEYS_URL": github.url}
    upstream_url = str(upstream.make_url("")).rstrip("/")
    first, second = await serve(upstream_url, **env), await serve(upstream_url, **env)
    key = await seed.key()
    async with aiohttp.ClientSession() as session:

        async def status(base: str) -> int:
            async with session.get(
                f"{base}/v1/customers", headers={"Authorization": f"Bearer {key.key}"}
            ) as response:
                await response.read()
                return response.status

        for gateway in (first, second):
            assert await status(gateway.proxy_url) == 200  # cached in both
        body = alert(key.key)
        started = time.monotonic()
        async with session.post(
            f"{first.proxy_url}{PATH}", data=body, headers=github.sign(body)
        ) as response:
            assert response.status == 200
            assert (await response.json())[0]["label"] == "true_positive"
        for gateway in (first, second):
            while await status(gateway.proxy_url) != 401:
                assert time.monotonic() - started < 1.0, f"{gateway.proxy_url} still accepts"
                await asyncio.sleep(0.005)
        assert time.monotonic() - started < 1.0


async def test_leaked_key_is_not_enabled_again_but_regenerated(world: World, seed: Seed) -> None:
    """Enabling a leaked key is refused; regenerating (without grace) replaces the leaked
    secret and clears the leak, after which it may be enabled."""
    key_id, path = uuid.UUID(world.key_id), f"/v1/keys/{world.key_id}"
    async with seed.pool.acquire() as conn, conn.transaction():
        assert await seed.store.mark_leaked(conn, key_id, "https://example.com/leak", "disable")
    shown = await world.client.call("GET", path, world.owner)
    assert (shown.body["status"], shown.body["leak_url"]) == (
        "disabled",
        "https://example.com/leak",
    )
    assert shown.body["leaked_at"] is not None
    refused = await world.client.call("PATCH", path, world.owner, json_body={"enabled": True})
    assert (refused.status, refused.body["error"]["code"]) == (409, "key_leaked")
    renamed = await world.client.call("PATCH", path, world.admin, json_body={"name": "still ok"})
    assert renamed.status == 200 and renamed.body["enabled"] is False
    graced = await world.client.call(
        "POST", f"{path}/regenerate", world.owner, json_body={"grace_seconds": 60}
    )
    assert (graced.status, graced.body["error"]["code"]) == (409, "key_leaked")
    rolled = await world.client.call("POST", f"{path}/regenerate", world.owner)
    assert rolled.status == 200
    assert (rolled.body["leaked_at"], rolled.body["leak_url"]) == (None, None)
    assert rolled.body["enabled"] is False  # enabling it again is a deliberate step
    enabled = await world.client.call("PATCH", path, world.owner, json_body={"enabled": True})
    assert enabled.status == 200 and enabled.body["status"] == "active"


async def test_turned_off_the_path_is_404_and_never_forwarded(
    start_gateway: GatewayFactory, config: Config, github: FakeGitHub
) -> None:
    gateway = await start_gateway(config=scanning_config(config, github, enabled=False))
    body = alert("gp_x")
    status, answer = await post(gateway, body, github.sign(body))
    assert (status, answer["error"]["code"]) == (404, "not_found")
    assert github.fetches == 0


async def test_a_leak_of_a_secret_regenerated_meanwhile_spares_the_new_secret(
    start_gateway: GatewayFactory,
    config: Config,
    github: FakeGitHub,
    seed: Seed,
    db: asyncpg.Connection,
) -> None:
    """The alert's secret is verified, then the key is regenerated before the leak is
    recorded: the new secret was never leaked, and stays enabled and unmarked."""
    gateway = await start_gateway(config=scanning_config(config, github, action="revoke"))
    account = await seed.account()
    key = await seed.key(account)
    body = alert(key.key)
    async with seed.pool.acquire() as conn:
        regenerating = conn.transaction()
        await regenerating.start()
        # The row is locked, its old secret still the committed one: the alert verifies
        # it, then waits for the lock to record the leak.
        new = await seed.store.regenerate(account.account_id, key.id, conn=conn)
        assert new is not None
        answered = asyncio.create_task(post(gateway, body, github.sign(body)))

        async def waiting_for_the_row() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%leaked_at = coalesce%'"
                )
            )

        await wait_for(waiting_for_the_row)
        await regenerating.commit()
    status, answer = await answered
    assert (status, answer[0]["label"]) == (200, "false_positive")
    info = await seed.store.get(account.account_id, key.id)
    assert info is not None and info.enabled and info.leaked_at is None
    assert await key_status(gateway, new.key) == 200
    assert await key_status(gateway, key.key) == 401


async def test_a_leaked_secret_in_its_grace_period_disables_the_key(
    start_gateway: GatewayFactory, config: Config, github: FakeGitHub, seed: Seed
) -> None:
    """The previous secret still works during a regenerate's grace: its leak counts."""
    gateway = await start_gateway(config=scanning_config(config, github))
    account = await seed.account()
    key = await seed.key(account)
    new = await seed.store.regenerate(account.account_id, key.id, grace_seconds=3600)
    assert new is not None
    body = alert(key.key)
    status, answer = await post(gateway, body, github.sign(body))
    assert (status, answer[0]["label"]) == (200, "true_positive")
    info = await seed.store.get(account.account_id, key.id)
    assert info is not None and not info.enabled and info.leaked_at is not None
    assert await key_status(gateway, key.key) == 401
    assert await key_status(gateway, new.key) == 401


@pytest.mark.parametrize(
    "encode",
    [str, lambda key: "".join(f"%{b:02X}" for b in key.encode())],
    ids=["plain", "percent-encoded"],
)
async def test_a_leak_url_holding_the_key_is_not_kept(
    encode: Callable[[str], str],
    start_gateway: GatewayFactory,
    config: Config,
    github: FakeGitHub,
    seed: Seed,
    db: asyncpg.Connection,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Where GitHub found a key can name it (a wiki page, a file called after it): the key
    is then neither stored, nor logged, nor sent in a webhook."""
    gateway = await start_gateway(config=scanning_config(config, github, action="report"))
    account = await seed.account()
    await db.execute(
        "INSERT INTO webhook_endpoints (account_id, url, events, secret)"
        " VALUES ($1, 'http://127.0.0.1:9/hook', '{key.leaked}', 'whsec_AAAA')",
        account.account_id,
    )
    key = await seed.key(account)
    secret_scan.plant(key.key)  # found below if kept: this test's own finding
    body = alert(key.key, url=f"https://github.com/octo/repo/wiki/{encode(key.key)}")
    status, answer = await post(gateway, body, github.sign(body))
    assert (status, answer[0]["label"]) == (200, "true_positive")
    info = await seed.store.get(account.account_id, key.id)
    assert info is not None and info.leaked_at is not None and info.leak_url is None
    assert await secret_scan.scan_database(database_url, "the test database") == []
    logged = "\n".join(secret_scan.LogScanner().format(r) for r in caplog.records)
    assert key.key not in logged


@pytest.mark.parametrize("field", ["type", "source"])
async def test_a_nul_in_a_signed_alert_is_a_400_not_a_500(
    start_gateway: GatewayFactory, config: Config, github: FakeGitHub, seed: Seed, field: str
) -> None:
    """Postgres text and jsonb cannot hold U+0000: refused before any work, like a lone
    surrogate, rather than a 500 that GitHub would retry for ever."""
    gateway = await start_gateway(config=scanning_config(config, github))
    key = await seed.key()
    match = {"token": key.key, "type": "growpanel_api_key", "source": "content"}
    body = json.dumps([{**match, field: "a\u0000b"}]).encode()
    status, answer = await post(gateway, body, github.sign(body))
    assert (status, answer["error"]["code"]) == (400, "invalid_payload")
