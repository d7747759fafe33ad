"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import functools
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from gateway import metrics
from gateway.config import DEFAULT_PERMISSIONS, DEFAULT_ROUTES, Config, from_dict
from gateway.serving import _Runner

# Cheap argon2 parameters keep the suite fast; the OWASP defaults have their own test.
FAST_ARGON2 = {"time_cost": 1, "memory_kib": 1024, "parallelism": 1}
REPO_ROOT = Path(__file__).resolve().parent.parent


class ServedTestServer(TestServer):
    """A test server whose connections are handled as `gateway serve` handles them
    (`gateway.serving`): a request aiohttp's parser refuses gets the gateway's JSON
    error, not aiohttp's text, and a chunked request is the connection's last."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return _Runner(self.app, **kwargs)


def make_config(
    database_url: str, upstream_url: str = "http://127.0.0.1:9", **sections: Any
) -> Config:
    """A test config: the given database and upstream, fast argon2, quick flushes."""
    data: dict[str, Any] = {
        "proxy": {"upstream": upstream_url, "host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "database": {"url": database_url, "pool_max_size": 5},
        "keys": {"argon2": dict(FAST_ARGON2)},
        "usage": {"flush_interval_seconds": 0.2},
        "logging": {"level": "INFO", "format": "json"},
        # Receivers in the tests listen on 127.0.0.1.
        "webhooks": {"allow_private_targets": True},
    }
    routes = sections.pop("routes", None)
    if routes is None:
        # The default table, then every other path for the test upstreams' own routes
        # (/v1/echo, /v1/slow, ...): tests of other features reach them with any key.
        data["routes"] = [*DEFAULT_ROUTE_DATA, TEST_ROUTE]
        data["permissions"] = {**DEFAULT_PERMISSIONS, "test:any": "The tests' own routes"}
    else:
        data["routes"] = routes
        data["permissions"] = sections.pop("permissions", None) or {
            r["permission"]: DEFAULT_PERMISSIONS.get(r["permission"], "") for r in routes
        }
    for name in ("permissions", "routes_unmatched"):
        if name in sections:
            data[name] = sections.pop(name)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return from_dict(data)


DEFAULT_ROUTE_DATA = [
    {"methods": list(r.methods), "path": r.path, "permission": r.permission} for r in DEFAULT_ROUTES
]
TEST_ROUTE = {"methods": ["*"], "path": "/**", "permission": "test:any"}


@functools.cache
def served_config_file() -> Path:
    """The repository's config.yaml with `TEST_ROUTE` after its routes, for the tests
    that start `gateway serve` processes: their upstreams' own routes are reachable."""
    data = yaml.safe_load((REPO_ROOT / "config.yaml").read_text(encoding="utf-8"))
    data["routes"].append(TEST_ROUTE)
    data["permissions"]["test:any"] = "The tests' own routes"
    path = Path(tempfile.mkdtemp(prefix="gateway-test-config-")) / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


async def wait_for(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    interval: float = 0.02,
) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def gateway_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


async def key_status(server: TestServer, key: str, path: str = "/v1/customers") -> int:
    """The status of one GET through `server` with `key` as the bearer token."""
    async with aiohttp.ClientSession() as session:
        async with session.get(
            server.make_url(path), headers={"Authorization": f"Bearer {key}"}
        ) as response:
            await response.read()
            return response.status


def sample(name: str, **labels: str) -> float:
    """A metric of this process as a scrape would show it (per-request updates folded)."""
    metrics.fold()
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def raw_request(port: int, request_line: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Send exactly this request line (no client-side normalisation) and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [request_line, "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body
