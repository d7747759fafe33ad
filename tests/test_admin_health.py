"""The admin listener's unauthenticated endpoints: health, readiness and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from admin.app import create_admin_app
from gateway.config import Config
from gateway.db import load_migrations

from .conftest import Seed
from .helpers import make_config, wait_for


@pytest.fixture
async def admin(config: Config) -> AsyncIterator[TestServer]:
    server = TestServer(create_admin_app(config), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def get(server: TestServer, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url(path)) as response:
            return response.status, await response.text()


async def test_healthz_answers_while_the_process_lives(admin: TestServer) -> None:
    assert await get(admin, "/healthz") == (200, '{"status": "ok"}')


async def test_readyz_is_200_with_a_migrated_database(admin: TestServer) -> None:
    status, body = await get(admin, "/readyz")
    assert status == 200, body


async def test_readyz_is_503_naming_pending_migrations(empty_database_url: str) -> None:
    server = TestServer(create_admin_app(make_config(empty_database_url)), host="127.0.0.1")
    await server.start_server()
    try:
        status, body = await get(server, "/readyz")
    finally:
        await server.close()
    assert status == 503
    assert f'"migrations": "{len(load_migrations())} pending"' in body


async def test_metrics_parse_as_prometheus_text_and_count_requests(
    admin: TestServer, gateway: TestServer, seed: Seed
) -> None:
    key = await seed.key()
    async with aiohttp.ClientSession() as session:
        async with session.get(
            gateway.make_url("/v1/customers"), headers={"Authorization": f"Bearer {key.key}"}
        ) as response:
            assert response.status == 200
    status, text = await get(admin, "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = families["gateway_requests"]
    ok = [
        s
        for s in requests.samples
        if s.name == "gateway_requests_total"
        and s.labels == {"outcome": "ok", "status_class": "2xx"}
    ]
    assert ok and ok[0].value >= 1
    for name in (
        "gateway_request_duration_seconds",
        "gateway_key_cache_hits",
        "gateway_argon2_verifications",
        "gateway_notifications",
    ):
        assert name in families


@pytest.mark.parametrize("path", ["/healthz", "/openapi.json", "/", "/v1/keys"])
async def test_admin_answers_name_the_gateway(admin: TestServer, path: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(admin.make_url(path)) as response:
            assert response.headers.getall("Server") == ["GrowPanel-Gateway"]


async def test_the_admin_pool_is_in_the_pool_gauges(admin: TestServer) -> None:
    assert (await get(admin, "/readyz"))[0] == 200  # the readiness check uses the pool

    async def sampled() -> bool:
        _, text = await get(admin, "/metrics")
        return any(
            sample.labels == {"pool": "admin"} and sample.value >= 1
            for family in text_string_to_metric_families(text)
            if family.name == "gateway_db_pool_connections"
            for sample in family.samples
        )

    await wait_for(sampled, timeout=5)
