"""Throughput scenarios: req/s and server CPU per request under wrk, side by side.

Owns the gateway's hot path (one cached key) against the bare proxy, a mix of many keys (a
wrk Lua script rotating them) against the bare proxy under the same script, the hot path
on asyncio's own event loop, in full runs where it is installed nginx as a pass-through
proxy, and `--workers 2` against one process. Every server runs for the whole scenario,
and each round measures every pair back to back, in turn the other way round.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import yaml

from bench.harness import ROOT, Servers, Settings, in_turn, measured, url_of, wrk

Rows = dict[str, list[dict[str, float]]]


class Target(NamedTuple):
    """One measured run: its name in the figures, the server, the URL, wrk's options."""

    name: str
    pid: int
    url: str
    load: dict[str, Any]


def hot_and_mix(
    servers: Servers, settings: Settings, hot: str, mix: list[str], script: Path
) -> Rows:
    rows: Rows = {
        "bare": [],
        "bare_mix": [],
        "hot": [],
        "hot_routes200": [],
        "mix": [],
        "hot_asyncio": [],
    }
    bare, bare_port = servers.bare()
    # The hot path and the mix each in a gateway of its own: a gateway that also
    # served the mix spent 1.0-1.14x the CPU a hot request (median 1.055 over
    # seven rounds) of one serving only the hot key, the mix's keys re-confirmed
    # and flushed in the hot runs.
    gateway, port, _ = servers.gateway()
    # the same with a route table of 200 routes instead of the default five
    routed, routed_port, _ = servers.gateway(config=big_route_table(servers.log_dir))
    keyed, keyed_port, _ = servers.gateway()
    # the same hot path on asyncio's own event loop: is uvloop worth it?
    plain, plain_port, _ = servers.gateway(GATEWAY__SERVER__UVLOOP="false")
    # where a C proxy stands (optional: full runs with nginx installed)
    reference = None if settings.quick else servers.nginx()
    bare_url = url_of(bare_port, "/v1/customers")
    gw_url = url_of(port, "/v1/customers")
    routed_url = url_of(routed_port, "/v1/customers")
    mix_url = url_of(keyed_port, "/v1/customers")
    plain_url = url_of(plain_port, "/v1/customers")
    # Warm every key of the mix (one query and argon2 each), as many clients
    # would over time, 16 at a time; then every server with the load itself.
    asyncio.run(warm_keys(mix_url, mix))
    _warm(settings, bare_url, {})
    _warm(settings, gw_url, {"key": hot})
    _warm(settings, routed_url, {"key": hot})
    _warm(settings, mix_url, {"script": script})
    _warm(settings, plain_url, {"key": hot})
    # The same rotating-key script for the mix and its baseline: wrk's Lua costs
    # CPU on the same two cores, so the mix is compared with the bare proxy under it.
    pairs = [
        (
            Target("bare", bare.pid, bare_url, {}),
            Target("hot", gateway.pid, gw_url, {"key": hot}),
            Target("hot_routes200", routed.pid, routed_url, {"key": hot}),
        ),
        (
            Target("bare_mix", bare.pid, bare_url, {"script": script}),
            Target("mix", keyed.pid, mix_url, {"script": script}),
        ),
        (Target("hot_asyncio", plain.pid, plain_url, {"key": hot}),),
    ]
    if reference is not None:
        nginx, nginx_port = reference
        nginx_url = url_of(nginx_port, "/v1/customers")
        _warm(settings, nginx_url, {})
        rows["nginx"] = []
        pairs.append((Target("nginx", nginx.pid, nginx_url, {}),))
    _rounds(settings, pairs, rows)
    for process in (plain, keyed, routed, gateway, bare):
        servers.stop(process)
    if reference is not None:
        servers.stop(reference[0])
    return rows


def big_route_table(directory: Path, size: int = 200) -> Path:
    """config.yaml with `size` routes: 195 resources of an API's usual shape (a list, an
    item, its sub-resources) before the default five, which the hot path's key calls."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    extra = size - len(config["routes"])
    routes = []
    for i in range(extra):
        name = f"resource{i}:read"
        config["permissions"][name] = f"Read resource {i}"
        pattern = [f"/v1/resource{i}/**", f"/v1/resource{i}/{{id}}", f"/v2/resource{i}/**"][i % 3]
        routes.append({"methods": ["GET", "HEAD"], "path": pattern, "permission": name})
    config["routes"] = routes + config["routes"]
    path = directory / "config-routes200.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def workers(servers: Servers, settings: Settings, hot: str) -> Rows:
    """The hot path with `--workers 2` against one process."""
    one, one_port, _ = servers.gateway()
    two, two_port, _ = servers.gateway("--workers", "2")
    pair = (
        Target("one", one.pid, url_of(one_port, "/v1/customers"), {"key": hot}),
        Target("two", two.pid, url_of(two_port, "/v1/customers"), {"key": hot}),
    )
    for target in pair:
        _warm(settings, target.url, target.load)
    rows: Rows = {"one": [], "two": []}
    _rounds(settings, [pair], rows)
    servers.stop(one)
    servers.stop(two)
    return rows


def _warm(settings: Settings, url: str, load: dict[str, Any]) -> None:
    wrk(url, settings.warm, settings.connections, **load)


def _rounds(settings: Settings, pairs: list[tuple[Target, ...]], rows: Rows) -> None:
    """Every pair measured once a round, in turn the other way round."""
    for index in range(settings.rounds):
        for pair in pairs:
            for name, pid, target, load in in_turn(pair, index):
                rows[name].append(
                    measured(pid, target, settings.seconds, settings.connections, **load)
                )


async def warm_keys(url: str, keys: list[str], concurrency: int = 16) -> None:
    """One request with each key, `concurrency` at a time; each must succeed."""
    queue = list(reversed(keys))
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while queue:
                key = queue.pop()
                async with session.get(url, headers={"Authorization": f"Bearer {key}"}) as r:
                    await r.read()
                    if r.status != 200:
                        raise SystemExit(f"bench: warming a key got {r.status}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
