"""Key verification on a cache miss (SPEC §3 step 3): one indexed query, then argon2id off
the event loop, at most `keys.verify_concurrency` at a time.

`KeyVerifier` owns the expensive part of authentication and nothing else: the key store
(behind the small `KeySource` protocol), the argon2 thread pool with its scheduling, and
the dummy hash that makes an unknown key id cost as much as a wrong secret, so that the
time of a refusal does not tell whether an id exists. What is cached, and when a cached
key is asked about again, is `auth.Authenticator`'s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import itertools
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Protocol

from . import metrics
from .keyformat import Hasher, KeyFormat
from .records import KeyRecord


class KeySource(Protocol):
    """The key store as authentication needs it (gateway.keys.KeyStore)."""

    format: KeyFormat
    hasher: Hasher

    async def lookup(self, public_id: str) -> KeyRecord | None: ...

    async def lookup_many(self, public_ids: Iterable[str]) -> dict[str, KeyRecord]: ...


def settle_argon2_thread(threads: Iterator[int]) -> None:
    """Run this (argon2) thread only on CPU time the event loop and the host do not want,
    and always on the same CPU.

    A verification is ~45 ms of CPU; a burst of new keys would otherwise take the cores
    the event loop needs for cached traffic. Linux schedules threads individually.
    SCHED_IDLE makes any ordinary thread that wakes up (the loop, on a request) take the
    core at once; a mere niceness does not, as the scheduler lets the running thread
    finish its slice (~3 ms) first. Measured with 20 new keys a second (`make bench`):
    the hot path's p99 grew 1.5-1.7x with SCHED_IDLE, 2.4-2.9x at niceness 10. With the
    cores saturated by cached traffic, a first request still took ~180 ms, as before:
    there are always gaps for idle-class threads, so verifications are slowed, not starved.

    An idle-class thread that may run anywhere is moved from core to core as the loop,
    the upstream and Postgres wake up, and takes its 19 MiB of hash memory through each
    core's caches. Pinned, the hot path's p99 at concurrency 1 under 20 new keys a second
    fell from ~2.8 to ~1.8 ms (the bench's cold-load step, pinned and not in 4 alternating
    rounds; alone ~1.2 ms). The pool's threads take successive CPUs of those the process
    may use, so concurrent verifications still spread; the first is picked by the process
    id, so that `--workers` processes do not all start on the same one.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread
    except (OSError, AttributeError):  # not Linux: a lower priority is the next best
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    with contextlib.suppress(OSError, AttributeError):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[-1 - next(threads) % len(cpus)]})


class KeyVerifier:
    """Looks keys up and checks their secrets; the decisions are the caller's."""

    def __init__(self, store: KeySource, concurrency: int) -> None:
        self.store = store
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency,
            thread_name_prefix="argon2",
            initializer=settle_argon2_thread,
            initargs=(itertools.count(os.getpid()),),
        )
        self._slots = asyncio.Semaphore(concurrency)
        self._dummy_hash = store.hasher.hash(uuid.uuid4().hex)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def lookup(self, public_id: str) -> KeyRecord | None:
        metrics.KEY_LOOKUPS.inc()
        return await self.store.lookup(public_id)

    async def lookup_many(self, public_ids: list[str]) -> dict[str, KeyRecord]:
        metrics.KEY_LOOKUPS.inc()
        return await self.store.lookup_many(public_ids)

    async def matching_hash(
        self, record: KeyRecord, secret: str, now: datetime.datetime
    ) -> str | None:
        """The hash of `record` (current, or one in its grace period) that `secret`
        matches, else None."""
        for secret_hash in record.candidate_hashes(now):
            if await self.argon2(secret_hash, secret):
                return secret_hash
        return None

    async def waste(self, secret: str) -> None:
        """As long as a wrong secret, for an id that does not exist."""
        await self.argon2(self._dummy_hash, secret)

    async def argon2(self, secret_hash: str, secret: str) -> bool:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        async with self._slots:
            metrics.ARGON2_VERIFICATIONS.inc()
            ok = await loop.run_in_executor(
                self._executor, self.store.hasher.verify, secret_hash, secret
            )
        metrics.ARGON2_DURATION.observe(time.perf_counter() - started)
        return ok
