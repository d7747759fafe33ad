"""Header hygiene for forwarding (SPEC §3 step 7) and the client address behind proxies.

Pure functions over header multidicts: no I/O, so every rule is easy to test.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, CIMultiDictProxy

from .records import KeyRecord

# RFC 9110 §7.6.1 plus the non-standard ones proxies still meet in the wild.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the gateway itself, or meaningful only on this hop.
_REPLACED_ON_REQUEST = frozenset(
    {
        "host",
        "content-length",
        "expect",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    }
)
# What a client may claim about itself or the hops before us. Passed on only from a peer
# in `proxy.trusted_proxies` (which set them); from anyone else they are dropped, and
# `X-Forwarded-For`, `-Proto` and `-Host` are always written by the gateway itself.
_CLIENT_CLAIMS = frozenset(
    {
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "x-originating-ip",
        "x-original-forwarded-for",
    }
)
# Ask the upstream to run another method than the request's, which the route table
# authorised (Express's method-override, Laravel, Symfony, ...): never passed on.
_METHOD_OVERRIDES = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
_FORWARDED_PREFIX = "x-forwarded-"
_DROP_FORWARDING_AUTHORIZATION = HOP_BY_HOP | _REPLACED_ON_REQUEST | _METHOD_OVERRIDES
_DROP = _DROP_FORWARDING_AUTHORIZATION | {"authorization"}
IDENTITY_PREFIX = "x-growpanel-"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# What the gateway calls itself in `Server`. aiohttp would otherwise announce its own and
# Python's exact versions on every answer that does not carry the upstream's.
SERVER_NAME = "GrowPanel-Gateway"


async def name_the_server(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare` of the admin app (runs once aiohttp has filled in its
    defaults): our name where aiohttp put its versions. The proxy names its responses
    itself (`copy_response_headers`, `errors.error_response`): a response signal costs
    ~1.5% of a proxied request's CPU."""
    if response.headers.get("Server") == SERVER_SOFTWARE:
        response.headers["Server"] = SERVER_NAME


def _connection_named(headers: CIMultiDictProxy[str] | list[tuple[str, str]]) -> set[str]:
    """Header names listed in `Connection`: hop-by-hop for this connection only."""
    if isinstance(headers, list):
        values = [v for k, v in headers if k.lower() == "connection"]
    else:
        values = headers.getall("Connection", [])
    named: set[str] = set()
    for value in values:
        named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return named


class TrustedProxies:
    """`proxy.trusted_proxies`: the networks whose `X-Forwarded-*` headers are believed.

    Hashed and compared by identity: it is part of the key of the address cache
    (`_address`) on every request, where a tuple of networks was hashed network by
    network in Python (about 0.5 µs a network, twice a verify)."""

    __slots__ = ("networks",)

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self.networks)


def parse_address(value: str) -> IPAddress | None:
    """An address as a header or a socket writes it (`[v6]:port` and `v4:port` too),
    or None."""
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    # An IPv4 client seen through an IPv6 socket (`::ffff:10.0.0.5`) is that IPv4
    # address, to the trusted proxies, the keys' allowlists and the throttle alike.
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return mapped or ip


@functools.lru_cache(maxsize=4096)
def _address(value: str, trusted: TrustedProxies) -> tuple[str | None, bool]:
    """An address as written (peer, or a hop of X-Forwarded-For): its canonical text, or
    None when it is not one, and whether it is a trusted proxy. A few peers and clients
    make most requests: parsing and testing them again each time was 12% of a verify."""
    ip = parse_address(value)
    return (None, False) if ip is None else (str(ip), ip in trusted)


class ClientAddress:
    """Who is calling, as far as the gateway can trust it.

    `X-Forwarded-For`, `-Proto` and `-Host` are believed only when the TCP peer is in
    `proxy.trusted_proxies`; the client is then the right-most address in the chain that
    is not itself a trusted proxy. Anything else a client writes there is ignored.
    """

    __slots__ = ("forwarded_for", "host", "ip", "peer_trusted", "proto")

    def __init__(
        self,
        peer: str | None,
        headers: CIMultiDictProxy[str],
        scheme: str,
        trusted: TrustedProxies,
    ) -> None:
        peer = peer or ""
        # With no trusted proxies (the default) the peer is the client: nothing to parse.
        self.peer_trusted = bool(trusted) and _address(peer, trusted)[1]
        chain: list[str] = []
        self.ip = peer
        self.proto = scheme
        self.host = headers.get("Host", "")
        if self.peer_trusted:
            for value in headers.getall("X-Forwarded-For", []):
                chain.extend(v.strip() for v in value.split(",") if v.strip())
            for hop in reversed(chain):
                address, hop_trusted = _address(hop, trusted)
                if address is None:
                    break
                self.ip = address
                if not hop_trusted:
                    break
            proto = headers.get("X-Forwarded-Proto", "").strip().lower()
            if proto in ("http", "https"):
                self.proto = proto
            self.host = headers.get("X-Forwarded-Host", self.host).strip()
        if peer:
            chain.append(peer)
        self.forwarded_for = ", ".join(chain)

    def incoming_request_id(self, headers: CIMultiDictProxy[str]) -> str | None:
        """A request id set by a trusted proxy in front of us, if well-formed."""
        if not self.peer_trusted:
            return None
        value = headers.get("X-Request-Id", "")
        return value if _REQUEST_ID.fullmatch(value) else None


def upstream_request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    client: ClientAddress,
    request_id: str,
    identity: Iterable[tuple[str, str]],
    forward_authorization: bool,
) -> list[tuple[str, str]]:
    """The headers to send upstream, as (name, value) pairs in the client's order.

    Host and the body framing (Content-Length / Transfer-Encoding) are the upstream
    client's to write; everything hop-by-hop or claiming an identity is dropped here, and
    so is what an untrusted client claims about its address (`_CLIENT_CLAIMS`). Names are
    judged with '_' read as '-': CGI-style upstreams (WSGI, Rack, PHP) read both the same,
    so `X_GrowPanel_Key_Id` would be `X-GrowPanel-Key-Id` to them.
    """
    drop = _DROP_FORWARDING_AUTHORIZATION if forward_authorization else _DROP
    if named := _connection_named(incoming):
        drop = drop | {name.replace("_", "-") for name in named}
    if client.peer_trusted:
        headers = [
            (name, value)
            for name, value in incoming.items()
            if (lower := name.lower().replace("_", "-")) not in drop
            and not lower.startswith(IDENTITY_PREFIX)
        ]
    else:
        drop = drop | _CLIENT_CLAIMS
        headers = [
            (name, value)
            for name, value in incoming.items()
            if (lower := name.lower().replace("_", "-")) not in drop
            and not lower.startswith(IDENTITY_PREFIX)
            and not lower.startswith(_FORWARDED_PREFIX)
        ]
    headers.extend(identity)
    headers.append(("X-Request-Id", request_id))
    if client.forwarded_for:
        headers.append(("X-Forwarded-For", client.forwarded_for))
    headers.append(("X-Forwarded-Proto", client.proto))
    if client.host:
        headers.append(("X-Forwarded-Host", client.host))
    return headers


def copy_response_headers(
    upstream: list[tuple[str, str]], target: CIMultiDict[str], *, skip_length: bool = False
) -> None:
    """The upstream's response headers, less hop-by-hop ones, onto our response, named
    `SERVER_NAME` unless the upstream named itself.

    `skip_length` leaves Content-Length to aiohttp when it sends a body it holds.
    """
    named = _connection_named(upstream)
    for name, value in upstream:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named:
            continue
        if skip_length and lower == "content-length":
            continue
        target.add(name, value)
    target.setdefault("Server", SERVER_NAME)


def identity_headers(key: KeyRecord) -> tuple[tuple[str, str], ...]:
    """Who is calling, for the upstream (SPEC §3 step 7)."""
    return (
        ("X-GrowPanel-Account-Id", key.account_id_text),
        ("X-GrowPanel-Key-Id", key.id_text),
        _permissions_header(key.permissions),
    )


@functools.lru_cache(maxsize=1024)
def _permissions_header(permissions: frozenset[str]) -> tuple[str, str]:
    # Made once per distinct set of permissions, and shared by every cached key that has it.
    return ("X-GrowPanel-Key-Permissions", ",".join(sorted(permissions)))
