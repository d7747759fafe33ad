"""The bench's report: the summary figures, the printed table and bench/results/latest.json.

Owns how the runs become figures: a ratio is the median over the rounds of pairs
measured back to back (steadier than a ratio of medians when the machine's speed drifts
between rounds), an added latency the median of the rounds' differences. Each section
below adds its rows to the table and its figures to the JSON's `summary`, in the order
they are printed.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


class Table:
    """The printed rows (figure, value, target, met) and the summary figures beside them."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []
        self.summary: dict[str, Any] = {}

    def row(self, name: str, value: str, target: str = "", ok: bool | None = None) -> None:
        mark = "" if ok is None else ("yes" if ok else "NO")
        self.rows.append((name, value, target, mark))

    def show(self) -> None:
        width = max(len(n) for n, *_ in self.rows)
        print(f"\n{'figure':{width}}  {'value':32}  {'target':14}  met")
        for name, value, target, mark in self.rows:
            print(f"{name:{width}}  {value:32}  {target:14}  {mark}")


def report(figures: dict[str, Any]) -> None:
    table = Table()
    _throughput(table, figures["throughput"], figures["settings"])
    if figures.get("instructions"):
        _instructions(table, figures["instructions"])
    _latency(table, figures["latency_c1"])
    if figures.get("ingress"):
        _ingress(table, figures["ingress"])
    _workers(table, figures["workers"])
    _cold(table, figures["cold"])
    _revocation(table, figures["revocation"])
    _leaks(table, figures["leaks_and_webhooks"])
    _statements(table, figures["db_transactions_per_second"])
    _memory(table, figures["memory_and_flush"])
    _failures(table, figures["throughput"])
    table.show()
    figures["summary"] = table.summary
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(figures, indent=2, default=str))
    print(f"\nwritten: {RESULTS / 'latest.json'}")


def _median(rows: list[dict[str, float]], field: str) -> float:
    return statistics.median(r[field] for r in rows)


def _paired(t: dict[str, Any], runs: str, baseline: str, field: str) -> float:
    """The median over rounds of run ÷ baseline, each pair measured back to back."""
    return float(
        statistics.median(r[field] / b[field] for r, b in zip(t[runs], t[baseline], strict=True))
    )


def _throughput(table: Table, t: dict[str, Any], keys: dict[str, int]) -> None:
    bare_rps, bare_cpu = _median(t["bare"], "rps"), _median(t["bare"], "cpu_us_per_request")
    hot_rps, hot_cpu = _median(t["hot"], "rps"), _median(t["hot"], "cpu_us_per_request")
    asyncio_cpu = _median(t["hot_asyncio"], "cpu_us_per_request")
    s = table.summary
    s["uvloop_cpu_saving"] = 1 - hot_cpu / asyncio_cpu
    s["hot_rps_ratio"] = _paired(t, "hot", "bare", "rps")
    s["hot_cpu_ratio"] = _paired(t, "hot", "bare", "cpu_us_per_request")
    s["mix_rps_ratio"] = _paired(t, "mix", "bare_mix", "rps")
    table.row("bare proxy (medians)", f"{bare_rps:.0f} req/s, {bare_cpu:.0f} µs CPU/req")
    table.row("gateway hot path (medians)", f"{hot_rps:.0f} req/s, {hot_cpu:.0f} µs CPU/req")
    ratio = s["hot_rps_ratio"]
    table.row("hot path req/s ÷ bare", f"{ratio:.2f}", "≥ 0.90", ratio >= 0.9)
    ratio = s["hot_cpu_ratio"]
    table.row("hot path CPU/req ÷ bare", f"{ratio:.2f}", "≤ 1.10", ratio <= 1.1)
    s["hot_routes200_rps_ratio"] = ratio = _paired(t, "hot_routes200", "bare", "rps")
    table.row("hot path, 200 routes, req/s ÷ bare", f"{ratio:.2f}", "≥ 0.90", ratio >= 0.9)
    table.row(
        "hot path on asyncio's loop",
        f"{asyncio_cpu:.0f} µs CPU/req (uvloop saves {s['uvloop_cpu_saving']:.0%})",
    )
    _mix(table, t, keys)
    if "nginx" in t:
        s["nginx_rps_ratio"] = _paired(t, "nginx", "bare", "rps")
        nginx_cpu = _median(t["nginx"], "cpu_us_per_request")
        table.row(
            "reference: nginx pass-through req/s ÷ bare",
            f"{s['nginx_rps_ratio']:.2f} ({nginx_cpu:.0f} µs CPU/req)",
        )


def _mix(table: Table, t: dict[str, Any], keys: dict[str, int]) -> None:
    s = table.summary
    table.row(
        f"{keys['keys_in_traffic']:,}-key mix req/s ÷ bare, same script "
        f"({keys['keys_in_database']:,} in Postgres)",
        f"{s['mix_rps_ratio']:.2f}",
        "≥ 0.85",
        s["mix_rps_ratio"] >= 0.85,
    )
    mix_rps, bare_mix_rps = _median(t["mix"], "rps"), _median(t["bare_mix"], "rps")
    mix_cpu = _median(t["mix"], "cpu_us_per_request")
    bare_mix_cpu = _median(t["bare_mix"], "cpu_us_per_request")
    s["mix_cpu_ratio"] = _paired(t, "mix", "bare_mix", "cpu_us_per_request")
    table.row(
        "  the mix's CPU/req ÷ bare, same script",
        f"{s['mix_cpu_ratio']:.2f} ({mix_cpu:.0f} vs {bare_mix_cpu:.0f} µs)",
    )
    table.row("  the mix, and the bare proxy", f"{mix_rps:.0f} and {bare_mix_rps:.0f} req/s")


def _instructions(table: Table, i: dict[str, float]) -> None:
    s = table.summary
    for run in ("hot", "mix", "bare", "verify"):
        s[f"instructions_per_request_{run}"] = round(i[run])
    s["instructions_hot_ratio"] = i["hot"] / i["bare"]
    s["instructions_mix_ratio"] = i["mix"] / i["bare"]
    s["instructions_verify_ratio"] = i["verify"] / i["hot"]
    table.row(
        "instructions / request (callgrind): hot, bare",
        f"{i['hot'] / 1e3:.1f}k, {i['bare'] / 1e3:.1f}k: {s['instructions_hot_ratio']:.2f}",
    )
    table.row(
        f"  {i['mix_keys']:,}-key mix, ÷ bare",
        f"{i['mix'] / 1e3:.1f}k: {s['instructions_mix_ratio']:.2f}",
    )
    table.row(
        "  a verify (verify listener), ÷ hot path",
        f"{i['verify'] / 1e3:.1f}k: {s['instructions_verify_ratio']:.2f}",
    )


def _latency(table: Table, lat: dict[str, list[dict[str, float]]]) -> None:
    added50, added99 = (
        statistics.median(
            g[field] - b[field] for g, b in zip(lat["gateway"], lat["bare"], strict=True)
        )
        for field in ("p50_ms", "p99_ms")
    )
    table.summary["added_latency_p50_ms"], table.summary["added_latency_p99_ms"] = added50, added99
    table.row("added latency p50 (c=1)", f"{added50:.3f} ms", "≤ 0.3 ms", added50 <= 0.3)
    table.row("added latency p99 (c=1)", f"{added99:.3f} ms", "≤ 1 ms", added99 <= 1.0)


def _ingress(table: Table, i: dict[str, Any]) -> None:
    """nginx / Caddy + verify: req/s ÷ the gateway's proxy, added p50 ÷ the plain daemon."""
    s, t, lat = table.summary, i["throughput"], i["latency_c1"]
    for name, label, target in (("nginx", "nginx", 2.0), ("caddy", "Caddy", None)):
        if name == "nginx" and "nginx_verify_public" in t:
            public = _paired(t, "nginx_verify_public", "nginx_verify_public_proxy", "rps")
            s["ingress_nginx_verify_public_rps_ratio"] = public
            s["ingress_nginx_verify_public_gateway_cpu_us"] = _median(
                t["nginx_verify_public"], "gateway_cpu_us_per_request"
            )
            table.row(
                "nginx + verify on the public listener req/s ÷ gateway proxy",
                f"{public:.2f} (gateway CPU/req "
                f"{s['ingress_nginx_verify_public_gateway_cpu_us']:.0f} µs)",
            )
        verify = f"{name}_verify"
        if verify in t:
            ratio = _paired(t, verify, f"{verify}_proxy", "rps")
            proxy_gw_cpu = _median(t[f"{verify}_proxy"], "gateway_cpu_us_per_request")
            s[f"ingress_{verify}_rps_ratio"] = ratio
            table.row(
                f"{label} + verify req/s ÷ gateway proxy",
                f"{ratio:.2f} ({_median(t[verify], 'rps'):.0f} req/s)",
                f"≥ {target:.1f}" if target else "",
                ratio >= target if target else None,
            )
            gw_cpu = _median(t[verify], "gateway_cpu_us_per_request")
            daemon_cpu = _median(t[verify], "daemon_cpu_us_per_request")
            up_cpu = _median(t[verify], "upstream_cpu_us_per_request")
            proxy_up_cpu = _median(t[f"{verify}_proxy"], "upstream_cpu_us_per_request")
            s[f"ingress_{verify}_gateway_cpu_us"] = gw_cpu
            s[f"ingress_{verify}_daemon_cpu_us"] = daemon_cpu
            table.row(
                "  CPU/req: gateway verify, daemon, upstream (proxy: gateway, upstream)",
                f"{gw_cpu:.0f}, {daemon_cpu:.0f}, {up_cpu:.0f} µs "
                f"({proxy_gw_cpu:.0f}, {proxy_up_cpu:.0f} µs)",
            )
        if verify in lat and name in lat:
            added = statistics.median(
                v["p50_ms"] - p["p50_ms"] for v, p in zip(lat[verify], lat[name], strict=True)
            )
            added99 = statistics.median(
                v["p99_ms"] - p["p99_ms"] for v, p in zip(lat[verify], lat[name], strict=True)
            )
            s[f"ingress_{verify}_added_p50_ms"] = added
            s[f"ingress_{verify}_added_p99_ms"] = added99
            table.row(
                f"{label} + verify added latency p50 / p99 vs plain {label} (c=1)",
                f"{added:.3f} / {added99:.3f} ms",
                "p50 ≤ 0.3 ms" if name == "nginx" else "",
                added <= 0.3 if name == "nginx" else None,
            )
        if f"{verify}_revocation" in i:
            r = i[f"{verify}_revocation"]
            s.update({f"ingress_{verify}_revocation_{k}": v for k, v in r.items()})
            table.row(
                f"revocation through {label} + verify p50 / p99 / max",
                f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f} ms",
                "p99 ≤ 100 ms",
                r["p99_ms"] <= 100,
            )


def _workers(table: Table, w: dict[str, list[dict[str, float]]]) -> None:
    ratio = statistics.median(
        two["rps"] / one["rps"] for one, two in zip(w["one"], w["two"], strict=True)
    )
    table.summary["workers_ratio"] = ratio
    table.row("--workers 2 ÷ one", f"{ratio:.2f}", "≥ 1.35", ratio >= 1.35)


def _cold(table: Table, c: dict[str, Any]) -> None:
    ratio = statistics.median(
        loaded / alone
        for loaded, alone in zip(
            c["hot_p99_under_20_new_keys_per_s_ms"], c["hot_p99_alone_ms"], strict=True
        )
    )
    table.summary["cold_first_request_ms"] = c["first_request_p50_ms"]
    table.summary["hot_p99_under_cold_load_ratio"] = ratio
    table.row("first request with a new key", f"{c['first_request_p50_ms']:.1f} ms (p50)")
    table.row("hot p99 under 20 new keys/s ÷ alone", f"{ratio:.2f}", "≤ 2", ratio <= 2)


def _revocation(table: Table, r: dict[str, float]) -> None:
    table.summary.update({f"revocation_{k}": v for k, v in r.items()})
    table.row(
        "revocation p50 / p99 / max",
        f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f} ms",
        "p99 ≤ 100 ms",
        r["p99_ms"] <= 100,
    )


def _leaks(table: Table, figures: dict[str, dict[str, float]]) -> None:
    leak, hooks = figures["leak_to_refused_on_two_processes"], figures["webhook_delivery_latency"]
    s = table.summary
    s["leak_to_refused_median_ms"], s["leak_to_refused_max_ms"] = leak["median_ms"], leak["max_ms"]
    s["webhook_latency_median_ms"], s["webhook_latency_p99_ms"] = (
        hooks["median_ms"],
        hooks["p99_ms"],
    )
    table.row(
        f"leak POST to refused on 2 processes, median / max ({leak['n']:.0f})",
        f"{leak['median_ms']:.1f} / {leak['max_ms']:.1f} ms",
        "max < 1 s",
        leak["max_ms"] < 1000,
    )
    table.row(
        f"webhook delivery latency, median / p99 ({hooks['n']:.0f})",
        f"{hooks['median_ms']:.1f} / {hooks['p99_ms']:.1f} ms",
    )


def _statements(table: Table, s: dict[str, float]) -> None:
    low, high = s["100_rps"], s["400_rps"]
    spread = abs(high - low) / max(low, 1e-9)
    table.summary["db_tps_100"], table.summary["db_tps_400"] = low, high
    table.row(
        "Postgres transactions/s at 100 and 400 req/s",
        f"{low:.1f} and {high:.1f}",
        "within 20%",
        spread <= 0.2,
    )


def _memory(table: Table, m: dict[str, float]) -> None:
    table.summary.update(m)
    per_key, flush = m["bytes_per_cached_key"], m["flush_10k_ms"]
    table.row("memory per cached key", f"{per_key:.0f} B", "≤ 2 KiB", per_key <= 2048)
    table.row(
        "flush of 10,000 last-used keys (median of 5)", f"{flush:.1f} ms", "≤ 50 ms", flush <= 50
    )
    table.row("  their first flush (inserts their rows)", f"{m['first_flush_10k_ms']:.1f} ms")
    table.row("flush of 10,000 keys' hourly usage counts", f"{m['usage_flush_10k_ms']:.1f} ms")
    table.row(
        "  the first in the hour (inserts the rows)", f"{m['first_usage_flush_10k_ms']:.1f} ms"
    )


def _failures(table: Table, t: dict[str, list[dict[str, float]]]) -> None:
    failed = sum(run["non_2xx"] for runs in t.values() for run in runs)
    table.summary["throughput_non_2xx"] = failed
    table.row("non-2xx answers in throughput runs", f"{failed:.0f}", "0", failed == 0)
    steals = [run["steal"] for runs in t.values() for run in runs]
    table.summary["max_steal"] = max(steals)
    table.row("max steal share during throughput runs", f"{max(steals):.1%}")
