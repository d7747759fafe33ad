"""Failed-authentication throttling (SPEC §3 step 2, §8): a client IP or a key id that fails
verification too often gets 429 `too_many_failed_attempts`, before any Postgres or argon2 work.

Only verifications cost anything (one indexed query and one argon2 hash), so only they
are charged: each cache miss is charged to the client IP and to the public key id in the
token *before* it starts, and refunded when the secret turns out right. Charging first
stops a burst of concurrent guesses at the limit instead of after it; refunding means a
client with many valid keys is never held back by its own successes. Only failures
refuse: a verification that finds the budget taken by attempts still being verified
waits for them to be decided (`SETTLE_SECONDS` at most) instead of answering 429 for
failures that have not happened (tested: 20 first uses of valid keys at once from one
address, against a budget of 5, all pass). A cached key is never charged, so a
wrong-secret flood against a known key id (say, from a leaked partial key) does not lock
out its holder, whose cached key keeps working. Unknown key ids are throttled exactly
like known ones: the answers reveal nothing about which ids exist.

Each IP and key id holds one number (GCRA): the time by which its charges will have
drained at N per minute. N attempts pass at once, then one every 60/N seconds. The state
is per process and bounded (`rate_limits.failed_auth.max_tracked` entries per table).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Protocol

from . import metrics
from .clock import Clock
from .config import FailedAuthConfig
from .errors import GatewayError, Outcome

MINUTE = 60.0
_EPSILON = 1e-9  # float sums of 60/N steps must not block the N-th attempt
# How long a verification may wait for attempts ahead of it to be decided. Each is one
# query and one argon2 hash, bounded by `keys.verify_concurrency`: well under this.
SETTLE_SECONDS = 10.0


def too_many_failed_attempts(scope: str, wait: float) -> GatewayError:
    metrics.FAILED_AUTH_THROTTLED.labels(scope).inc()
    return GatewayError(
        429,
        "too_many_failed_attempts",
        "Too many failed authentication attempts; retry later.",
        {"Retry-After": str(max(1, math.ceil(wait)))},
        outcome=Outcome.THROTTLED,
    )


class _Budget:
    """N attempts per minute for each name (an IP or a key id), as one float per name."""

    def __init__(self, per_minute: int, max_tracked: int) -> None:
        self._step = MINUTE / per_minute
        self._max = max_tracked
        self._drained_at: dict[str, float] = {}
        self._undecided: dict[str, int] = {}  # charges whose verification is still running

    def __len__(self) -> int:
        return len(self._drained_at)

    def wait(self, name: str, now: float) -> float:
        """Seconds until `name` may be charged again; 0 when it may be now."""
        drained_at = self._drained_at.get(name)
        if drained_at is None:
            return 0.0
        wait = drained_at + self._step - MINUTE - now
        return wait if wait > _EPSILON else 0.0

    def wait_for_failures(self, name: str, now: float) -> float:
        """`wait` as if every undecided charge were to be refunded: failures alone."""
        drained_at = self._drained_at.get(name)
        if drained_at is None:
            return 0.0
        wait = drained_at - self._undecided.get(name, 0) * self._step + self._step - MINUTE - now
        return wait if wait > _EPSILON else 0.0

    def charge(self, name: str, now: float) -> None:
        drained_at = self._drained_at.get(name, now)
        if name not in self._drained_at and len(self._drained_at) >= self._max:
            self._make_room(now)
        self._drained_at[name] = max(drained_at, now) + self._step
        self._undecided[name] = self._undecided.get(name, 0) + 1

    def decided(self, name: str) -> None:
        """A charge's verification is over (and the charge refunded or kept)."""
        left = self._undecided.get(name, 0) - 1
        if left > 0:
            self._undecided[name] = left
        else:
            self._undecided.pop(name, None)

    def refund(self, name: str, now: float) -> None:
        drained_at = self._drained_at.get(name)
        if drained_at is None:
            return
        drained_at -= self._step
        if drained_at <= now:
            del self._drained_at[name]
        else:
            self._drained_at[name] = drained_at

    def _make_room(self, now: float) -> None:
        # Drop whoever has drained; if everyone is still owing, the oldest entry goes
        # (an attacker with that many addresses is bounded by verify_concurrency anyway).
        for name in [n for n, t in self._drained_at.items() if t <= now]:
            del self._drained_at[name]
        if len(self._drained_at) >= self._max:
            del self._drained_at[next(iter(self._drained_at))]


class AuthAttempt(Protocol):
    async def charge(self) -> None:
        """Before a verification: charge the IP and the key id, or raise a 429."""

    def settle(self, *, failed: bool) -> None:
        """After authentication: keep the charge if a verification failed (or the request
        went away mid-verification: leaving early must not buy verifications for free),
        else refund it; either way, attempts waiting on this one's outcome re-check."""


class FailedAuthThrottle:
    def __init__(self, config: FailedAuthConfig, clock: Clock) -> None:
        self._clock = clock
        self.ips = _Budget(config.per_ip_per_minute, config.max_tracked)
        self.key_ids = _Budget(config.per_key_per_minute, config.max_tracked)
        self._decision = asyncio.Event()  # set, and replaced, whenever a charge is decided

    def admit(self, client_ip: str, public_id: str) -> AuthAttempt:
        """Step 2: a 429 for an IP that failed too often, else the request's attempt."""
        wait = self.ips.wait_for_failures(client_ip, self._clock.monotonic())
        if wait:
            raise too_many_failed_attempts("ip", wait)
        return _Attempt(self, client_ip, public_id)

    async def charge(self, client_ip: str, public_id: str) -> None:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + SETTLE_SECONDS
        while True:
            now = self._clock.monotonic()
            ip_wait = self.ips.wait(client_ip, now)
            key_wait = self.key_ids.wait(public_id, now)
            if not ip_wait and not key_wait:
                break
            # Refused for failures alone; otherwise attempts still being verified hold
            # the budget, and their outcome decides.
            failed_ip = self.ips.wait_for_failures(client_ip, now)
            failed_key = self.key_ids.wait_for_failures(public_id, now)
            if failed_ip or failed_key or loop.time() >= give_up_at:
                if failed_ip or (ip_wait and not failed_key):
                    raise too_many_failed_attempts("ip", failed_ip or ip_wait)
                raise too_many_failed_attempts("key", failed_key or key_wait)
            with contextlib.suppress(TimeoutError):  # then refused on the next pass
                await asyncio.wait_for(self._decision.wait(), give_up_at - loop.time())
        self.ips.charge(client_ip, now)
        self.key_ids.charge(public_id, now)

    def settle(self, client_ip: str, public_id: str, *, refund: bool) -> None:
        """A charged verification is over: refund it (success) or keep it (failure)."""
        if refund:
            now = self._clock.monotonic()
            self.ips.refund(client_ip, now)
            self.key_ids.refund(public_id, now)
        self.ips.decided(client_ip)
        self.key_ids.decided(public_id)
        self._decision.set()
        self._decision = asyncio.Event()


class _Attempt:
    __slots__ = ("_charged", "_client_ip", "_public_id", "_throttle")

    def __init__(self, throttle: FailedAuthThrottle, client_ip: str, public_id: str) -> None:
        self._throttle = throttle
        self._client_ip = client_ip
        self._public_id = public_id
        self._charged = False

    async def charge(self) -> None:
        await self._throttle.charge(self._client_ip, self._public_id)
        self._charged = True

    def settle(self, *, failed: bool) -> None:
        if self._charged:
            self._throttle.settle(self._client_ip, self._public_id, refund=not failed)
        self._charged = False
