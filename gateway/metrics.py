"""Every Prometheus metric the gateway exports, defined once.

Labels carry only small fixed sets (outcome, reason, kind, window): never a key, a key id,
a path or anything else a client controls, so the series count stays bounded.
"""

from __future__ import annotations

import asyncio
import bisect
import functools

from prometheus_client import Counter, Gauge, Histogram

# Sub-millisecond resolution at the bottom: the gateway's own overhead lives there.
LATENCY_BUCKETS = (
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

REQUESTS = Counter(
    "gateway_requests_total",
    "Requests on the proxy listener by outcome and status class.",
    ["outcome", "status_class"],
)
REQUEST_DURATION = Histogram(
    "gateway_request_duration_seconds",
    "Time from request received to response finished on the proxy listener.",
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_DURATION = Histogram(
    "gateway_upstream_duration_seconds",
    "Time from sending the request upstream to receiving the response headers.",
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors_total",
    "Upstream failures by kind (connect, timeout, protocol, tls).",
    ["kind"],
)
AUTH_RESULTS = Counter(
    "gateway_auth_total",
    "Authentication results by reason.",
    ["result"],
)
KEY_CACHE_HITS = Counter("gateway_key_cache_hits_total", "Requests answered from the key cache.")
KEY_CACHE_MISSES = Counter(
    "gateway_key_cache_misses_total", "Requests whose key had to be verified against Postgres."
)
KEY_CACHE_EVICTIONS = Counter(
    "gateway_key_cache_evictions_total", "Verified keys evicted to respect the size bound."
)
KEY_CACHE_ENTRIES = Gauge(
    "gateway_key_cache_entries", "Verified keys in the cache.", multiprocess_mode="livesum"
)
KEY_LOOKUPS = Counter("gateway_key_lookups_total", "Queries for a key row in Postgres.")
ARGON2_VERIFICATIONS = Counter("gateway_argon2_verifications_total", "argon2id verifications run.")
ARGON2_DURATION = Histogram(
    "gateway_argon2_duration_seconds",
    "Time of one argon2id verification, queueing included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
FLUSH_DURATION = Histogram(
    "gateway_flush_duration_seconds",
    "Time of one batched write to Postgres by kind (last_used, usage, rate_limits).",
    ["kind"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
FLUSH_FAILURES = Counter(
    "gateway_flush_failures_total",
    "Batched writes that failed (kept for the next one, or dropped when Postgres refused them).",
    ["kind"],
)
FLUSH_PENDING = Gauge(
    "gateway_flush_pending",
    "Items waiting for the next batched write.",
    ["kind"],
    multiprocess_mode="livesum",
)
NOTIFICATIONS = Counter(
    "gateway_notifications_total", "Key-change notifications received from Postgres."
)
LISTENER_RECONNECTS = Counter(
    "gateway_listener_reconnects_total",
    "Times the notification listener reconnected (each has every cached key re-confirmed).",
)
LISTENER_CONNECTED = Gauge(
    "gateway_listener_connected",
    "Processes whose notification listener is connected (one per proxy process when healthy).",
    multiprocess_mode="livesum",
)
# What gateway_listener_connected should read: with `--workers N` a scrape shows the sum
# over the workers, and an admin-only process has no listener at all.
PROXY_PROCESSES = Gauge(
    "gateway_proxy_processes",
    "Proxy processes this gateway runs (N with --workers N, 0 with the proxy off), each "
    "with a notification listener.",
    multiprocess_mode="livemax",
)
DB_POOL_IN_USE = Gauge(
    "gateway_db_pool_connections_in_use",
    "Postgres pool connections checked out, by pool (proxy, admin).",
    ["pool"],
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "gateway_db_pool_connections",
    "Postgres pool connections open, by pool (proxy, admin).",
    ["pool"],
    multiprocess_mode="livesum",
)
ADMIN_REQUESTS = Counter(
    "gateway_admin_requests_total",
    "Requests on the admin listener by route template, method and status class.",
    ["route", "method", "status_class"],
)
KEY_LIFECYCLE = Counter(
    "gateway_key_lifecycle_events_total",
    "API key lifecycle events (created, regenerated, updated, deleted).",
    ["event"],
)
RATE_LIMITED = Counter(
    "gateway_rate_limited_total",
    "Requests refused by a key's rate limit, by the window that refused them (minute, day).",
    ["window"],
)
FAILED_AUTH_THROTTLED = Counter(
    "gateway_failed_auth_throttled_total",
    "Requests refused for too many failed authentications, by what was throttled (ip, key).",
    ["scope"],
)

SECRET_SCANNING_ALERTS = Counter(
    "gateway_secret_scanning_alerts_total",
    "Secret-scanning alerts received, by result (ok or the error code answered).",
    ["result"],
)
SECRET_SCANNING_TOKENS = Counter(
    "gateway_secret_scanning_tokens_total",
    "Tokens in verified alerts, by finding (malformed, unknown, wrong_secret, leaked).",
    ["result"],
)
SECRET_SCANNING_LOOKUPS = Counter(
    "gateway_secret_scanning_lookups_total",
    "Key rows looked up for secret-scanning alerts (tokens that passed the checksum).",
)
SECRET_SCANNING_KEY_FETCHES = Counter(
    "gateway_secret_scanning_key_fetches_total",
    "Fetches of the secret-scanning public-keys document, by result (ok, failed).",
    ["result"],
)
WEBHOOK_DELIVERIES = Counter(
    "gateway_webhook_deliveries_total",
    "Webhook delivery attempts by result: succeeded, retrying (failed, to be retried), "
    "failed (given up after webhooks.give_up_after_seconds).",
    ["result"],
)
WEBHOOK_ATTEMPT_DURATION = Histogram(
    "gateway_webhook_attempt_duration_seconds",
    "Time of one webhook delivery attempt (connect, send, answer).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
WEBHOOK_DELIVERY_LAG = Histogram(
    "gateway_webhook_delivery_latency_seconds",
    "Time from an event's commit to its successful delivery, retries included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86400.0),
)
WEBHOOK_PENDING = Gauge(
    "gateway_webhook_pending",
    "Webhook deliveries waiting to be sent or retried (the outbox backlog, all accounts).",
    multiprocess_mode="livemax",
)
WEBHOOK_OLDEST_PENDING = Gauge(
    "gateway_webhook_oldest_pending_seconds",
    "Age of the oldest webhook delivery still pending (0 when none).",
    multiprocess_mode="livemax",
)

# The proxy's per-request counters by their labels. `labels()` validates and looks the
# child up under a lock (~2.5 µs); the label values come from small fixed sets, so the
# children are kept here once made.
requests_by = functools.cache(REQUESTS.labels)
auth_results_by = functools.cache(AUTH_RESULTS.labels)


# -- per-request updates, folded in bulk ------------------------------------------------
#
# Under `--workers` every prometheus-client value is a memory-mapped file entry: one
# `inc()` costs ~2 µs and one `observe()` ~4 µs, and the five updates of a proxied request
# were ~7% of a worker's CPU. The proxy's per-request updates are therefore added to plain
# numbers here and folded into the metrics in bulk by `fold()`: once a second in every
# proxy process (`fold_every`), before every scrape of this process, and at shutdown. A
# scrape of `--workers` shows requests up to a second late; totals are never lost.

FOLD_SECONDS = 1.0

_pending: dict[Counter, int] = {}


def count(counter: Counter) -> None:
    """One more on `counter` (a child when it has labels), at the next fold."""
    _pending[counter] = _pending.get(counter, 0) + 1


class PendingHistogram:
    """Observations of one histogram, held as bucket counts and a sum until the next fold.

    prometheus-client has no public call to add many observations at once; this one uses
    the histogram's bucket bounds and values (`_upper_bounds`, `_buckets`, `_sum`), which
    have not changed in years. tests/test_observability.py checks that a fold exports
    exactly what `observe()` one by one would, so an upgrade that moves them fails there.
    """

    __slots__ = ("_bounds", "_counts", "_histogram", "_sum")

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._bounds: tuple[float, ...] = tuple(histogram._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        # `observe()` counts an amount in the first bucket whose bound is >= it.
        self._counts[bisect.bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def fold(self) -> None:
        if not any(self._counts):
            return
        counts, total = self._counts, self._sum
        self._counts, self._sum = [0] * len(self._bounds), 0.0
        for bucket, n in zip(self._histogram._buckets, counts, strict=True):
            if n:
                bucket.inc(n)
        self._histogram._sum.inc(total)


request_duration = PendingHistogram(REQUEST_DURATION)
upstream_duration = PendingHistogram(UPSTREAM_DURATION)


def fold() -> None:
    """Move every pending per-request update into the Prometheus metrics."""
    pending = list(_pending.items())
    _pending.clear()
    for counter, n in pending:
        counter.inc(n)
    request_duration.fold()
    upstream_duration.fold()


async def fold_every(seconds: float = FOLD_SECONDS) -> None:
    """Fold until cancelled, and once more then."""
    try:
        while True:
            await asyncio.sleep(seconds)
            fold()
    finally:
        fold()


def _precreate() -> None:
    """Create every fixed label combination at start, so series exist (at zero) before
    their first event: dashboards and `rate()` see a flat line instead of a gap, and the
    number of series does not grow as traffic arrives."""
    for kind in ("last_used", "usage", "rate_limits"):
        FLUSH_DURATION.labels(kind)
        FLUSH_FAILURES.labels(kind)
        FLUSH_PENDING.labels(kind)
    for kind in ("connect", "timeout", "protocol", "tls"):
        UPSTREAM_ERRORS.labels(kind)
    for window in ("minute", "day"):
        RATE_LIMITED.labels(window)
    for scope in ("ip", "key"):
        FAILED_AUTH_THROTTLED.labels(scope)
    for event in ("created", "regenerated", "updated", "deleted"):
        KEY_LIFECYCLE.labels(event)
    for result in ("malformed", "unknown", "wrong_secret", "leaked"):
        SECRET_SCANNING_TOKENS.labels(result)
    for result in ("ok", "failed"):
        SECRET_SCANNING_KEY_FETCHES.labels(result)
    for result in ("succeeded", "retrying", "failed"):
        WEBHOOK_DELIVERIES.labels(result)


_precreate()
