"""A real Prometheus (Debian's `prometheus`) on the files in deploy/: the alert rules pass
their promtool unit tests, Prometheus scrapes a `--workers 2` gateway and sees the
requests the test sent, and every query of the Grafana dashboard is valid PromQL that
names only metrics the gateway exports.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

import gateway.metrics  # noqa: F401 - defines every metric in the registry
from gateway.embedded_pg import free_port

from .conftest import Seed
from .helpers import wait_for
from .topology import DEPLOY, Daemon, Replica, require

RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "gateway.json"


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    promtool = require("promtool", "prometheus")
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    }
    fired, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert alerts == fired, "an alert without a test that fires it"
    assert alerts == quiet, "an alert without a test where it stays quiet"


def exported_names() -> set[str]:
    """Every sample name the gateway's /metrics can show."""
    names = set()
    for family in REGISTRY.collect():
        if not family.name.startswith("gateway_"):
            continue
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        else:
            names.add(family.name)
    return names


_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    names = set()
    for token in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[token.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        if token[0].lower() not in _KEYWORDS:
            names.add(token[0])
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_names_only_metrics_the_gateway_exports() -> None:
    exported = exported_names() | {"up"}
    queries = dashboard_queries()
    assert len(queries) >= 10
    for expr in queries:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{sorted(names - exported)} in {expr!r}"
    assert metric_names('sum by (le) (rate(gateway_nope_total{a="b"}[5m]))') == {
        "gateway_nope_total"
    }, "the name check itself must see every metric"


# -- a running Prometheus -----------------------------------------------------------------


class Prometheus:
    def __init__(self, daemon: Daemon, port: int) -> None:
        self.daemon = daemon
        self.url = f"http://127.0.0.1:{port}"

    async def api(self, path: str, **params: str) -> Any:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{self.url}/api/v1/{path}", params=params) as response:
                body = await response.json()
        assert body["status"] == "success", body
        return body["data"]

    async def value(self, query: str) -> float | None:
        result = (await self.api("query", query=query))["result"]
        return float(result[0]["value"][1]) if result else None


@contextlib.asynccontextmanager
async def scraping(replica: Replica, tmp_path: Path) -> AsyncIterator[Prometheus]:
    """A real Prometheus on deploy/prometheus/prometheus.yml and the alert rules, scraping
    `replica`'s admin listener every second; the replica is started here, killed at the
    end."""
    program = require("prometheus", "prometheus")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{replica.admin_port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    daemon = None
    replica.start()
    try:
        daemon = Daemon(
            [
                program,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            tmp_path / "prometheus.log",
        )
        prometheus = Prometheus(daemon, port)

        async def answering() -> bool:
            assert daemon is not None and daemon.alive(), daemon.logs()
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"{prometheus.url}/-/ready") as response:
                        return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_for(answering, timeout=30, interval=0.1)
        yield prometheus
    finally:
        if daemon is not None:
            daemon.stop()
        replica.kill()


@pytest.fixture
async def scraped(
    database_url: str, upstream: TestServer, tmp_path: Path
) -> AsyncIterator[tuple[Prometheus, Replica]]:
    replica = Replica(
        "workers2",
        {
            "DATABASE_URL": database_url,
            "GATEWAY__PROXY__UPSTREAM": str(upstream.make_url("")).rstrip("/"),
        },
        tmp_path,
        workers=2,
    )
    async with scraping(replica, tmp_path) as prometheus:
        await replica.wait_ready()
        yield prometheus, replica


async def test_prometheus_scrapes_a_two_worker_gateway_and_sees_its_requests(
    scraped: tuple[Prometheus, Replica], seed: Seed
) -> None:
    prometheus, replica = scraped
    job = 'job="growpanel-gateway"'

    async def up() -> bool:
        return await prometheus.value(f"up{{{job}}}") == 1

    await wait_for(up, timeout=30, interval=0.2)
    total = f"sum(gateway_requests_total{{{job}}})"
    before = await prometheus.value(total) or 0.0
    key = await seed.key()
    sent = 25
    async with aiohttp.ClientSession() as session:
        for _ in range(sent):  # new connections: both workers take some
            async with session.get(
                f"{replica.proxy_url}/v1/customers",
                headers={"Authorization": f"Bearer {key.key}", "Connection": "close"},
            ) as response:
                assert response.status == 200

    async def counted() -> bool:
        return await prometheus.value(total) == before + sent

    await wait_for(counted, timeout=30, interval=0.2)
    ok = await prometheus.value(f'sum(gateway_requests_total{{{job}, outcome="ok"}})')
    assert ok is not None and ok >= sent
    # Both workers' listeners, summed in the one scrape.
    assert await prometheus.value(f"sum(gateway_listener_connected{{{job}}})") == 2
    assert await prometheus.value(f"sum(gateway_proxy_processes{{{job}}})") == 2

    shipped = sum(len(group["rules"]) for group in yaml.safe_load(RULES.read_text())["groups"])

    async def rules_evaluated() -> bool:
        groups = (await prometheus.api("rules"))["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return len(rules) == shipped and all(rule["health"] == "ok" for rule in rules)

    await wait_for(rules_evaluated, timeout=30, interval=0.2)
    firing = (await prometheus.api("alerts"))["alerts"]
    assert [a["labels"]["alertname"] for a in firing if a["state"] == "firing"] == []

    # Every dashboard query is valid PromQL for this Prometheus.
    for expr in dashboard_queries():
        await prometheus.api("query", query=expr)


def alert_expression(name: str) -> str:
    (expr,) = (
        rule["expr"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if rule.get("alert") == name
    )
    return str(expr)


async def test_an_admin_only_gateway_is_not_reported_without_notifications(
    database_url: str, tmp_path: Path
) -> None:
    """An admin-only process (proxy.enabled: false, documented) runs no notification
    listener and needs none: GatewayNotReady's condition does not hold for it."""
    replica = Replica(
        "admin-only", {"DATABASE_URL": database_url, "GATEWAY__PROXY__ENABLED": "false"}, tmp_path
    )
    async with scraping(replica, tmp_path) as prometheus:
        job = 'job="growpanel-gateway"'

        async def scraped_once() -> bool:
            return await prometheus.value(f"up{{{job}}}") == 1

        await wait_for(scraped_once, timeout=30, interval=0.2)
        assert (await prometheus.api("query", query=alert_expression("GatewayNotReady")))[
            "result"
        ] == []
