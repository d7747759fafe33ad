"""Background work: one way to run a task beside the server and stop it, and what the
flushers (usage, rate-limit sync, `key.limit_reached` events) share: their periodic job,
their end at shutdown and, for the first two, one policy for the batches they write.

`running(coro, name)` is an async context manager for the `cleanup_ctx` generators and
the components' `start`/`stop`: the task runs inside it and is cancelled and awaited on
the way out. `Periodic(seconds, work, name)` is a flusher's periodic job: a fixed
cadence, and one failed run is logged without ending the loop.

`write_batch` is the error policy. An outage, or a deadlock or serialization failure
(SQLSTATE class 40), keeps the batch for the next attempt: both pass. Any other error
Postgres raises is a batch it refuses: retrying would block every later batch behind
it, so it is logged and dropped.

`Periodic.drain` ends a flusher at shutdown: the run under way is let finish and no
other starts, then the last flush writes what is left, retried; all within a bounded
time. The run is not cancelled midway: the flusher has taken its batch out of memory by
then, and could not tell whether Postgres has it. Only a write still waiting on Postgres
when the time is up is cancelled; the flusher then puts its batch back, so that what was
not written is counted, and logged as lost at exit, rather than vanishing.
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


class Periodic:
    """`work` every `seconds` on a fixed cadence (not `seconds` after the last run ended:
    the rate-limit bound relies on it), in a task of its own, until `drain`. A failure
    is logged and the loop goes on."""

    def __init__(self, seconds: float, work: Callable[[], Awaitable[object]], what: str) -> None:
        self._seconds = seconds
        self._work = work
        self._what = what
        self._working = False  # a run is under way
        self._stopping = False  # no run starts any more
        self._task = asyncio.create_task(self._loop(), name=what)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_run = loop.time() + self._seconds
        while not self._stopping:
            await asyncio.sleep(max(0.0, next_run - loop.time()))
            next_run = max(next_run + self._seconds, loop.time())
            self._working = True
            try:
                await self._work()
            except Exception:  # the loop must outlive any one bad run
                log.exception("%s failed", self._what)
            finally:
                self._working = False

    async def drain(self, flush: Callable[[], Awaitable[bool]], timeout: float) -> bool:
        """At shutdown: let the run under way finish and start no other, then `flush`
        until it reports nothing left, retrying every half second; all within `timeout`
        seconds (at least one attempt once the run has finished). False when something is
        still pending then."""
        deadline = time.monotonic() + timeout
        self._stopping = True
        if self._working:
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:  # still waiting on Postgres: the flusher keeps its batch
                await cancel(self._task)
                return False
        await cancel(self._task)  # between two runs: it was asleep
        while not await flush():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.5)
        return True


class Written(enum.Enum):
    """What became of a batch."""

    DONE = "done"
    KEPT = "kept"  # not written: the caller keeps it for the next attempt
    DROPPED = "dropped"  # refused by Postgres: written never


# Errors that pass: an outage, or a deadlock or serialization failure (class 40).
TRANSIENT = (*UNAVAILABLE, asyncpg.exceptions.TransactionRollbackError)


async def write_batch(
    kind: str, write: Awaitable[T], *, keep_refused: bool = False
) -> tuple[Written, T | None]:
    """Await `write` under the flushers' policy; `kind` labels the metrics and logs.

    `keep_refused`: a batch Postgres refuses is kept too, for a writer whose batches
    cannot be the cause (the refusal is then the database's state: a full disk, a
    read-only standby) and whose counts others rely on."""
    started = time.perf_counter()
    try:
        result = await write
    except TRANSIENT as exc:
        metrics.FLUSH_FAILURES.labels(kind).inc()
        log.warning("%s flush failed, kept for the next one: %s", kind, exc)
        return Written.KEPT, None
    except asyncpg.PostgresError:
        metrics.FLUSH_FAILURES.labels(kind).inc()
        if keep_refused:
            log.exception("%s flush refused by Postgres, kept for the next one", kind)
            return Written.KEPT, None
        log.exception("%s flush refused by Postgres; batch dropped", kind)
        return Written.DROPPED, None
    metrics.FLUSH_DURATION.labels(kind).observe(time.perf_counter() - started)
    return Written.DONE, result
