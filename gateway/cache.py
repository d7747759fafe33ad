"""The verified-key cache and the LISTEN/NOTIFY listener that keeps it honest.

An entry remembers that a full key (by its SHA-256 digest) was verified against a given
argon2 hash, together with the key's row. A hit costs one constant-time digest comparison:
no argon2, no query. An entry must be confirmed by Postgres again (one indexed query, still
no argon2 unless the hash changed) when it is older than `keys.cache_ttl_seconds`, when a
notification says the key changed, and — for every entry at once — when the listener
reconnects, since notices may have been missed while it was cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable

import asyncpg

from . import metrics
from .background import cancel
from .config import DatabaseConfig
from .db import UNAVAILABLE, connect
from .records import KeyRecord

log = logging.getLogger("gateway.cache")

KEYS_CHANNEL = "gateway_api_keys"


@dataclasses.dataclass(slots=True)
class CacheEntry:
    digest: bytes
    verified_hash: str
    record: KeyRecord
    confirmed_at: float  # monotonic time Postgres last confirmed the row
    changed: bool = False  # a notification (or a listener gap) says: confirm before use
    used: bool = False  # served from the cache since it was last confirmed


class KeyCache:
    """A bounded LRU map from public key id to `CacheEntry`."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, public_id: str) -> CacheEntry | None:
        entry = self._entries.get(public_id)
        if entry is not None:
            self._entries.move_to_end(public_id)
        return entry

    def peek(self, public_id: str) -> CacheEntry | None:
        """The entry, without counting this as a use (eviction order unchanged)."""
        return self._entries.get(public_id)

    def put(self, public_id: str, entry: CacheEntry) -> None:
        self._entries[public_id] = entry
        self._entries.move_to_end(public_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            metrics.KEY_CACHE_EVICTIONS.inc()
        metrics.KEY_CACHE_ENTRIES.set(len(self._entries))

    def discard(self, public_id: str) -> None:
        self._entries.pop(public_id, None)
        metrics.KEY_CACHE_ENTRIES.set(len(self._entries))

    def mark_changed(self, public_id: str) -> None:
        entry = self._entries.get(public_id)
        if entry is not None:
            entry.changed = True

    def mark_all_changed(self) -> None:
        for entry in self._entries.values():
            entry.changed = True


class NotificationListener:
    """Holds one connection that LISTENs for key changes, reconnecting with backoff.

    `connected` is an event that is set while the listener is attached; /readyz reads it.
    """

    def __init__(
        self,
        config: DatabaseConfig,
        on_key_changed: Callable[[str], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self._config = config
        self._on_key_changed = on_key_changed
        self._on_reconnect = on_reconnect
        self.connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None

    async def start(self) -> None:
        """Connect once (so start-up fails loudly if Postgres is unreachable), then watch."""
        await self._attach()
        self._task = asyncio.create_task(self._run(), name="notification-listener")

    async def stop(self) -> None:
        await cancel(self._task)
        self.connected.clear()
        metrics.LISTENER_CONNECTED.set(0)
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close(timeout=2)

    @property
    def backend_pid(self) -> int | None:
        return None if self._conn is None else self._conn.get_server_pid()

    async def _attach(self) -> None:
        conn = await connect(self._config, direct=True)
        try:
            self._lost.clear()
            conn.add_termination_listener(lambda _conn: self._lost.set())
            await conn.add_listener(KEYS_CHANNEL, self._notified)
        except BaseException:
            # Failed, or cancelled by stop() while reconnecting: the connection is not
            # ours to keep (left open it is reported unclosed when collected).
            conn.terminate()
            raise
        self._conn = conn
        self.connected.set()
        metrics.LISTENER_CONNECTED.set(1)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        metrics.NOTIFICATIONS.inc()
        self._on_key_changed(str(payload))

    async def _run(self) -> None:
        delay = 0.1
        while True:
            # A connection can also die silently (network partition): probe it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout=5.0)
            if not self._lost.is_set() and self._conn is not None:
                try:
                    await self._conn.fetchval("SELECT 1", timeout=5.0)
                    continue
                except (*UNAVAILABLE, asyncpg.PostgresError):
                    pass
            self.connected.clear()
            metrics.LISTENER_CONNECTED.set(0)
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
            log.warning("notification listener lost its connection; reconnecting")
            while True:
                try:
                    await self._attach()
                    break
                except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
                    log.warning("notification listener cannot reconnect: %s", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            delay = 0.1
            metrics.LISTENER_RECONNECTS.inc()
            # Notices sent while we were away are lost: nothing cached may be trusted
            # until Postgres confirms it again.
            self._on_reconnect()
            log.info("notification listener reconnected; key cache must be re-confirmed")
