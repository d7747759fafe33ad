"""Webhooks: the transactional outbox, Standard Webhooks signatures and outbound safety.

`emit()` runs inside the transaction of the change it describes: it writes the event and
one pending delivery per subscribed, enabled endpoint of the account, and a `NOTIFY` that
wakes the deliverers at commit (`deliverer.py`). A change that rolls back leaves no
event; an event committed is delivered at least once, whatever happens to the process.

Bodies follow the Standard Webhooks specification: `{"type", "timestamp", "data"}`,
signed per attempt over `{webhook-id}.{webhook-timestamp}.{body}` with HMAC-SHA256 and the
endpoint's secret (`whsec_` + base64). No payload carries a full key or a secret: key
events describe the key by id, name and partial key.

Targets: http(s) URLs only, no credentials in them; unless
`webhooks.allow_private_targets`, every address a host resolves to must be a public one
(no loopback, private, link-local — cloud metadata lives there — CGNAT, multicast or
reserved ranges, nor an IPv6 address that leads to one of those: NAT64, 6to4, SIIT),
checked when the URL is saved and again at every connection (so a DNS answer that
changes in between cannot point a delivery inward).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import errno
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import socket
import uuid
from typing import Any

import aiohttp
import asyncpg
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from .records import KeyInfo

CHANNEL = "gateway_webhooks"
SECRET_PREFIX = "whsec_"  # noqa: S105 - the secrets' prefix, not a secret
URL_MAX = 2048

KEY_EVENTS = (
    "key.created",
    "key.updated",
    "key.regenerated",
    "key.deleted",
    "key.leaked",
    "key.expiring",
    "key.rotation_due",
    "key.limit_reached",
)
MEMBER_EVENTS = ("member.added", "member.removed", "member.role_changed")
EVENTS = (*KEY_EVENTS, *MEMBER_EVENTS)


def rfc3339(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def key_data(info: KeyInfo) -> dict[str, Any]:
    """A key as events describe it: identifies it, never usable."""
    return {
        "id": str(info.id),
        "name": info.name,
        "partial_key": info.partial_key,
        "enabled": info.enabled,
        "expires_at": rfc3339(info.expires_at),
        "secret_created_at": rfc3339(info.secret_created_at),
        "leaked_at": rfc3339(info.leaked_at),
        "leak_url": info.leak_url,
    }


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of `{msg_id}.{timestamp}.{body}` (Standard Webhooks)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


_EMIT = """
WITH targets AS (
    SELECT id FROM webhook_endpoints
     WHERE account_id = $1 AND enabled AND $2 = ANY (events)
), event AS (
    INSERT INTO webhook_events (msg_id, account_id, type, subject, payload)
    SELECT $5, $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM targets)
    RETURNING id
), queued AS (
    INSERT INTO webhook_deliveries (endpoint_id, event_id, subject)
    SELECT targets.id, event.id, $3 FROM targets, event
    RETURNING 1
)
SELECT count(*) FROM queued
"""


async def emit(
    conn: asyncpg.Connection,
    account_id: uuid.UUID,
    event_type: str,
    subject: str,
    data: dict[str, Any],
) -> int:
    """Queue one event for the account's endpoints subscribed to it; returns how many.

    Call it inside the transaction of the change: both commit, or neither. `subject`
    (e.g. `key:<id>`) orders deliveries: one endpoint receives a subject's events in the
    order they were emitted.
    """
    assert event_type in EVENTS, event_type
    body = json.dumps(
        {"type": event_type, "timestamp": rfc3339(dt.datetime.now(dt.UTC)), "data": data},
        separators=(",", ":"),
    )
    msg_id = "msg_" + uuid.uuid4().hex
    queued: int = await conn.fetchval(_EMIT, account_id, event_type, subject, body, msg_id)
    if queued:
        await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
    return queued


# -- outbound safety --------------------------------------------------------------------


class UnsafeTarget(Exception):
    """A webhook URL that may not be called; the message says why."""


# IPv6 ranges whose last 32 bits are an IPv4 address that a tunnel or translator on the
# way may deliver to (Python 3.11's `is_global` looks only at the IPv6 address).
_IPV4_IN_LOW_BITS = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/96",  # IPv4-compatible (deprecated); `::` and `::1` too, both refused anyway
        "::ffff:0:0:0/96",  # SIIT, IPv4-translated
        "64:ff9b::/96",  # NAT64, the well-known prefix
    )
)
# Refused outright: local-use NAT64 puts the IPv4 address where the network's own prefix
# length says, so it cannot be read out; site-local is deprecated but still routed inward.
_NEVER_PUBLIC = tuple(ipaddress.IPv6Network(net) for net in ("64:ff9b:1::/48", "fec0::/10"))


def public_address(address: str) -> bool:
    """Whether a connection to `address` stays on the public internet: an IPv6 address that
    carries an IPv4 one (mapped, NAT64, 6to4, ...) is judged by that IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _NEVER_PUBLIC):
            return False
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is None and any(ip in net for net in _IPV4_IN_LOW_BITS):
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
        if inner is not None:
            ip = inner
    return ip.is_global and not ip.is_multicast


# RFC 3986's characters, percent-escapes well formed: IDN hosts go in punycode.
_URI = re.compile(r"^(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+$")


def check_url(url: str) -> URL:
    """The URL's shape: http(s), a host, no user info, no fragment."""
    if len(url) > URL_MAX:
        raise UnsafeTarget(f"at most {URL_MAX} characters")
    if not _URI.match(url):
        raise UnsafeTarget(
            "must be a URI: ASCII only (IDN hosts in punycode, other characters"
            " percent-encoded), no spaces"
        )
    try:
        parsed = URL(url)
    except ValueError:
        raise UnsafeTarget("not a URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host or not parsed.is_absolute():
        raise UnsafeTarget("must be an http:// or https:// URL with a host")
    if parsed.user is not None or parsed.password is not None:
        raise UnsafeTarget("must not carry credentials")
    if parsed.fragment:
        raise UnsafeTarget("must not carry a fragment")
    return parsed


async def check_target(url: str, allow_private: bool, timeout: float = 3.0) -> None:
    """Refuse a URL that is malformed or (unless allowed) reaches a non-public address."""
    parsed = check_url(url)
    if allow_private:
        return
    host = parsed.raw_host or ""
    try:
        ipaddress.ip_address(host.strip("[]"))
        addresses = [host.strip("[]")]
    except ValueError:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, parsed.port, type=socket.SOCK_STREAM), timeout
            )
        except (OSError, TimeoutError, UnicodeError):
            raise UnsafeTarget(f"the host {host!r} cannot be resolved") from None
        addresses = [str(info[4][0]) for info in infos]
    if not addresses or not all(public_address(a) for a in addresses):
        raise UnsafeTarget(
            "resolves to a loopback, private, link-local or otherwise non-public address"
            " (webhooks.allow_private_targets allows those)"
        )


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp's resolver, then refuses any non-public answer: checked at
    connection time, so a DNS answer that changed since the URL was saved is caught."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not results or not all(public_address(r["host"]) for r in results):
            # With an errno, aiohttp's connection error quotes the reason (the delivery log).
            raise OSError(errno.EACCES, f"{host} resolves to a non-public address")
        return results

    async def close(self) -> None:
        await self._inner.close()
