"""A first benchmark: the gateway's hot path against a bare aiohttp proxy, with and without uvloop.

Starts an embedded Postgres (or uses DATABASE_URL), the demo upstream, then in turn and
interleaved for several rounds: the gateway on uvloop, the gateway on asyncio's loop, and
the bare pass-through proxy of bench/bare_proxy.py. Each is loaded with the same wrk
settings on one cached key; the figures are req/s and the server process's CPU time per
request (utime+stime from /proc), which is steadier than req/s on a shared machine.

    .venv/bin/python bench/compare.py [--rounds 3] [--seconds 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.accounts import create_account  # noqa: E402
from gateway.config import Argon2Config  # noqa: E402
from gateway.db import migrate  # noqa: E402
from gateway.embedded_pg import EmbeddedPostgres, free_port  # noqa: E402
from gateway.keys import Hasher, KeyFormat, KeyStore  # noqa: E402

PY = sys.executable


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steal_share() -> tuple[int, int]:
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in cpu]
    return values[7], sum(values)


async def make_key(url: str) -> str:
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    hasher = Hasher(Argon2Config())
    account = await create_account(pool, hasher, "Benchmark", "bench@example.com")
    # Limits high enough never to bite: the limiter still runs on every request.
    key = await KeyStore(pool, KeyFormat("gp_"), hasher).create(
        account.account_id, "bench", rate_limit_per_minute=10**9, rate_limit_per_day=10**9
    )
    await pool.close()
    return key.key


def wait_http(url: str, headers: dict[str, str] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, headers=headers or {})  # noqa: S310
            with urllib.request.urlopen(request, timeout=2):  # noqa: S310
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


def wrk(url: str, key: str, seconds: int, connections: int) -> tuple[int, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "-H",
            f"Authorization: Bearer {key}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
    rps = float(
        next(line for line in out.splitlines() if line.startswith("Requests/sec")).split()[1]
    )
    return requests, rps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    pg = None
    url = os.environ.get("DATABASE_URL")
    if not url:
        pg = EmbeddedPostgres(tmp / "pg", fast_unsafe=True)
        pg.start()
        url = pg.create_database("bench")
    key = asyncio.run(make_key(url))
    up_port = free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    children = [
        subprocess.Popen(
            [PY, "-m", "gateway.cli", "demo-upstream", "--port", str(up_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    wait_http(f"{upstream_url}/v1/customers")
    variants = {
        "gateway (uvloop)": {"GATEWAY__SERVER__UVLOOP": "true"},
        "gateway (asyncio)": {"GATEWAY__SERVER__UVLOOP": "false"},
        "bare proxy (uvloop)": None,
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    try:
        for round_no in range(args.rounds):
            for name, env_extra in variants.items():
                port = free_port()
                if env_extra is None:
                    cmd = [
                        PY,
                        str(ROOT / "bench" / "bare_proxy.py"),
                        "--port",
                        str(port),
                        "--upstream",
                        upstream_url,
                    ]
                    env = dict(os.environ)
                else:
                    cmd = [PY, "-m", "gateway.cli", "--config", str(ROOT / "config.yaml"), "serve"]
                    env = {
                        **os.environ,
                        **env_extra,
                        "DATABASE_URL": url,
                        "GATEWAY__PROXY__UPSTREAM": upstream_url,
                        "GATEWAY__PROXY__PORT": str(port),
                        "GATEWAY__ADMIN__PORT": str(free_port()),
                    }
                server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
                target = f"http://127.0.0.1:{port}/v1/customers"
                wait_http(target, {"Authorization": f"Bearer {key}"})
                wrk(target, key, 2, args.connections)  # warm-up
                steal0, total0 = steal_share()
                cpu0 = cpu_seconds(server.pid)
                requests, rps = wrk(target, key, args.seconds, args.connections)
                cpu1 = cpu_seconds(server.pid)
                steal1, total1 = steal_share()
                server.terminate()
                server.wait()
                row = {
                    "rps": rps,
                    "cpu_us_per_request": (cpu1 - cpu0) / requests * 1e6,
                    "steal": (steal1 - steal0) / max(1, total1 - total0),
                }
                results[name].append(row)
                print(
                    f"round {round_no + 1} {name:22} {rps:9.0f} req/s "
                    f"{row['cpu_us_per_request']:7.0f} µs CPU/req  steal {row['steal']:.1%}",
                    flush=True,
                )
    finally:
        for child in children:
            child.terminate()
            child.wait()
        if pg is not None:
            pg.stop()

    medians: dict[str, Any] = {
        name: {
            "rps": statistics.median(r["rps"] for r in rows),
            "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in rows),
        }
        for name, rows in results.items()
    }
    bare = medians["bare proxy (uvloop)"]
    print(
        f"\n{'median of ' + str(args.rounds) + ' rounds':24} {'req/s':>9} {'µs CPU/req':>11}"
        f" {'req/s vs bare':>14} {'CPU vs bare':>12}"
    )
    for name, m in medians.items():
        cpu_ratio = m["cpu_us_per_request"] / bare["cpu_us_per_request"]
        print(
            f"{name:24} {m['rps']:9.0f} {m['cpu_us_per_request']:11.0f}"
            f" {m['rps'] / bare['rps']:14.2f} {cpu_ratio:12.2f}"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "compare.json").write_text(
        json.dumps(
            {
                "machine": {
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "settings": vars(args),
                "rounds": results,
                "medians": medians,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
