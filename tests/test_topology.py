"""The whole topology of docs/deployment.md at once: clients speak TLS to HAProxy, HAProxy
speaks TLS to two replicas (and verifies them), the replicas reach Postgres through
PgBouncer in transaction pooling (LISTEN direct), and Prometheus scrapes both replicas'
admin listeners over mutual TLS. Each piece has its own test file; this one shows that
they hold together, with the shipped files.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import trustme
import yaml
from aiohttp.test_utils import TestServer

from gateway.embedded_pg import free_port

from .conftest import Seed
from .helpers import wait_for
from .test_haproxy import CLIENT, Balanced, session_from
from .test_prometheus import Prometheus
from .topology import DEPLOY, Daemon, Replica, daemons, require, start_pgbouncer


async def test_tls_haproxy_pgbouncer_prometheus_together(
    database_url: str, upstream: TestServer, seed: Seed, tmp_path: Path
) -> None:
    haproxy_bin = require("haproxy", "haproxy")
    prometheus_bin = require("prometheus", "prometheus")
    ca, client_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "gateway.internal")
    files = {
        "ca": ca.cert_pem,
        "client-ca": client_ca.cert_pem,
        "server.pem": server.cert_chain_pems[0],
        "server.key": server.private_key_pem,
    }
    prometheus_client = client_ca.issue_cert("prometheus")
    files["prometheus.pem"] = prometheus_client.cert_chain_pems[0]
    files["prometheus.key"] = prometheus_client.private_key_pem
    paths = {name: tmp_path / name for name in files}
    for name, blob in files.items():
        blob.write_to_path(str(paths[name]))
    haproxy_pem = tmp_path / "haproxy.pem"  # HAProxy wants certificate and key in one file
    haproxy_pem.write_bytes(paths["server.pem"].read_bytes() + paths["server.key"].read_bytes())

    with daemons() as started:
        bouncer, pooled_url = start_pgbouncer(database_url, tmp_path / "pgbouncer", 4)
        started.append(bouncer)
        env = {
            "DATABASE_URL": pooled_url,
            "GATEWAY__DATABASE__PGBOUNCER": "true",
            "GATEWAY__DATABASE__LISTEN_URL": database_url,
            "GATEWAY__PROXY__UPSTREAM": str(upstream.make_url("")).rstrip("/"),
            "GATEWAY__PROXY__TRUSTED_PROXIES": "[127.0.0.1/32]",
            "GATEWAY__PROXY__TLS__CERTIFICATE": str(paths["server.pem"]),
            "GATEWAY__PROXY__TLS__KEY": str(paths["server.key"]),
            "GATEWAY__ADMIN__TLS__CERTIFICATE": str(paths["server.pem"]),
            "GATEWAY__ADMIN__TLS__KEY": str(paths["server.key"]),
            "GATEWAY__ADMIN__TLS__CLIENT_CA": str(paths["client-ca"]),
        }
        trust = ssl.create_default_context()
        ca.configure_trust(trust)
        replicas = [Replica(f"replica{i}", env, tmp_path) for i in (1, 2)]
        try:
            for replica in replicas:
                replica.scheme = "https"
                replica.start()
            for replica in replicas:
                await replica.wait_ready(ssl=trust)

            port, stats_port = free_port(), free_port()
            haproxy = Daemon(
                [haproxy_bin, "-db", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")],
                tmp_path / "haproxy.log",
                env={
                    "PATH": "/usr/bin:/bin",
                    "GATEWAY_LB_BIND": f"127.0.0.1:{port}",
                    "GATEWAY_LB_CERT": str(haproxy_pem),
                    "GATEWAY_REPLICA_CA": str(paths["ca"]),
                    "GATEWAY_REPLICA_NAME": "gateway.internal",
                    "GATEWAY_REPLICA_1": f"127.0.0.1:{replicas[0].proxy_port}",
                    "GATEWAY_REPLICA_2": f"127.0.0.1:{replicas[1].proxy_port}",
                    "HAPROXY_STATS_BIND": f"127.0.0.1:{stats_port}",
                },
            )
            started.append(haproxy)
            lb = Balanced(haproxy, port, stats_port, replicas)
            lb.url = f"https://127.0.0.1:{port}"
            await lb.wait_state("replica1", "UP")
            await lb.wait_state("replica2", "UP")

            config: dict[str, Any] = yaml.safe_load(
                (DEPLOY / "prometheus" / "prometheus.yml").read_text()
            )
            config["global"].update(scrape_interval="1s", evaluation_interval="1s")
            config["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
            (job,) = config["scrape_configs"]
            job["scheme"] = "https"
            job["tls_config"] = {
                "ca_file": str(paths["ca"]),
                "cert_file": str(paths["prometheus.pem"]),
                "key_file": str(paths["prometheus.key"]),
            }
            job["static_configs"] = [{"targets": [f"127.0.0.1:{r.admin_port}" for r in replicas]}]
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
            prometheus_port = free_port()
            prometheus = Prometheus(
                Daemon(
                    [
                        prometheus_bin,
                        f"--config.file={tmp_path / 'prometheus.yml'}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    ],
                    tmp_path / "prometheus.log",
                ),
                prometheus_port,
            )
            started.append(prometheus.daemon)

            account = await seed.account()
            key = await seed.key(account)
            sent = 10
            async with session_from(CLIENT) as session:
                for _ in range(sent):
                    async with session.get(
                        f"{lb.url}/v1/echo",
                        headers={"Authorization": f"Bearer {key.key}"},
                        ssl=trust,
                    ) as response:
                        assert response.status == 200
                        echoed = dict((await response.json())["headers"])
                assert echoed["X-Forwarded-Proto"] == "https"
                assert echoed["X-Forwarded-For"].split(", ")[-2:] == [CLIENT, "127.0.0.1"]

                # Revocation through PgBouncer reaches both replicas behind HAProxy.
                started_at = time.monotonic()
                assert await seed.store.delete(account.account_id, key.id)
                refused = 0
                while refused < 4:  # consecutive: both replicas answer in turn
                    async with session.get(
                        f"{lb.url}/v1/echo",
                        headers={"Authorization": f"Bearer {key.key}"},
                        ssl=trust,
                    ) as response:
                        refused = refused + 1 if response.status == 401 else 0
                    assert time.monotonic() - started_at < 1.0, "still accepted after 1 s"

            lines = [line for r in replicas for line in r.access_lines()]
            assert {line["client_ip"] for line in lines} == {CLIENT}

            async def scraped() -> bool:
                try:
                    up = await prometheus.value('count(up{job="growpanel-gateway"} == 1)')
                    ok = await prometheus.value(
                        'sum(gateway_requests_total{job="growpanel-gateway", outcome="ok"})'
                    )
                except (aiohttp.ClientError, AssertionError):
                    return False
                return up == 2 and ok == sent

            await wait_for(scraped, timeout=40, interval=0.2)
        finally:
            for replica in replicas:
                replica.kill()
