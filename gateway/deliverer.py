"""The webhook deliverer: sends the outbox, at least once, in order per subject.

Each of `webhooks.concurrency` workers repeats: in one transaction, claim the oldest due
pending delivery whose subject has no earlier pending delivery to the same endpoint
(`FOR UPDATE SKIP LOCKED`: a delivery being sent by any process or replica is skipped by
the others), send it, record the answer, commit. A process killed mid-send never commits:
its row lock goes with its connection, and the delivery is sent again by whoever claims it
next (receivers drop duplicates by `webhook-id`). In the normal case nothing is sent
twice: the claim and the record of the answer are one transaction.

A failed attempt (no answer in `timeout_seconds`, a connection error, anything but 2xx;
redirects are not followed) is retried after `retry_base_seconds × 2^(attempts − 1)`, at
most `retry_max_interval_seconds` apart, until the delivery is `give_up_after_seconds`
old, when it is marked failed. Workers wake on the NOTIFY of a new event; otherwise they
sleep until one statement, run every `poll_interval_seconds` (it also feeds the backlog
gauges), finds a delivery due (a retry whose time came, an event whose NOTIFY was
missed). Idle, a deliverer costs that one statement a second: it shares its process and
event loop with the proxy unless `--workers N` is used (bench: docs/performance.md).

Every `scan_interval_seconds` the deliverer also queues the time-driven key events
(`key.expiring` 7 days and 1 day before `expires_at`, `key.rotation_due`), one process
at a time (an advisory transaction lock), each once per key and marker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from typing import Any

import aiohttp
import asyncpg

from . import metrics
from .clock import Clock, SystemClock, utcnow
from .config import Config
from .db import UNAVAILABLE, connect, create_pool
from .keys import KeyStore
from .webhooks import CHANNEL, PublicOnlyResolver, check_url, emit, key_data, public_address, sign

log = logging.getLogger("gateway.webhooks")

RESPONSE_KEPT = 1024
ERROR_KEPT = 500
# "GPWEBHOK" as a 64-bit integer: one scan of time-driven events at a time.
SCAN_LOCK_ID = 0x4750574542484F4B - (1 << 63)

_CLAIM = """
SELECT d.id, d.attempts, d.created_at, e.msg_id, e.payload, e.type,
       w.url, w.secret, w.previous_secret, w.previous_secret_expires_at > now() AS sign_previous
  FROM webhook_deliveries d
  JOIN webhook_events e ON e.id = d.event_id
  JOIN webhook_endpoints w ON w.id = d.endpoint_id
 WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND w.enabled
   AND NOT EXISTS (
       SELECT 1 FROM webhook_deliveries p
        WHERE p.endpoint_id = d.endpoint_id AND p.subject = d.subject
          AND p.status = 'pending' AND p.id < d.id)
 ORDER BY d.next_attempt_at, d.id
 LIMIT 1
   FOR UPDATE OF d SKIP LOCKED
"""

# The backlog gauges and whether a worker would find anything to claim (the claim's
# conditions, without its locks): one statement a poll interval, idle or not.
_LOOK = """
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest,
       EXISTS (
           SELECT 1
             FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id
            WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND w.enabled
              AND NOT EXISTS (
                  SELECT 1 FROM webhook_deliveries p
                   WHERE p.endpoint_id = d.endpoint_id AND p.subject = d.subject
                     AND p.status = 'pending' AND p.id < d.id)) AS due
  FROM webhook_deliveries WHERE status = 'pending'
"""

_RECORD = """
UPDATE webhook_deliveries
   SET attempts = attempts + 1,
       last_attempt_at = now(),
       status = CASE WHEN $2 THEN 'succeeded'
                     WHEN now() - created_at + make_interval(secs => $7)
                          >= make_interval(secs => $8) THEN 'failed'
                     ELSE 'pending' END,
       delivered_at = CASE WHEN $2 THEN now() END,
       next_attempt_at = CASE WHEN $2 THEN next_attempt_at
                              ELSE now() + make_interval(secs => $7) END,
       response_status = $3, response_body = $4, last_error = $5, latency_ms = $6
 WHERE id = $1
RETURNING status, extract(epoch FROM now() - created_at) AS age
"""


async def look(pool: asyncpg.Pool) -> bool:
    """Set the backlog gauges; True when a worker would find a delivery to claim."""
    row = await pool.fetchrow(_LOOK)
    metrics.WEBHOOK_PENDING.set(row["pending"])
    metrics.WEBHOOK_OLDEST_PENDING.set(float(row["oldest"]))
    return bool(row["due"])


async def watch_backlog(pool: asyncpg.Pool, interval: float) -> None:
    """The backlog gauges alone, every `interval`, where no deliverer runs
    (webhooks.deliver: false): an outbox that no process sends must show too."""
    while True:
        await asyncio.sleep(interval)
        try:
            await look(pool)
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            log.warning("webhook backlog not sampled: %s", exc)


class Deliverer:
    def __init__(self, config: Config, store: KeyStore, clock: Clock | None = None) -> None:
        self.config = config
        self.webhooks = config.webhooks
        self.store = store
        self.clock = clock or SystemClock()
        self._pool: asyncpg.Pool | None = None
        self._session: aiohttp.ClientSession | None = None
        self._listener: asyncpg.Connection | None = None
        # Wakes every waiting worker (set, then cleared at once: the waiters are already
        # released). A worker compares generations so that a wake while it was busy is not
        # lost. (An asyncio.Condition under wait_for can break its lock when cancelled on
        # Python 3.11.)
        self._wake = asyncio.Event()
        self._generation = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        webhooks = self.webhooks
        self._pool = await create_pool(
            self.config.database, min_size=0, max_size=webhooks.concurrency + 1
        )
        resolver = None if webhooks.allow_private_targets else PublicOnlyResolver()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=resolver, limit=webhooks.concurrency),
            timeout=aiohttp.ClientTimeout(total=webhooks.timeout_seconds),
            headers={"User-Agent": "GrowPanel-Webhooks/1"},
            auto_decompress=False,
        )
        await self._listen()
        self._tasks = [
            asyncio.create_task(self._work(), name=f"webhook-worker-{i}")
            for i in range(webhooks.concurrency)
        ]
        self._tasks.append(asyncio.create_task(self._tick(), name="webhook-tick"))

    async def stop(self) -> None:
        try:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            if self._listener is not None and not self._listener.is_closed():
                self._listener.terminate()
            if self._session is not None:
                await self._session.close()
            if self._pool is not None:
                await self._pool.close()

    # -- waking ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        conn: asyncpg.Connection | None = None
        try:
            conn = await connect(self.config.database, direct=True)  # LISTEN: not through a pooler
            await conn.add_listener(CHANNEL, self._notified)
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            if conn is not None:
                conn.terminate()
            log.warning("webhook deliverer cannot listen for new events (polling): %s", exc)
            return
        except BaseException:  # cancelled (stopping) between the two awaits
            if conn is not None:
                conn.terminate()
            raise
        self._listener = conn

    def _notified(self, *_args: object) -> None:
        asyncio.get_running_loop().create_task(self.wake())

    async def wake(self) -> None:
        self._generation += 1
        self._wake.set()
        self._wake.clear()

    async def _tick(self) -> None:
        """Every poll interval: wake the workers if a delivery is due; keep the listener,
        gauges and scan going."""
        loop = asyncio.get_running_loop()
        next_scan = loop.time() + self.webhooks.scan_interval_seconds
        while True:
            await asyncio.sleep(self.webhooks.poll_interval_seconds)
            try:
                if self._listener is None or self._listener.is_closed():
                    await self._listen()
                if await self.look():
                    await self.wake()
                if loop.time() >= next_scan:
                    next_scan = loop.time() + self.webhooks.scan_interval_seconds
                    await self.scan()
            except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
                log.warning("webhook upkeep failed: %s", exc)
            except Exception:
                log.exception("webhook upkeep failed")

    async def look(self) -> bool:
        """Set the backlog gauges; True when a worker would find a delivery to claim."""
        assert self._pool is not None
        return await look(self._pool)

    # -- delivering -----------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            generation = self._generation
            try:
                sent = await self.deliver_one()
            except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
                log.warning("webhook delivery paused: %s", exc)
                sent = False
            except Exception:
                log.exception("webhook delivery failed")
                sent = False
            if not sent and generation == self._generation:
                # Until a NOTIFY, or the tick's look, finds something due: an idle worker
                # costs no statement of its own.
                await self._wake.wait()

    async def deliver_one(self) -> bool:
        """Claim, send and record one due delivery; False when none is due."""
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_CLAIM)
            if row is None:
                return False
            ok, status, body, error, latency = await self._send(row)
            # The doubling stops at 2^64, past any maximum in practice: 2^1024 is no float,
            # and the error would roll the attempt back, sent again at the next poll.
            delay = min(
                self.webhooks.retry_base_seconds * 2 ** min(row["attempts"], 64),
                self.webhooks.retry_max_interval_seconds,
            )
            result = await conn.fetchrow(
                _RECORD,
                row["id"],
                ok,
                status,
                body,
                error,
                round(latency * 1000, 3),
                float(delay),
                float(self.webhooks.give_up_after_seconds),
            )
        metrics.WEBHOOK_DELIVERIES.labels(
            {"succeeded": "succeeded", "failed": "failed"}.get(result["status"], "retrying")
        ).inc()
        metrics.WEBHOOK_ATTEMPT_DURATION.observe(latency)
        if ok:
            metrics.WEBHOOK_DELIVERY_LAG.observe(float(result["age"]))
        elif result["status"] == "failed":
            log.warning(
                "webhook delivery failed for good",
                extra={"delivery_id": row["id"], "webhook_id": row["msg_id"], "error": error},
            )
        return True

    async def _send(
        self, row: asyncpg.Record
    ) -> tuple[bool, int | None, str | None, str | None, float]:
        """(succeeded, status, first KiB of the answer, error, seconds) of one attempt."""
        assert self._session is not None
        body = row["payload"].encode()
        timestamp = int(self.clock.time())
        signatures = [sign(row["secret"], row["msg_id"], timestamp, body)]
        if row["sign_previous"] and row["previous_secret"]:
            signatures.append(sign(row["previous_secret"], row["msg_id"], timestamp, body))
        headers = {
            "Content-Type": "application/json",
            "webhook-id": row["msg_id"],
            "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(signatures),
        }
        started = time.perf_counter()
        try:
            url = check_url(row["url"])
            host = (url.raw_host or "").strip("[]")
            if (
                not self.webhooks.allow_private_targets
                and _is_ip(host)
                and not public_address(host)
            ):
                raise OSError("the URL's address is not a public one")
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                raw = await response.content.read(RESPONSE_KEPT)
                text = raw.decode("utf-8", "replace").replace("\x00", "")
                while len(text.encode()) > RESPONSE_KEPT:  # replacement characters grow it
                    text = text[:-1]
                ok = 200 <= response.status < 300
                error = None if ok else f"HTTP {response.status}"
                return ok, response.status, text, error, time.perf_counter() - started
        except TimeoutError:
            error = f"no answer within {self.webhooks.timeout_seconds:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:ERROR_KEPT]
        except Exception as exc:  # any failure is the attempt's, recorded
            error = f"{type(exc).__name__}"[:ERROR_KEPT]
        return False, None, None, error, time.perf_counter() - started

    # -- time-driven events ---------------------------------------------------------------

    async def scan(self) -> int:
        """Queue key.expiring and key.rotation_due where due; returns how many."""
        assert self._pool is not None
        now = utcnow(self.clock)
        queued = 0
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SCAN_LOCK_ID):
                return 0
            # Limit-window marks only matter while their window can still be hit.
            await conn.execute(
                "DELETE FROM webhook_key_notices WHERE kind LIKE 'limit_%'"
                " AND created_at < now() - interval '2 days'"
            )
            rows = await conn.fetch(_DUE_NOTICES, now, self.config.keys.rotation_days)
            for row in rows:
                info = await self.store.get(row["account_id"], row["key_id"], conn=conn)
                if info is None:
                    continue
                data: dict[str, Any] = {"key": key_data(info)}
                if row["kind"] == "rotation_due":
                    event = "key.rotation_due"
                    data["rotation_days"] = self.config.keys.rotation_days
                else:
                    event = "key.expiring"
                    data["days"] = 1 if row["kind"] == "expiring_1d" else 7
                queued += await emit(conn, row["account_id"], event, f"key:{row['key_id']}", data)
        return queued


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# Keys due a notice, recorded as queued in the same statement (once per key, kind and
# marker). Only for accounts with an endpoint listening: nobody to tell, nothing kept.
_DUE_NOTICES = """
WITH due AS (
    SELECT k.id, k.account_id,
           CASE WHEN k.expires_at <= $1::timestamptz + interval '1 day' THEN 'expiring_1d'
                ELSE 'expiring_7d' END AS kind,
           floor(extract(epoch FROM k.expires_at))::bigint AS marker
      FROM api_keys k
     WHERE k.deleted_at IS NULL AND k.expires_at > $1::timestamptz
       AND k.expires_at <= $1::timestamptz + interval '7 days'
       AND EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.account_id = k.account_id
                      AND w.enabled AND 'key.expiring' = ANY (w.events))
    UNION ALL
    SELECT k.id, k.account_id, 'rotation_due',
           floor(extract(epoch FROM k.secret_created_at))::bigint
      FROM api_keys k
     WHERE k.deleted_at IS NULL
       AND k.secret_created_at <= $1::timestamptz - make_interval(days => $2)
       AND EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.account_id = k.account_id
                      AND w.enabled AND 'key.rotation_due' = ANY (w.events))
)
INSERT INTO webhook_key_notices (key_id, kind, marker)
SELECT id, kind, marker FROM due
ON CONFLICT DO NOTHING
RETURNING key_id, kind, (SELECT account_id FROM api_keys WHERE id = key_id) AS account_id
"""
