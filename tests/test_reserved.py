"""The reserved prefix `/_gateway/` on the public listener: answered by the gateway itself,
without a key, and never forwarded upstream."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from .conftest import GatewayFactory, UpstreamFactory
from .helpers import make_config


@pytest.fixture
async def counted(
    start_upstream: UpstreamFactory, start_gateway: GatewayFactory, database_url: str
) -> tuple[TestServer, list[str]]:
    """A gateway whose upstream records every path it is asked for."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"upstream": True})

    url = await start_upstream({"/{tail:.*}": record})
    return await start_gateway(config=make_config(database_url, url)), seen


async def test_ready_answers_without_a_key_and_says_nothing_else(
    counted: tuple[TestServer, list[str]],
) -> None:
    gateway, seen = counted
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.make_url("/_gateway/ready")) as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            assert await response.json() == {"status": "ready"}
            assert "X-RateLimit-Limit" not in response.headers
            assert response.headers["Server"] == "GrowPanel-Gateway"
        async with session.head(gateway.make_url("/_gateway/ready")) as response:
            assert response.status == 200
        async with session.post(gateway.make_url("/_gateway/ready")) as response:
            assert response.status == 405
            assert (await response.json())["error"]["code"] == "method_not_allowed"
    assert seen == []


@pytest.mark.parametrize(
    "path",
    [
        "/_gateway",
        "/_gateway/",
        "/_gateway/nothing-here",
        "/_gateway/ready/more",
        "/_gateway/v1/customers",
        "/%5Fgateway/ready2",
    ],
)
async def test_other_reserved_paths_are_a_json_404_before_any_key_check(
    counted: tuple[TestServer, list[str]], path: str
) -> None:
    gateway, seen = counted
    async with aiohttp.ClientSession() as session:
        url = gateway.make_url("").with_path(path, encoded=True)
        for headers in ({}, {"Authorization": "Bearer not-a-key"}):
            async with session.get(url, headers=headers) as response:
                assert response.status == 404
                body = await response.json()
                assert body["error"]["code"] == "not_found"
                assert body["error"]["request_id"] == response.headers["X-Request-Id"]
                assert "WWW-Authenticate" not in response.headers
    assert seen == []


async def test_ready_turns_503_once_shutdown_begins(
    counted: tuple[TestServer, list[str]],
) -> None:
    gateway, _ = counted
    await gateway.app.shutdown()  # what SIGTERM starts (on_shutdown), listener still open
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.make_url("/_gateway/ready")) as response:
            assert response.status == 503
            assert await response.json() == {"status": "not_ready"}


async def test_paths_outside_the_prefix_are_still_proxied(
    counted: tuple[TestServer, list[str]],
) -> None:
    gateway, seen = counted
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.make_url("/_gatewayish/x")) as response:
            assert response.status == 401  # the proxy's answer: a key is needed
    assert seen == []
