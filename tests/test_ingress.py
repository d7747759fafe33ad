"""`/_gateway/verify`: the proxy's decision, on the request an ingress names, without
forwarding anything. (Against real nginx and Caddy: test_ingress_daemons.py.)"""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import Config

from .conftest import GatewayFactory, Seed, UpstreamFactory
from .helpers import make_config, sample, wait_for

TRUSTED = {"trusted_proxies": ["127.0.0.1/32"]}


@pytest.fixture
async def ingress(
    start_upstream: UpstreamFactory, start_gateway: GatewayFactory, database_url: str
) -> tuple[TestServer, list[str]]:
    """A gateway that trusts this test (127.0.0.1) as its ingress; its upstream records
    every path it is asked for (it must be asked for none)."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"upstream": True})

    url = await start_upstream({"/{tail:.*}": record})
    config = make_config(database_url, url, proxy=dict(TRUSTED))
    return await start_gateway(config=config), seen


def nginx_headers(key: str | None, method: str = "GET", uri: str = "/v1/customers") -> dict:
    headers = {"X-Original-Method": method, "X-Original-URI": uri}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return headers


async def test_verify_grants_with_identity_and_rate_limit_headers_and_records_the_use(
    ingress: tuple[TestServer, list[str]], seed: Seed, db, config: Config
) -> None:
    gateway, seen = ingress
    account = await seed.account()
    key = await seed.key(account, permissions=["customers:read", "reports:read", "test:any"])
    before = sample("gateway_requests_total", outcome="ok", status_class="2xx")
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gateway.make_url("/_gateway/verify"),
            headers=nginx_headers(key.key, "POST", "/v1/customers?page=2"),
            data=b"x" * 100_000,  # never read
        ) as response:
            assert response.status == 200
            assert await response.read() == b""
            h = response.headers
            assert h["X-GrowPanel-Account-Id"] == str(account.account_id)
            assert h["X-GrowPanel-Key-Id"] == str(key.id)
            assert h["X-GrowPanel-Key-Permissions"] == "customers:read,reports:read,test:any"
            assert h["X-RateLimit-Remaining"] == str(int(h["X-RateLimit-Limit"]) - 1)
            assert "RateLimit-Policy" in h and "RateLimit" in h
            assert h["X-Request-Id"]
            assert "X-GrowPanel-Refusal-Status" not in h
    assert seen == []
    assert sample("gateway_requests_total", outcome="ok", status_class="2xx") == before + 1

    async def recorded() -> bool:
        used = await db.fetchval(
            "SELECT last_used_at FROM api_key_last_used WHERE key_id = $1", key.id
        )
        ok = await db.fetchval(
            "SELECT coalesce(sum(count), 0) FROM key_usage_hourly"
            " WHERE key_id = $1 AND outcome = 'ok'",
            key.id,
        )
        return used is not None and ok == 1

    await wait_for(recorded, timeout=5)


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"X-Original-Method": "GET"}, 400, "invalid_original_request"),
        ({"X-Original-URI": "/v1/customers"}, 400, "invalid_original_request"),
        (
            {**nginx_headers(None), "X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v1/x"},
            400,
            "invalid_original_request",
        ),
        (nginx_headers(None, "G T"), 400, "invalid_original_request"),
        (nginx_headers(None, uri="http://elsewhere/v1/customers"), 400, "invalid_original_request"),
        (nginx_headers(None, uri="/v1//customers"), 401, "missing_api_key"),
        ({}, 400, "invalid_original_request"),
    ],
)
async def test_verify_refuses_an_original_request_it_cannot_read(
    ingress: tuple[TestServer, list[str]], headers: dict, status: int, code: str
) -> None:
    gateway, _ = ingress
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.make_url("/_gateway/verify"), headers=headers) as r:
            assert r.status == status
            assert (await r.json())["error"]["code"] == code


async def test_verify_authorises_the_original_route_not_its_own(
    ingress: tuple[TestServer, list[str]], seed: Seed
) -> None:
    gateway, _ = ingress
    key = await seed.key(permissions=["reports:read"])
    async with aiohttp.ClientSession() as session:
        url = gateway.make_url("/_gateway/verify")
        async with session.get(url, headers=nginx_headers(key.key, uri="/v1/customers")) as r:
            assert r.status == 403
            body = await r.json()
            assert body["error"]["code"] == "insufficient_permission"
            # nginx cannot pass a 403's body: it gets status and body in headers
            assert r.headers["X-GrowPanel-Refusal-Status"] == "403"
            assert r.headers["X-GrowPanel-Refusal-Body"] == await r.text()
            assert "X-RateLimit-Limit" in r.headers
        async with session.get(url, headers=nginx_headers(key.key, uri="/v1//reports")) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "invalid_path"
        caddy = {
            "Authorization": f"Bearer {key.key}",
            "X-Forwarded-Method": "GET",
            "X-Forwarded-Uri": "/v1/reports/mrr?x=/v1/customers",
        }
        async with session.get(url, headers=caddy) as r:
            assert r.status == 200
            assert "X-GrowPanel-Refusal-Status" not in r.headers
        # Envoy's ext_authz: the original path after the endpoint's, its own method
        envoy = gateway.make_url("/_gateway/verify/v1/customers")
        async with session.get(envoy, headers={"Authorization": f"Bearer {key.key}"}) as r:
            assert r.status == 403
            assert "X-GrowPanel-Refusal-Status" not in r.headers
        envoy = gateway.make_url("/_gateway/verify/v1/reports/mrr")
        async with session.head(envoy, headers={"Authorization": f"Bearer {key.key}"}) as r:
            assert r.status == 200


@pytest.mark.parametrize(
    ("uri", "status"),
    [
        ("/v1/reports/mrr?x=1#top", 200),  # in the query
        ("/v1/reports/mrr#top", 400),  # nginx passes the path on as /v1/reports/mrr%23top
        ("/v1/reports/mrr#?", 400),
        ("/v1/reports/mrr#/../../customers?x=1", 400),
    ],
)
async def test_verify_refuses_a_fragment_in_the_original_path(
    ingress: tuple[TestServer, list[str]], seed: Seed, uri: str, status: int
) -> None:
    """nginx names the target as the client wrote it, and passes its path on to the API
    with the '#' encoded: a path other than the one before the '#'. A '#' in the path is
    refused, as the proxy refuses one its aiohttp leaves in the path."""
    gateway, _ = ingress
    key = await seed.key(permissions=["reports:read"])
    async with aiohttp.ClientSession() as session:
        url = gateway.make_url("/_gateway/verify")
        async with session.get(url, headers=nginx_headers(key.key, uri=uri)) as r:
            assert r.status == status, await r.text()
            if status == 400:
                assert (await r.json())["error"]["code"] == "invalid_path"


async def test_verify_refuses_an_untrusted_caller_before_any_key_work(
    start_gateway: GatewayFactory, seed: Seed, config: Config
) -> None:
    gateway = await start_gateway()  # trusts no proxy
    key = await seed.key()
    async with aiohttp.ClientSession() as session:
        for headers in (
            nginx_headers(key.key),
            {"Authorization": f"Bearer {key.key}", "X-Forwarded-Uri": "/v1/customers"},
            {"Authorization": f"Bearer {key.key}"},
        ):
            async with session.get(gateway.make_url("/_gateway/verify"), headers=headers) as r:
                assert r.status == 403
                assert (await r.json())["error"]["code"] == "untrusted_ingress"
                assert "X-GrowPanel-Key-Id" not in r.headers
                assert "X-RateLimit-Limit" not in r.headers
