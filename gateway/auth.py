"""Authentication of API keys (SPEC §3 steps 1 and 3): the refusals, the header parse, and
the verified-key cache with its re-confirmation (`Authenticator`).

The order is chosen so that cheap checks shield expensive ones: a malformed key or a bad
checksum is refused with no I/O; a cached key costs a SHA-256 and a constant-time compare;
only a miss reaches `verify.KeyVerifier` (one indexed query, then argon2 in a thread).
Concurrent misses for the same key share one verification.

Cached keys are re-confirmed by background batches once they are older than
`keys.cache_ttl_seconds`: once a second, `REFRESH_CHUNK` keys a query, instead of one query
inside each key's request (10,000 keys in use were ~170 such queries a second, in waves
when they had been cached together). A batch takes every key that reached the TTL having
been used since it was last confirmed, and every key used past the TTL; a key used past
the TTL is served as it is meanwhile. Changes still reach the cache at once through
notifications; the batch is the safety net. A key no batch re-confirmed within
`REFRESH_GRACE_SECONDS` past the TTL (Postgres slow or down, or a key idle since its last
confirmation) is confirmed before use, as is a key a notification marked changed.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable

from multidict import CIMultiDictProxy

from . import metrics
from .background import cancel
from .cache import CacheEntry, KeyCache
from .clock import Clock, utcnow
from .config import KeysConfig
from .db import UNAVAILABLE
from .errors import GatewayError, Outcome
from .keyformat import KeyFormat, ParsedKey
from .records import KeyRecord
from .verify import KeySource, KeyVerifier

log = logging.getLogger("gateway.auth")

BEARER_REALM = 'Bearer realm="GrowPanel API"'
REFRESH_EVERY_SECONDS = 1.0  # cadence of the background re-confirmation batches
REFRESH_GRACE_SECONDS = 5.0  # past the TTL, how long a key may wait for a batch
# Keys one re-confirmation query asks for: reading rows into records takes the loop ~20 µs
# a key, so 500 keys take ~7-10 ms, where 10,000 keys due at once (as a minute after a
# start) took ~220 ms in one query.
REFRESH_CHUNK = 500


class AuthError(GatewayError):
    """A refused key.

    `key` is set when the key id was known (its usage shows the refusal); `reason` is the
    `gateway_auth_total` label; `failed_verification` says that a secret was checked and
    was wrong (unknown id or wrong secret): what the failed-auth throttle keeps charged.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        reason: str,
        outcome: Outcome,
        key: KeyRecord | None = None,
        failed_verification: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, code, message, headers, outcome=outcome)
        self.key = key
        self.reason = reason
        self.failed_verification = failed_verification


def missing_key() -> AuthError:
    return AuthError(
        401,
        "missing_api_key",
        "Send your API key as 'Authorization: Bearer <API key>'.",
        reason="missing",
        outcome=Outcome.UNAUTHENTICATED,
        headers={"WWW-Authenticate": BEARER_REALM},
    )


def invalid_key(
    reason: str, key: KeyRecord | None = None, *, failed_verification: bool = False
) -> AuthError:
    """One body for malformed, unknown, wrong-secret and revoked keys: no oracle. `key`:
    a wrong secret for this known key (its usage counts a failed authentication)."""
    return AuthError(
        401,
        "invalid_api_key",
        "The API key is not valid.",
        reason=reason,
        outcome=Outcome.FAILED_AUTH if key is not None else Outcome.UNAUTHENTICATED,
        key=key,
        failed_verification=failed_verification,
        headers={"WWW-Authenticate": f'{BEARER_REALM}, error="invalid_token"'},
    )


def refused_key(code: str, message: str, reason: str, key: KeyRecord) -> AuthError:
    """A key that is ours and verified, but may not be used now (disabled, expired)."""
    return AuthError(401, code, message, reason=reason, outcome=Outcome.DENIED, key=key)


def auth_unavailable() -> AuthError:
    return AuthError(
        503,
        "auth_unavailable",
        "API keys cannot be verified right now; retry shortly.",
        reason="unavailable",
        outcome=Outcome.UNAVAILABLE,
        headers={"Retry-After": "5"},
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    """The bearer token of a request and its parts (key id, secret)."""

    token: str
    parsed: ParsedKey

    @property
    def public_id(self) -> str:
        return self.parsed.public_id


def authorization_header(headers: CIMultiDictProxy[str]) -> str | None:
    """The request's one `Authorization` header, or None. Two or more are no credential
    (401 `invalid_api_key`): the gateway would judge one key while an upstream given
    them (`proxy.forward_authorization`) may act on another, or on them joined."""
    values = headers.getall("Authorization", ())
    if len(values) > 1:
        raise invalid_key("malformed")
    return values[0] if values else None


def parse_authorization(header: str | None, key_format: KeyFormat) -> Credentials:
    """Step 1: the header's shape and the key's checksum, without any I/O."""
    if header is None or not header.strip():
        raise missing_key()
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise invalid_key("malformed")
    parsed = key_format.parse(token)
    if parsed is None:
        raise invalid_key("malformed")
    return Credentials(token, parsed)


class Authenticator:
    """The verified-key cache and its policy: what a request may take from the cache,
    when a cached key is asked about again (one query, no argon2), the batches that
    re-confirm keys in use, and the notices that mark keys changed. A miss goes to the
    `KeyVerifier`; concurrent misses for the same key share one verification."""

    def __init__(self, store: KeySource, config: KeysConfig, clock: Clock) -> None:
        self.verifier = KeyVerifier(store, config.verify_concurrency)
        self.key_format = store.format
        self.config = config
        self.clock = clock
        self.cache = KeyCache(config.cache_max_entries)
        self._inflight: dict[bytes, asyncio.Future[KeyRecord]] = {}
        self._db_retry_at = 0.0
        # Key-change notices (and listener gaps) so far. A row read while a notice came in
        # may predate the change the notice is about: what is cached from that read stays
        # marked changed, so its next use asks Postgres again (one query, no argon2).
        self._notices = 0
        self._due: set[str] = set()  # cached keys used past their TTL, for the next batch
        # Every confirmation in time order: where a batch finds the keys reaching the TTL.
        self._confirmed: collections.deque[tuple[float, str]] = collections.deque()
        self.refresh_chunk = REFRESH_CHUNK
        self._refresher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_every(), name="key-refresh")

    async def close(self) -> None:
        await cancel(self._refresher)
        self.verifier.close()

    async def authenticate(
        self,
        credentials: Credentials,
        *,
        before_verify: Callable[[], Awaitable[None]] | None = None,
    ) -> KeyRecord:
        """Step 3: the key's record if the key is valid now, else an `AuthError`.

        `before_verify` (the failed-authentication throttle) runs before a verification
        that would cost a query and argon2, and may refuse it by raising (or wait for
        other verifications to be decided).
        """
        parsed = credentials.parsed
        digest = hashlib.sha256(credentials.token.encode()).digest()
        entry = self.cache.get(parsed.public_id)
        if entry is not None and hmac.compare_digest(entry.digest, digest):
            metrics.count(metrics.KEY_CACHE_HITS)
            age = self.clock.monotonic() - entry.confirmed_at
            ttl = self.config.cache_ttl_seconds
            if age < ttl and not entry.changed:
                entry.used = True
                record = entry.record
            elif entry.changed or age >= ttl + REFRESH_GRACE_SECONDS:
                record = await self._reconfirm(parsed.public_id, entry, age)
            else:  # due: used as it is while the next batch re-confirms it
                self._due.add(parsed.public_id)
                record = entry.record
            if entry.verified_hash != record.secret_hash and not record.accepts_hash(
                entry.verified_hash, utcnow(self.clock)
            ):  # the previous secret, whose grace ended: nothing announces that
                self.cache.discard(parsed.public_id)
                raise invalid_key("revoked")
        else:
            metrics.KEY_CACHE_MISSES.inc()
            record = await self._verify_shared(digest, parsed, before_verify)
        self._check_state(record)
        return record

    def _check_state(self, record: KeyRecord) -> None:
        if not record.enabled:
            raise refused_key("disabled_api_key", "This API key is disabled.", "disabled", record)
        if record.expires_at is not None and record.expires_at <= utcnow(self.clock):
            raise refused_key("expired_api_key", "This API key has expired.", "expired", record)

    async def _reconfirm(self, public_id: str, entry: CacheEntry, age: float) -> KeyRecord:
        """Ask Postgres whether the verified hash is still this key's; no argon2."""
        # stale-if-error: only for entries that merely aged, never for a key that a
        # notification said changed.
        stale_ok = (
            not entry.changed
            and age < self.config.cache_ttl_seconds + self.config.stale_if_error_seconds
        )
        if stale_ok and self.clock.monotonic() < self._db_retry_at:
            return entry.record  # Postgres failed a moment ago: do not queue on it
        notices = self._notices
        try:
            record = await self.verifier.lookup(public_id)
        except UNAVAILABLE:
            self._db_retry_at = self.clock.monotonic() + 1.0
            if stale_ok:
                return entry.record
            raise auth_unavailable() from None
        if record is None or not record.accepts_hash(entry.verified_hash, utcnow(self.clock)):
            self.cache.discard(public_id)
            raise invalid_key("revoked")
        entry.record = record
        self._confirm(public_id, entry, self.clock.monotonic())
        entry.changed = self._notices != notices
        return record

    async def _refresh_every(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_EVERY_SECONDS)
            try:
                await self.refresh()
            except Exception:  # the loop must outlive any one bad batch
                log.exception("key re-confirmation batch failed")

    async def refresh(self) -> None:
        """Re-confirm every cached key that came due since the last batch, `REFRESH_CHUNK`
        keys a query: those that reached the TTL having been used since they were last
        confirmed (so that a key in use is never confirmed inside a request, however its
        uses are spaced), and those used past the TTL."""
        due, self._due = self._due, set()
        reached = self.clock.monotonic() - self.config.cache_ttl_seconds
        confirmed = self._confirmed
        while confirmed and confirmed[0][0] <= reached:
            at, public_id = confirmed.popleft()
            entry = self.cache.peek(public_id)
            # Not confirmed again since (a later item stands for that), and used.
            if entry is not None and entry.confirmed_at == at and entry.used:
                due.add(public_id)
        keys = list(due)
        for start in range(0, len(keys), self.refresh_chunk):
            if not await self._refresh(keys[start : start + self.refresh_chunk]):
                return  # Postgres is away: the rest are queued again by their next uses

    async def _refresh(self, due: list[str]) -> bool:
        notices = self._notices
        try:
            records = await self.verifier.lookup_many(due)
        except UNAVAILABLE:
            # Their next uses queue them again; past the grace they ask for themselves
            # and take the stale-if-error path.
            self._db_retry_at = self.clock.monotonic() + 1.0
            return False
        confirmed_at = self.clock.monotonic()
        now = utcnow(self.clock)
        changed = self._notices != notices
        for public_id in due:
            entry = self.cache.peek(public_id)
            if entry is None or entry.changed:  # gone, or to be confirmed on its next use
                continue
            record = records.get(public_id)
            if record is None or not record.accepts_hash(entry.verified_hash, now):
                self.cache.discard(public_id)  # deleted, or its secret replaced
                continue
            entry.record = record
            self._confirm(public_id, entry, confirmed_at)
            entry.changed = changed
        return True

    def _confirm(self, public_id: str, entry: CacheEntry, at: float) -> None:
        entry.confirmed_at = at
        entry.used = False
        self._confirmed.append((at, public_id))

    async def _verify_shared(
        self,
        digest: bytes,
        parsed: ParsedKey,
        before_verify: Callable[[], Awaitable[None]] | None,
    ) -> KeyRecord:
        future = self._inflight.get(digest)
        if future is None and before_verify is not None:
            await before_verify()  # only real verifications are charged, not their waiters
            future = self._inflight.get(digest)  # the same key, arrived while this waited
        if future is not None:
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            record = await self._verify(digest, parsed)
        except BaseException as exc:
            future.set_exception(exc)
            # The caller re-raises; waiters get the same exception.
            future.exception()
            raise
        else:
            future.set_result(record)
            return record
        finally:
            del self._inflight[digest]

    async def _verify(self, digest: bytes, parsed: ParsedKey) -> KeyRecord:
        notices = self._notices
        try:
            record = await self.verifier.lookup(parsed.public_id)
        except UNAVAILABLE:
            raise auth_unavailable() from None
        if record is None:
            await self.verifier.waste(parsed.secret)
            raise invalid_key("unknown", failed_verification=True)
        confirmed_at = self.clock.monotonic()
        secret_hash = await self.verifier.matching_hash(record, parsed.secret, utcnow(self.clock))
        if secret_hash is None:
            raise invalid_key("wrong_secret", key=record, failed_verification=True)
        changed = self._notices != notices
        entry = CacheEntry(digest, secret_hash, record, confirmed_at, changed)
        self.cache.put(parsed.public_id, entry)
        self._confirm(parsed.public_id, entry, confirmed_at)
        return record

    def key_changed(self, public_id: str) -> None:
        self._notices += 1
        self.cache.mark_changed(public_id)

    def listener_reconnected(self) -> None:
        self._notices += 1
        self.cache.mark_all_changed()
