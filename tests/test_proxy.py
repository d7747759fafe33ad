"""The proxy pipeline end to end: real gateway, real upstream, real Postgres, real sockets."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from yarl import URL

from gateway import metrics
from gateway.clock import FakeClock, utcnow
from gateway.config import Config
from gateway.forward import SMALL_BODY
from gateway.ratelimit import Decision, Unlimited
from gateway.records import KeyRecord

from .conftest import GatewayFactory, Seed, UpstreamFactory
from .helpers import key_status, make_config, raw_request, sample, wait_for
from .reliability import Received, answer, raw_upstream


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def call(
    server: TestServer, path: str = "/v1/echo", method: str = "GET", **kw: Any
) -> tuple[int, CIMultiDict[str], Any]:
    async with aiohttp.ClientSession() as session:
        # encoded=True: the exact path and query, no client-side normalisation.
        url = URL(f"http://127.0.0.1:{server.port}{path}", encoded=True)
        async with session.request(method, url, **kw) as response:
            body = await response.read()
            try:
                data: Any = await response.json(content_type=None)
            except ValueError:
                data = body
            return response.status, response.headers.copy(), data


def assert_error(status: int, headers: CIMultiDict[str], body: Any, code: str) -> None:
    assert headers["Content-Type"].startswith("application/json")
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert body["error"]["request_id"] == headers["X-Request-Id"]


# -- SPEC §3 error codes, each from a real request ------------------------------------


async def test_missing_key_is_401_with_bearer_challenge(gateway: TestServer) -> None:
    status, headers, body = await call(gateway)
    assert status == 401
    assert_error(status, headers, body, "missing_api_key")
    assert headers["WWW-Authenticate"] == 'Bearer realm="GrowPanel API"'


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer ",
        "Token gp_abc",
        "gp_onlythekey",
        "Bearer gp_tooshort",
        "Bearer not-a-key-at-all-but-long-enough-to-be-checked-here",
    ],
)
async def test_malformed_authorization_is_invalid_api_key(
    gateway: TestServer, authorization: str
) -> None:
    status, headers, body = await call(gateway, headers={"Authorization": authorization})
    assert status == 401
    assert_error(status, headers, body, "invalid_api_key")


async def test_bad_checksum_is_refused_without_database_work(
    gateway: TestServer, seed: Seed
) -> None:
    key = (await seed.key()).key
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    before = metrics.KEY_LOOKUPS._value.get()
    status, headers, body = await call(gateway, headers=bearer(tampered))
    assert status == 401
    assert_error(status, headers, body, "invalid_api_key")
    assert metrics.KEY_LOOKUPS._value.get() == before


async def test_unknown_wrong_secret_and_deleted_keys_get_one_identical_body(
    gateway: TestServer, seed: Seed
) -> None:
    account = await seed.account()
    good = await seed.key(account)
    deleted = await seed.key(account)
    await seed.store.delete(account.account_id, deleted.id)
    fmt = seed.store.format
    unknown, _ = fmt.generate()
    wrong_secret, _ = fmt.generate(good.public_id)
    bodies = []
    for key in (unknown, wrong_secret, deleted.key):
        status, headers, body = await call(gateway, headers=bearer(key))
        assert status == 401
        assert_error(status, headers, body, "invalid_api_key")
        bodies.append((body["error"]["code"], body["error"]["message"]))
    assert len(set(bodies)) == 1


async def test_expired_key_is_401_expired(start_gateway: GatewayFactory, seed: Seed) -> None:
    clock = FakeClock(start=dt.datetime.now(dt.UTC).timestamp())
    gateway = await start_gateway(clock=clock)
    key = await seed.key(expires_at=utcnow(clock) + dt.timedelta(seconds=60))
    assert (await call(gateway, headers=bearer(key.key)))[0] == 200
    clock.advance(59)
    assert (await call(gateway, headers=bearer(key.key)))[0] == 200
    clock.advance(1)
    status, headers, body = await call(gateway, headers=bearer(key.key))
    assert status == 401
    assert_error(status, headers, body, "expired_api_key")


async def test_disabled_key_is_401_disabled_until_reenabled(
    gateway: TestServer, seed: Seed
) -> None:
    account = await seed.account()
    key = await seed.key(account)
    assert (await call(gateway, headers=bearer(key.key)))[0] == 200
    await seed.store.set_enabled(account.account_id, key.id, False)

    async def status_is(expected: int) -> bool:
        return await key_status(gateway, key.key) == expected

    # The change reaches the gateway's cache by notification: within moments, not
    # necessarily before the next request.
    await wait_for(lambda: status_is(401))
    status, headers, body = await call(gateway, headers=bearer(key.key))
    assert_error(status, headers, body, "disabled_api_key")
    await seed.store.set_enabled(account.account_id, key.id, True)
    await wait_for(lambda: status_is(200))


async def test_ip_outside_allowlist_is_403(gateway: TestServer, seed: Seed) -> None:
    outside = await seed.key(ip_allowlist=["10.0.0.0/8"])
    inside = await seed.key(ip_allowlist=["127.0.0.0/8", "::1/128"])
    status, headers, body = await call(gateway, headers=bearer(outside.key))
    assert status == 403
    assert_error(status, headers, body, "ip_not_allowed")
    assert (await call(gateway, headers=bearer(inside.key)))[0] == 200


@pytest.mark.parametrize(
    ("path", "permission"),
    [
        ("/v1/reports/mrr", "reports:read"),
        ("/v1/customers", "customers:read"),
        ("/v1/data/anything", "data:read"),
        ("/v1/account", "account:read"),
    ],
)
async def test_route_outside_granted_permissions_is_403(
    gateway: TestServer, seed: Seed, path: str, permission: str
) -> None:
    others = await seed.key(permissions=[p for p in seed.permissions if p != permission])
    only = await seed.key(permissions=[permission])
    status, headers, body = await call(gateway, path, headers=bearer(others.key))
    assert status == 403
    assert_error(status, headers, body, "insufficient_permission")
    assert body["error"]["permission"] == permission
    assert (await call(gateway, path, headers=bearer(only.key)))[0] == 200


async def test_database_down_and_key_not_cached_is_503(
    start_gateway: GatewayFactory, config: Config, seed: Seed, cluster: Any
) -> None:
    gateway = await start_gateway()
    key = await seed.key()
    cluster.stop()
    try:
        status, headers, body = await call(gateway, headers=bearer(key.key))
    finally:
        cluster.start()
    assert status == 503
    assert_error(status, headers, body, "auth_unavailable")
    assert int(headers["Retry-After"]) >= 1


async def test_body_over_limit_is_413(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    small = make_config(config.database.url, config.proxy.upstream, proxy={"max_body_bytes": 1000})
    gateway = await start_gateway(small)
    key = await seed.key()
    status, headers, body = await call(
        gateway, method="POST", data=b"x" * 1001, headers=bearer(key.key)
    )
    assert status == 413
    assert_error(status, headers, body, "request_too_large")

    async def chunked() -> Any:
        for _ in range(20):
            yield b"y" * 100

    status, headers, body = await call(
        gateway, method="POST", data=chunked(), headers=bearer(key.key)
    )
    assert status == 413
    assert_error(status, headers, body, "request_too_large")
    status, _, body = await call(gateway, method="POST", data=b"z" * 1000, headers=bearer(key.key))
    assert status == 200 and body["body_bytes"] == 1000


async def test_unreachable_upstream_is_502(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    gateway = await start_gateway(make_config(config.database.url, "http://127.0.0.1:9"))
    key = await seed.key()
    status, headers, body = await call(gateway, headers=bearer(key.key))
    assert status == 502
    assert_error(status, headers, body, "upstream_unavailable")


async def test_slow_upstream_is_504_and_others_are_unaffected(
    start_gateway: GatewayFactory, start_upstream: UpstreamFactory, config: Config, seed: Seed
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"fast": True})

    upstream = await start_upstream({"/v1/slow": slow, "/v1/fast": fast})
    try:
        gateway = await start_gateway(
            make_config(config.database.url, upstream, proxy={"timeout_seconds": 0.5})
        )
        key = await seed.key()
        slow_call = asyncio.create_task(call(gateway, "/v1/slow", headers=bearer(key.key)))
        status, _, body = await call(gateway, "/v1/fast", headers=bearer(key.key))
        assert (status, body) == (200, {"fast": True})
        assert not slow_call.done()
        status, headers, body = await slow_call
        assert status == 504
        assert_error(status, headers, body, "upstream_timeout")
    finally:
        release.set()


# -- forwarding ------------------------------------------------------------------------


async def test_upstream_receives_method_path_query_body_and_headers_intact(
    gateway: TestServer, seed: Seed
) -> None:
    key = await seed.key()
    body = os.urandom(5 * 1024 * 1024)

    async def stream() -> Any:
        for i in range(0, len(body), 256 * 1024):
            yield body[i : i + 256 * 1024]

    status, headers, echo = await call(
        gateway,
        "/v1/echo/a%20b/c?x=1&y=%2F&y=2&empty=",
        method="PUT",
        data=stream(),
        headers={
            **bearer(key.key),
            "Content-Type": "application/x-custom",
            "X-Custom": "kept",
            "Accept": "application/json",
        },
    )
    assert status == 200
    assert echo["method"] == "PUT"
    assert echo["path"] == "/v1/echo/a%20b/c"
    assert echo["query"] == "x=1&y=%2F&y=2&empty="
    assert echo["body_bytes"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    received = {k.lower(): v for k, v in echo["headers"]}
    assert received["content-type"] == "application/x-custom"
    assert received["x-custom"] == "kept"
    assert received["accept"] == "application/json"
    assert headers["X-Request-Id"] == received["x-request-id"]


async def test_upstream_never_sees_the_key_or_forged_identity_and_does_see_identity(
    gateway: TestServer, seed: Seed
) -> None:
    account = await seed.account()
    key = await seed.key(account, permissions=["data:write", "test:any"])
    status, _, echo = await call(
        gateway,
        headers={
            **bearer(key.key),
            "X-GrowPanel-Account-Id": "forged-account",
            "x-growpanel-key-id": "forged-key",
            "X-GROWPANEL-KEY-PERMISSIONS": "admin:all",
            "X-GrowPanel-Anything": "forged",
            "X-Forwarded-For": "6.6.6.6",
            "Connection": "X-Drop-Me",
            "X-Drop-Me": "secret",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        },
    )
    assert status == 200
    pairs = [(k.lower(), v) for k, v in echo["headers"]]
    names = [k for k, _ in pairs]
    assert "authorization" not in names
    assert "proxy-authorization" not in names
    assert "x-drop-me" not in names
    assert "x-growpanel-anything" not in names
    assert key.key not in repr(echo)
    growpanel = {k: v for k, v in pairs if k.startswith("x-growpanel-")}
    assert growpanel == {
        "x-growpanel-account-id": str(account.account_id),
        "x-growpanel-key-id": str(key.id),
        "x-growpanel-key-permissions": "data:write,test:any",
    }
    assert dict(pairs)["x-forwarded-for"] == "127.0.0.1"
    assert names.count("x-forwarded-for") == 1


async def test_forward_authorization_option_passes_the_header(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    gateway = await start_gateway(
        make_config(
            config.database.url, config.proxy.upstream, proxy={"forward_authorization": True}
        )
    )
    key = await seed.key()
    _, _, echo = await call(gateway, headers=bearer(key.key))
    assert ["Authorization", f"Bearer {key.key}"] in echo["headers"]


@pytest.mark.parametrize("forward_authorization", [False, True])
async def test_two_authorization_headers_are_no_credential(
    start_gateway: GatewayFactory, config: Config, seed: Seed, forward_authorization: bool
) -> None:
    """The gateway judged the first `Authorization` and passed both on: an upstream that
    reads the last (or joins them) acted on a key the gateway never checked (revoked, out
    of its limits, without the route's permission)."""
    judged, other = await seed.key(), await seed.key(permissions=[])
    async with raw_upstream() as upstream:
        proxy = {"forward_authorization": forward_authorization}
        gateway = await start_gateway(make_config(config.database.url, upstream.url, proxy=proxy))
        for first, second in [(judged, other), (other, judged), (judged, judged)]:
            status, body = await raw_request(
                gateway.port,
                "GET /v1/customers HTTP/1.1",
                {"Authorization": f"Bearer {first.key}", "authorization": f"Bearer {second.key}"},
            )
            assert (status, json.loads(body)["error"]["code"]) == (401, "invalid_api_key")
        assert upstream.received == []


@pytest.mark.parametrize("code", [200, 201, 204, 301, 404, 418, 500, 503])
async def test_upstream_status_and_headers_pass_through(
    gateway: TestServer, seed: Seed, code: int
) -> None:
    key = await seed.key()
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            gateway.make_url(f"/v1/status/{code}"), headers=bearer(key.key), allow_redirects=False
        ) as response,
    ):
        assert response.status == code
        assert "X-Request-Id" in response.headers


async def test_large_download_streams_through(gateway: TestServer, seed: Seed) -> None:
    key = await seed.key()
    size = 8 * 1024 * 1024
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            gateway.make_url(f"/v1/data/export?bytes={size}"), headers=bearer(key.key)
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Length"] == str(size)
        received = 0
        async for chunk in response.content.iter_chunked(65536):
            received += len(chunk)
    assert received == size


@pytest.mark.parametrize(
    "path",
    [
        "/v1/reports/../customers",
        "/v1/reports/%2e%2e/customers",
        "/v1/reports%2fx",
        "/v1/./customers",
    ],
)
async def test_ambiguous_paths_are_refused(gateway: TestServer, seed: Seed, path: str) -> None:
    """Dot segments and encoded slashes could dodge permissions: refused, never forwarded."""
    key = await seed.key(permissions=["reports:read"])
    status, body = await raw_request(gateway.port, f"GET {path} HTTP/1.1", bearer(key.key))
    assert status == 400
    assert b'"invalid_path"' in body


async def test_head_request_passes_through_without_a_body(gateway: TestServer, seed: Seed) -> None:
    key = await seed.key()
    status, headers, body = await call(
        gateway, "/v1/customers", method="HEAD", headers=bearer(key.key)
    )
    assert status == 200
    assert not body  # HEAD: headers only
    assert int(headers["Content-Length"]) > 0


@pytest.mark.parametrize("chunked", [False, True])
async def test_request_body_keeps_its_framing(
    gateway: TestServer, seed: Seed, chunked: bool
) -> None:
    """A body with Content-Length goes up with that length; a chunked one stays chunked."""
    key = await seed.key()
    payload = os.urandom(200_000)

    async def stream() -> Any:
        yield payload[:100_000]
        yield payload[100_000:]

    _, _, echo = await call(
        gateway, method="POST", data=stream() if chunked else payload, headers=bearer(key.key)
    )
    received = {k.lower(): v for k, v in echo["headers"]}
    assert echo["body_sha256"] == hashlib.sha256(payload).hexdigest()
    if chunked:
        assert received["transfer-encoding"] == "chunked" and "content-length" not in received
    else:
        assert received["content-length"] == "200000" and "transfer-encoding" not in received


async def test_small_answer_cut_short_by_the_upstream_is_a_502(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    """A small body is read before anything is sent, so a broken one gets an honest 502."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gateway = await start_gateway(make_config(config.database.url, f"http://127.0.0.1:{port}"))
        key = await seed.key()
        status, headers, body = await call(gateway, headers=bearer(key.key))
        assert status == 502
        assert_error(status, headers, body, "upstream_unavailable")
    finally:
        server.close()
        await server.wait_closed()


class _BrokenLimiter(Unlimited):
    """A limiter with a bug: stands in for any unexpected exception inside the pipeline."""

    def check(self, key: KeyRecord) -> Decision:
        raise RuntimeError("a bug in the limiter")


async def test_a_bug_in_the_pipeline_is_a_json_500_counted_like_any_request(
    start_gateway: GatewayFactory, seed: Seed, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_gateway(limiter=_BrokenLimiter())
    key = await seed.key()
    before = sample("gateway_requests_total", outcome="internal_error", status_class="5xx")
    status, headers, body = await call(server, headers=bearer(key.key))
    assert status == 500
    assert_error(status, headers, body, "internal_error")
    assert "a bug in the limiter" not in str(body)
    after = sample("gateway_requests_total", outcome="internal_error", status_class="5xx")
    assert after == before + 1
    assert any("a bug in the limiter" in (r.exc_text or "") for r in caplog.records)


async def test_the_gateway_names_itself_without_versions_and_keeps_the_upstreams_name(
    start_gateway: GatewayFactory, start_upstream: UpstreamFactory, config: Config, seed: Seed
) -> None:
    async def named(request: web.Request) -> web.Response:
        return web.json_response({}, headers={"Server": "growpanel-api/7"})

    upstream = await start_upstream({"/v1/named": named})
    gateway = await start_gateway(make_config(config.database.url, upstream))
    _, headers, _ = await call(gateway)  # the gateway's own answer (401)
    assert headers.getall("Server") == ["GrowPanel-Gateway"]
    key = await seed.key()
    _, headers, _ = await call(gateway, "/v1/named", headers=bearer(key.key))
    assert headers.getall("Server") == ["growpanel-api/7"]


async def test_an_upstream_answer_without_a_server_name_gets_the_gateways(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    """Both ways an answer is relayed: read whole (small) and streamed (large)."""
    big = b"x" * (SMALL_BODY + 1)

    async def large(request: Received, transport: asyncio.Transport) -> None:
        transport.write(answer(big))

    async with raw_upstream({"/v1/large": large}) as upstream:
        gateway = await start_gateway(make_config(config.database.url, upstream.url))
        key = await seed.key()
        for path, body in (("/v1/small", b"ok"), ("/v1/large", big)):
            status, headers, got = await call(gateway, path, headers=bearer(key.key))
            assert (status, got) == (200, body)
            assert headers.getall("Server") == ["GrowPanel-Gateway"]
