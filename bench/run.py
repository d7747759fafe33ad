"""`make bench`: every figure of the benchmark issue, as ratios from one run.

Starts Postgres (embedded unless DATABASE_URL), the demo upstream, the bare aiohttp proxy
(bench/bare_proxy.py) and the gateway, and measures in turn. The servers compared with
each other run side by side and every round measures each once, next to its baseline
(first in every other round): the machine's speed drifts by 10-20% within a minute, so a
ratio is the median over the rounds of pairs measured seconds apart.

- throughput and server CPU per request, gateway hot path against the bare proxy, and a
  mix of many distinct keys (a wrk Lua script rotating them) with many more in Postgres;
  `--workers 2` against one process (bench/throughput.py);
- instructions per request of the hot path, a 1,000-key mix and the bare proxy, counted
  by callgrind where valgrind is installed: the figure that does not move with the machine's speed
  (bench/instructions.py);
- added latency at concurrency 1 (p50, p99), the median over rounds of gateway-bare pairs;
  the cold path (first request with a new key, argon2 included) and the hot path's p99
  while new keys are being verified (bench/latency.py);
- revocation propagation through the admin API to two gateway processes
  (bench/revocation.py);
- leaked keys, from a signed secret-scanning POST to refused on two processes (median,
  max), and webhook delivery latency (median, p99) (bench/leaks.py);
- Postgres transactions per second from the gateway at two request rates
  (bench/statements.py);
- memory per cached key, and flushes of 10,000 distinct keys' last used and usage counts
  (bench/memory.py);
- optional, full runs only: nginx as a pass-through proxy, where it is installed
  (bench/throughput.py);
- nginx + verify and Caddy + verify (deploy/nginx, deploy/caddy) against the gateway's own
  proxy and against plain nginx and Caddy, and revocation through them, where they are
  installed (bench/ingress.py).

The processes and wrk are bench/harness.py's, the database and its keys bench/data.py's.
This module owns the command line and the order of the scenarios; bench/report.py prints
one table and writes bench/results/latest.json. `--quick` is the same with shorter runs
and fewer keys (`make bench-quick`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/run.py`: the bench is a package

from bench import (  # noqa: E402
    ingress,
    instructions,
    latency,
    leaks,
    memory,
    revocation,
    statements,
    throughput,
)
from bench.data import Prepared, database, prepare_database  # noqa: E402
from bench.harness import Servers, Settings, rotating_script, start_upstream, url_of  # noqa: E402
from bench.report import report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="short runs, fewer keys")
    settings = Settings.of(parser.parse_args().quick)
    figures: dict[str, Any] = {"machine": machine(), "settings": settings.as_json()}
    log_dir = Path(tempfile.mkdtemp(prefix="gateway-bench-logs-"))

    with database() as (url, _pg):
        print(f"bench: preparing {settings.bulk} keys …", flush=True)
        data = asyncio.run(prepare_database(url, settings.bulk))
        upstream, upstream_url = start_upstream()
        servers = Servers(url, upstream_url, log_dir, upstream_pid=upstream.pid)
        script = rotating_script(log_dir / "rotate.lua", data.bulk[: settings.mix])
        try:
            figures.update(measure(settings, url, data, servers, script))
        finally:
            servers.stop_all()
            upstream.terminate()
            upstream.wait()

    report(figures)


def measure(
    settings: Settings, url: str, data: Prepared, servers: Servers, script: Path
) -> dict[str, Any]:
    """Every scenario in turn; their figures under the keys of latest.json."""
    print("bench: throughput", flush=True)
    mix = data.bulk[: settings.mix]
    figures: dict[str, Any] = {
        "throughput": throughput.hot_and_mix(servers, settings, data.hot, mix, script)
    }
    print("bench: instructions per request (callgrind)", flush=True)
    figures["instructions"] = instructions.run(servers, settings, data.hot, mix)
    figures.update(_on_one_gateway(settings, url, data, servers))
    print("bench: ingress (nginx and Caddy + verify)", flush=True)
    figures["ingress"] = ingress.run(
        servers, settings, data.hot, data.owner_token, data.bulk, data.bulk_ids
    )
    print("bench: workers", flush=True)
    figures["workers"] = throughput.workers(servers, settings, data.hot)
    print("bench: revocation", flush=True)
    figures["revocation"] = revocation.run(servers, data.owner_token, data.bulk, data.bulk_ids)
    print("bench: leaked keys and webhooks", flush=True)
    figures["leaks_and_webhooks"] = leaks.run(
        servers, settings, url, data.account_id, data.owner_token
    )
    print("bench: memory and flush", flush=True)
    figures["memory_and_flush"] = memory.memory_and_flush(url, settings.bulk)
    return figures


def _on_one_gateway(
    settings: Settings, url: str, data: Prepared, servers: Servers
) -> dict[str, Any]:
    """Latency, the cold path and statements per second, in turn on the same gateway."""
    print("bench: latency", flush=True)
    bare, bare_port = servers.bare()
    gateway, port, _ = servers.gateway()
    figures: dict[str, Any] = {
        "latency_c1": latency.added(
            settings, url_of(bare_port, "/v1/customers"), url_of(port, "/v1/customers"), data.hot
        )
    }
    servers.stop(bare)
    print("bench: cold path", flush=True)
    figures["cold"] = latency.cold(settings, url, url_of(port), data.account_id, data.hot)
    print("bench: statements per second", flush=True)
    figures["db_transactions_per_second"] = statements.run(settings, url, url_of(port), data.hot)
    servers.stop(gateway)
    return figures


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aiohttp": version("aiohttp"),
        "uvloop": version("uvloop"),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0],
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


if __name__ == "__main__":
    main()
