"""Background work: one way to run a task beside the server and stop it, and the one
policy for the batches that the flushers (usage, rate-limit sync) write to Postgres.

`running(coro, name)` is an async context manager for the `cleanup_ctx` generators and
the components' `start`/`stop`: the task runs inside it and is cancelled and awaited on
the way out. `every(seconds, work, name)` is the loop of a periodic job: a fixed cadence,
and one failed run is logged without ending the loop.

`write_batch` is the flushers' shared error policy. An outage, or a deadlock or
serialization failure (SQLSTATE class 40), keeps the batch for the next attempt: both
pass. Any other error Postgres raises is a batch it refuses: retrying would block every
later batch behind it, so it is logged and dropped. `drain` is the last flush at
shutdown, retried for a bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import asyncpg

from . import metrics
from .db import UNAVAILABLE

log = logging.getLogger("gateway")

T = TypeVar("T")


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and wait until it has finished."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def running(coro: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """Run `coro` as a task for the duration of the `async with` block."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield
    finally:
        await cancel(task)


async def every(seconds: float, work: Callable[[], Awaitable[object]], what: str) -> None:
    """Run `work` every `seconds` on a fixed cadence (not `seconds` after the last run
    ended: the rate-limit bound relies on it) until cancelled. A failure is logged and
    the loop goes on."""
    loop = asyncio.get_running_loop()
    next_run = loop.time() + seconds
    while True:
        await asyncio.sleep(max(0.0, next_run - loop.time()))
        next_run = max(next_run + seconds, loop.time())
        try:
            await work()
        except Exception:  # the loop must outlive any one bad run
            log.exception("%s failed", what)


class Written(enum.Enum):
    """What became of a batch."""

    DONE = "done"
    KEPT = "kept"  # not written: the caller keeps it for the next attempt
    DROPPED = "dropped"  # refused by Postgres: written never


# Errors that pass: an outage, or a deadlock or serialization failure (class 40).
TRANSIENT = (*UNAVAILABLE, asyncpg.exceptions.TransactionRollbackError)


async def write_batch(kind: str, write: Awaitable[T]) -> tuple[Written, T | None]:
    """Await `write` under the flushers' policy; `kind` labels the metrics and logs."""
    started = time.perf_counter()
    try:
        result = await write
    except TRANSIENT as exc:
        metrics.FLUSH_FAILURES.labels(kind).inc()
        log.warning("%s flush failed, kept for the next one: %s", kind, exc)
        return Written.KEPT, None
    except asyncpg.PostgresError:
        metrics.FLUSH_FAILURES.labels(kind).inc()
        log.exception("%s flush refused by Postgres; batch dropped", kind)
        return Written.DROPPED, None
    metrics.FLUSH_DURATION.labels(kind).observe(time.perf_counter() - started)
    return Written.DONE, result


async def drain(flush: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    """At shutdown: `flush` until it reports nothing left, retrying every half second
    for `timeout` seconds; False when something is still pending then."""
    deadline = time.monotonic() + timeout
    while not await flush():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.5)
    return True
