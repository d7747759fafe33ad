"""Memory and flush scenario: RSS per cached key, and flushes of 10,000 keys' counters.

Owns a probe run in a fresh interpreter, so that nothing else the bench did sits in the
memory it measures: `memory_and_flush` starts this module as
`python -m bench.memory DATABASE_URL COUNT`, which caches COUNT live keys as the gateway
does, reports the RSS each added, then times six rounds of the last-used flush and of the
hourly usage-count flush of 10,000 of them, and prints the figures as one JSON line.
The probe uses the gateway's public API only: it selects the rows itself
(`keys.RECORD_COLUMNS`) and maps them with `keys.key_record` after the first RSS reading,
since the store's queries would build the records before the memory is read.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from gateway.cache import CacheEntry, KeyCache
from gateway.clock import SystemClock
from gateway.config import Argon2Config, DatabaseConfig, UsageConfig
from gateway.db import create_pool
from gateway.keyformat import Hasher, KeyFormat
from gateway.keys import KeyStore
from gateway.records import RECORD_COLUMNS, KeyRecord, key_record
from gateway.usage import UsageRecorder

ROOT = Path(__file__).resolve().parent.parent
FLUSHED = 10_000
ROUNDS = 6  # the first flush inserts the rows; the median of the five after it


def memory_and_flush(url: str, count: int) -> dict[str, float]:
    """In a fresh interpreter: RSS per cached key, and the 10,000-key flushes."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory", url, str(count)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- the probe, in its own interpreter --------------------------------------------------


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def probe(url: str, count: int) -> dict[str, Any]:
    # the gateway's own pool: no reset round trip on release, inside the timed flushes
    pool = await create_pool(DatabaseConfig(url=url), min_size=1, max_size=2)
    rows = await pool.fetch(
        f"SELECT {RECORD_COLUMNS} FROM api_keys WHERE deleted_at IS NULL LIMIT {count}"
    )
    gc.collect()
    before = rss_kib()  # the rows are fetched; what follows is what the gateway keeps per key
    records = [key_record(r) for r in rows]
    cache = KeyCache(len(records) + 1)
    for record in records:
        token = "gp_" + record.public_id + "x" * 34
        digest = hashlib.sha256(token.encode()).digest()
        cache.put(
            record.public_id, CacheEntry(digest, record.secret_hash, record, time.monotonic())
        )
    gc.collect()
    per_key = (rss_kib() - before) * 1024 / len(records)
    flushes = await _flushes(pool, records)
    await pool.close()
    return {"cached_keys": len(records), "bytes_per_cached_key": per_key, **flushes}


async def _flushes(pool: asyncpg.Pool, records: list[KeyRecord]) -> dict[str, float]:
    store = KeyStore(pool, KeyFormat("gp_"), Hasher(Argon2Config()))
    usage = UsageRecorder(store, pool, UsageConfig(), SystemClock())
    # The first flush of a key inserts its rows (once in the key's life for last used,
    # once an hour for usage): timed apart from the flushes every interval after it,
    # which update them. Keys the runs before did not use come first.
    used = {r["key_id"] for r in await pool.fetch("SELECT key_id FROM api_key_last_used")}
    flushed = [r.id for r in sorted(records, key=lambda r: r.id in used)[:FLUSHED]]
    last_used, counts = [], []
    for _ in range(ROUNDS):
        for key_id in flushed:
            usage.mark_used(key_id)
        last_used.append(await _timed_flush(usage))
        for key_id in flushed:
            usage.count(key_id, "ok")
        counts.append(await _timed_flush(usage))
    return {
        "first_flush_10k_ms": last_used[0],
        "flush_10k_ms": sorted(last_used[1:])[2],
        "first_usage_flush_10k_ms": counts[0],
        "usage_flush_10k_ms": sorted(counts[1:])[2],
    }


async def _timed_flush(usage: UsageRecorder) -> float:
    started = time.perf_counter()
    assert await usage.flush()
    return (time.perf_counter() - started) * 1000


if __name__ == "__main__":
    print(json.dumps(asyncio.run(probe(sys.argv[1], int(sys.argv[2])))))
