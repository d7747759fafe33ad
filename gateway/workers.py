"""`gateway serve --workers N`: N proxy processes on one port, supervised by this one.

The parent runs the admin listener and starts N children (`serve --worker`), each a full
proxy with its own pool, key cache, notification listener and flushers, all binding the
proxy port with SO_REUSEPORT so the kernel spreads connections over them. Metrics go to a
prometheus-client multiprocess directory that the parent creates (and empties) before the
children start and removes at exit; the admin /metrics sums every worker from it.

A child that dies is logged and started again (with a growing pause if it keeps dying
soon after its start; back to a short one after it lived STABLE_AFTER_SECONDS).
SIGTERM or SIGINT to the parent is passed to every child; each finishes its in-flight
requests and flushes, and the parent waits for them before it exits. SIGHUP is passed to
every child that has installed its handler (one still starting reads the files anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("gateway.workers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# A worker that lived this long before it died did not die of starting: its restart
# waits only the first pause again, whatever deaths came before.
STABLE_AFTER_SECONDS = 30.0


class RestartPause:
    """The pause before a dead worker is started again: doubling (up to `longest`) while
    it keeps dying soon after its start, back to `first` after one that lived
    STABLE_AFTER_SECONDS."""

    def __init__(self, first: float = 0.5, longest: float = 30.0) -> None:
        self.first = first
        self.longest = longest
        self._next = first

    def after(self, lived: float) -> float:
        """The pause after a death `lived` seconds after the worker's start."""
        if lived >= STABLE_AFTER_SECONDS:
            self._next = self.first
        pause = self._next
        self._next = min(pause * 2, self.longest)
        return pause


def prepare_metrics_directory() -> tuple[Path, bool]:
    """The multiprocess directory, emptied; True when we created it (and remove it)."""
    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        path = Path(existing)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return path, False
    path = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
    # Set before anything imports prometheus_client, and inherited by every child.
    os.environ[MULTIPROC_ENV] = str(path)
    return path, True


class Supervisor:
    def __init__(self, count: int, child_args: Sequence[str], shutdown_timeout: float) -> None:
        self.count = count
        self.child_args = list(child_args)
        self.shutdown_timeout = shutdown_timeout
        self.children: dict[int, asyncio.subprocess.Process] = {}  # slot -> process
        self.restarts = 0
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for slot in range(self.count):
            await self._spawn(slot)
        self._tasks = [
            asyncio.create_task(self._watch(slot), name=f"worker-{slot}")
            for slot in range(self.count)
        ]

    async def _spawn(self, slot: int) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", *self.child_args
        )
        self.children[slot] = process
        log.info("worker started", extra={"worker": slot, "worker_pid": process.pid})

    async def _watch(self, slot: int) -> None:
        pause = RestartPause()
        while True:
            process = self.children[slot]
            started = time.monotonic()  # at most a few ms after its start (the spawn)
            code = await process.wait()
            _mark_dead(process.pid)
            if self._stopping:
                return
            log.error(
                "worker exited; starting it again",
                extra={"worker": slot, "worker_pid": process.pid, "exit_code": code},
            )
            await asyncio.sleep(pause.after(time.monotonic() - started))
            if self._stopping:
                return
            await self._spawn(slot)
            self.restarts += 1

    def signal(self, sig: signal.Signals) -> None:
        """Pass `sig` on (SIGHUP: reload the TLS files) to every live worker that has its
        handler. One still starting would die of it (the default action), and it reads
        the files after installing the handler (`serving.serve_one`), so it misses no
        reload. Spawning workers with the signal ignored does not work: libuv (uvloop)
        resets every disposition in the child before exec."""
        for process in self.children.values():
            if process.returncode is None and _catches(process.pid, sig):
                process.send_signal(sig)

    def alive(self) -> int:
        return sum(1 for p in self.children.values() if p.returncode is None)

    async def stop(self) -> None:
        self._stopping = True
        # The watchers first: one may be starting a dead worker again, and that worker,
        # not yet in `children`, would miss the SIGTERM below and outlive us. Cancelled
        # while it starts, asyncio kills it (it has served nothing yet).
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for process in self.children.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        waits = [p.wait() for p in self.children.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), self.shutdown_timeout + 15)
        except TimeoutError:
            log.error("workers did not stop in time; killing them")
            for process in self.children.values():
                if process.returncode is None:
                    process.kill()
            await asyncio.gather(*(p.wait() for p in self.children.values()))
        for process in self.children.values():
            _mark_dead(process.pid)
            if process.returncode not in (0, None):
                log.warning(
                    "worker exited with an error",
                    extra={"worker_pid": process.pid, "exit_code": process.returncode},
                )


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process `pid` has a handler for `sig` (its SigCgt mask in /proc). Where
    there is no /proc: assumed, as before."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # gone, or no /proc on this system
        return not sys.platform.startswith("linux")
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return True


def _mark_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters stay: totals never go down)."""
    from prometheus_client import multiprocess

    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def remove_metrics_directory(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def stop_with_parent() -> None:
    """In a worker: be sent SIGTERM (a graceful stop, with its final flush) when the
    supervisor dies, however it dies. Without this a supervisor killed with SIGKILL (the
    OOM killer, a `kill -9`) leaves its workers serving on the shared port, unsupervised.
    Linux only (prctl PR_SET_PDEATHSIG); elsewhere nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the supervisor died before the call: stop now
        os.kill(os.getpid(), signal.SIGTERM)
