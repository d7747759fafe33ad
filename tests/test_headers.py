"""Header hygiene when forwarding (SPEC §3 step 7) and who the client is behind proxies."""

from __future__ import annotations

import ipaddress
import uuid

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.headers import (
    ClientAddress,
    TrustedProxies,
    copy_response_headers,
    identity_headers,
    parse_address,
    upstream_request_headers,
)
from gateway.records import KeyRecord

ACCOUNT_ID = uuid.UUID("6f1c2a47-0b1e-4c57-9a43-4d1c9d6a0f3e")
KEY_ID = uuid.UUID("0b7c1f6e-2d3a-4c5b-9e8f-1a2b3c4d5e6f")


def record(permissions: set[str]) -> KeyRecord:
    return KeyRecord(
        id=KEY_ID,
        account_id=ACCOUNT_ID,
        public_id="p",
        secret_hash="h",
        previous_secret_hash=None,
        previous_secret_expires_at=None,
        permissions=frozenset(permissions),
        ip_allowlist=(),
        rate_limit_per_minute=None,
        rate_limit_per_day=None,
        expires_at=None,
        enabled=True,
    )


TRUSTED = TrustedProxies(["10.0.0.0/8", "2001:db8::/32"])
IDENTITY = identity_headers(record({"reports:read", "customers:read"}))
HOP_BY_HOP = [
    "Connection",
    "Keep-Alive",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
]


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def forward(
    incoming: CIMultiDictProxy[str],
    *,
    peer: str = "203.0.113.9",
    scheme: str = "http",
    trusted: TrustedProxies = TRUSTED,
    forward_authorization: bool = False,
) -> CIMultiDict[str]:
    client = ClientAddress(peer, incoming, scheme, trusted)
    return CIMultiDict(
        upstream_request_headers(
            incoming,
            client=client,
            request_id="req-123",
            identity=IDENTITY,
            forward_authorization=forward_authorization,
        )
    )


def downstream_response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    copy_response_headers(list(upstream.items()), out)
    return out


# -- hop-by-hop --------------------------------------------------------------------------


@pytest.mark.parametrize("name", HOP_BY_HOP)
def test_hop_by_hop_header_is_not_forwarded_upstream(name: str) -> None:
    """Headers that belong to one connection never reach the upstream."""
    out = forward(headers((name, "x"), ("Accept", "application/json")))
    assert name not in out
    assert out["Accept"] == "application/json"


@pytest.mark.parametrize("name", HOP_BY_HOP)
def test_hop_by_hop_header_is_not_returned_downstream(name: str) -> None:
    """The same headers from the upstream never reach the client."""
    out = downstream_response_headers(headers((name, "x"), ("Content-Type", "text/csv")))
    assert name not in out
    assert out["Content-Type"] == "text/csv"


@pytest.mark.parametrize(
    "connection",
    [
        ["X-Private, x-other"],
        ["x-private", "X-Other"],
        ["close,X-PRIVATE ,  x-other,"],
    ],
)
def test_headers_named_in_connection_are_dropped_both_ways(connection: list[str]) -> None:
    """Every header listed in `Connection` (any case, any number of them) is hop-by-hop."""
    pairs = [("Connection", value) for value in connection]
    pairs += [("X-Private", "1"), ("X-Other", "2"), ("X-Kept", "3")]
    for out in (forward(headers(*pairs)), downstream_response_headers(headers(*pairs))):
        assert "X-Private" not in out
        assert "X-Other" not in out
        assert "Connection" not in out
        assert out["X-Kept"] == "3"


def test_end_to_end_headers_pass_through_unchanged() -> None:
    """Ordinary headers, repeated ones included, are forwarded as they came."""
    incoming = headers(
        ("Accept", "application/json"),
        ("Content-Type", "application/json"),
        ("Content-Length", "12"),
        ("User-Agent", "sheets/1.0"),
        ("Cookie", "a=1"),
        ("X-Custom", "one"),
        ("X-Custom", "two"),
    )
    out = forward(incoming)
    for name in ("Accept", "Content-Type", "User-Agent", "Cookie"):
        assert out.getall(name) == incoming.getall(name)
    assert out.getall("X-Custom") == ["one", "two"]


def test_upstream_response_headers_pass_through_unchanged() -> None:
    """The upstream's own headers, repeated Set-Cookie included, reach the client (with
    the gateway's name, as this upstream gives none)."""
    upstream = headers(
        ("Content-Type", "application/json"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Cache-Control", "no-store"),
        ("X-GrowPanel-Upstream", "kept"),
    )
    expected = CIMultiDict([*upstream.items(), ("Server", "GrowPanel-Gateway")])
    assert downstream_response_headers(upstream) == expected


@pytest.mark.parametrize("name", ["Host", "Expect", "Forwarded", "Content-Length"])
def test_headers_meaningful_only_on_this_hop_are_not_forwarded(name: str) -> None:
    """Host, Expect, Forwarded and the body framing are the gateway's to set upstream."""
    out = forward(headers((name, "value"), ("Accept", "*/*")))
    assert name not in out


# -- credentials and identity -----------------------------------------------------------


@pytest.mark.parametrize(
    ("forward_authorization", "forwarded"),
    [(False, False), (True, True)],
)
def test_authorization_is_dropped_unless_configured(
    forward_authorization: bool, forwarded: bool
) -> None:
    """The API key leaves the gateway only with `proxy.forward_authorization: true`."""
    incoming = headers(("Authorization", "Bearer gp_secret"), ("Accept", "*/*"))
    out = forward(incoming, forward_authorization=forward_authorization)
    assert ("Authorization" in out) is forwarded
    if forwarded:
        assert out.getall("Authorization") == ["Bearer gp_secret"]


def test_proxy_authorization_is_dropped_even_when_authorization_is_forwarded() -> None:
    """Proxy credentials are hop-by-hop whatever the setting."""
    out = forward(headers(("Proxy-Authorization", "Basic x")), forward_authorization=True)
    assert "Proxy-Authorization" not in out


@pytest.mark.parametrize(
    "name",
    [
        "X-GrowPanel-Account-Id",
        "x-growpanel-account-id",
        "X-GROWPANEL-KEY-ID",
        "X-Growpanel-Key-Permissions",
        "X-GrowPanel-Key-Scopes",
        "X-GrowPanel-Admin",
        "x-growpanel-",
    ],
)
def test_incoming_growpanel_headers_are_replaced_by_the_identity(name: str) -> None:
    """A client cannot forge identity: every `X-GrowPanel-*` it sends is removed."""
    out = forward(headers((name, "forged"), (name, "forged again")))
    assert "forged" not in out.values()
    assert "forged again" not in out.values()
    assert out.getall("X-GrowPanel-Account-Id") == [str(ACCOUNT_ID)]
    assert out.getall("X-GrowPanel-Key-Id") == [str(KEY_ID)]
    assert out.getall("X-GrowPanel-Key-Permissions") == ["customers:read,reports:read"]
    growpanel = [k for k in out if k.lower().startswith("x-growpanel-")]
    assert sorted(growpanel) == sorted(name for name, _ in IDENTITY)


@pytest.mark.parametrize("trusted", [False, True])
def test_names_spelled_with_underscores_are_judged_as_with_dashes(trusted: bool) -> None:
    """CGI-style upstreams (WSGI, Rack, PHP) read `X_GrowPanel_Key_Id` as
    `X-GrowPanel-Key-Id`: the identity, the client's claims and what `Connection` names
    are dropped in either spelling."""
    incoming = headers(
        ("X_GrowPanel_Account_Id", "forged"),
        ("x_growpanel_key_permissions", "forged"),
        ("X_Forwarded_For", "forged"),
        ("X_Real_IP", "forged"),
        ("Transfer_Encoding", "forged"),
        ("Connection", "X_Hop"),
        ("X-Hop", "forged"),
        ("X_Kept", "kept"),
    )
    peer = "10.0.0.1" if trusted else "192.0.2.1"
    out = forward(incoming, peer=peer)
    forged = [k for k, v in out.items() if v == "forged"]
    # From a trusted proxy its claims pass (X-Forwarded-For is always the gateway's own).
    assert forged == (["X_Real_IP"] if trusted else [])
    assert out.getall("X_Kept") == ["kept"]
    assert out.getall("X-GrowPanel-Account-Id") == [str(ACCOUNT_ID)]


@pytest.mark.parametrize(
    "name", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X_HTTP_Method"]
)
def test_method_overrides_are_not_forwarded(name: str) -> None:
    """The route table authorised the request's own method: an upstream that honours an
    override header would run another one (a GET that reads, run as a DELETE)."""
    for forward_authorization in (False, True):
        out = forward(headers((name, "DELETE")), forward_authorization=forward_authorization)
        assert "DELETE" not in out.values()


def test_identity_headers_list_permissions_sorted() -> None:
    """The identity names the account, the key and its permissions in a stable order."""
    assert identity_headers(record({"data:write", "account:read", "reports:read"})) == (
        ("X-GrowPanel-Account-Id", str(ACCOUNT_ID)),
        ("X-GrowPanel-Key-Id", str(KEY_ID)),
        ("X-GrowPanel-Key-Permissions", "account:read,data:write,reports:read"),
    )


# -- the client address ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "xff", "client_ip", "forwarded_for"),
    [
        # Untrusted peer: whatever it wrote is ignored; the peer is the client.
        ("203.0.113.9", [], "203.0.113.9", "203.0.113.9"),
        ("203.0.113.9", ["1.2.3.4"], "203.0.113.9", "203.0.113.9"),
        ("203.0.113.9", ["10.0.0.1, 1.2.3.4"], "203.0.113.9", "203.0.113.9"),
        ("2001:db9::5", ["1.2.3.4"], "2001:db9::5", "2001:db9::5"),
        # Trusted peer: its chain is kept and the peer appended.
        ("10.0.0.1", [], "10.0.0.1", "10.0.0.1"),
        ("10.0.0.1", ["198.51.100.7"], "198.51.100.7", "198.51.100.7, 10.0.0.1"),
        (
            "10.0.0.1",
            ["1.1.1.1, 198.51.100.7, 10.0.0.2"],
            "198.51.100.7",
            "1.1.1.1, 198.51.100.7, 10.0.0.2, 10.0.0.1",
        ),
        (
            "10.0.0.1",
            ["1.1.1.1", "198.51.100.7"],
            "198.51.100.7",
            "1.1.1.1, 198.51.100.7, 10.0.0.1",
        ),
        ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], "10.0.0.3", "10.0.0.3, 10.0.0.2, 10.0.0.1"),
        ("10.0.0.1", ["198.51.100.7:4711"], "198.51.100.7", "198.51.100.7:4711, 10.0.0.1"),
        ("2001:db8::1", ["[2001:db9::7]:443"], "2001:db9::7", "[2001:db9::7]:443, 2001:db8::1"),
        ("2001:db8::1", ["2001:db9::7"], "2001:db9::7", "2001:db9::7, 2001:db8::1"),
    ],
)
def test_client_ip_is_the_right_most_untrusted_hop(
    peer: str, xff: list[str], client_ip: str, forwarded_for: str
) -> None:
    """X-Forwarded-For is believed only from trusted peers; the client is the last untrusted hop."""
    incoming = headers(*[("X-Forwarded-For", value) for value in xff])
    client = ClientAddress(peer, incoming, "http", TRUSTED)
    assert client.ip == client_ip
    assert client.forwarded_for == forwarded_for
    out = forward(incoming, peer=peer)
    assert out.getall("X-Forwarded-For") == [forwarded_for]


def test_no_trusted_proxies_means_the_peer_is_always_the_client() -> None:
    """With `proxy.trusted_proxies` empty, no forwarded header is ever believed."""
    incoming = headers(("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https"))
    client = ClientAddress("10.0.0.1", incoming, "http", TrustedProxies())
    assert (client.ip, client.forwarded_for, client.proto) == ("10.0.0.1", "10.0.0.1", "http")
    assert not client.peer_trusted


def test_an_ipv4_mapped_address_is_its_ipv4_address() -> None:
    """`::ffff:10.0.0.5` (a dual-stack socket's IPv4 peer, or a hop a proxy wrote so) is
    10.0.0.5: to the trusted proxies, and to the keys' IPv4 allowlists."""
    incoming = headers(("X-Forwarded-For", "::ffff:198.51.100.7"))
    client = ClientAddress("::ffff:10.0.0.5", incoming, "http", TRUSTED)
    assert client.peer_trusted
    assert client.ip == "198.51.100.7"
    assert parse_address("::ffff:192.0.2.1") == ipaddress.IPv4Address("192.0.2.1")


@pytest.mark.parametrize(
    ("peer", "forwarded_proto", "forwarded_host", "proto", "host"),
    [
        ("203.0.113.9", "https", "evil.example", "http", "api.example.com"),
        ("10.0.0.1", "https", "public.example.com", "https", "public.example.com"),
        ("10.0.0.1", "HTTPS", None, "https", "api.example.com"),
        ("10.0.0.1", "javascript", None, "http", "api.example.com"),
        ("10.0.0.1", None, None, "http", "api.example.com"),
    ],
)
def test_forwarded_proto_and_host_are_believed_only_from_trusted_peers(
    peer: str, forwarded_proto: str | None, forwarded_host: str | None, proto: str, host: str
) -> None:
    """X-Forwarded-Proto / -Host come from a trusted proxy, else from this connection."""
    pairs = [("Host", "api.example.com")]
    if forwarded_proto is not None:
        pairs.append(("X-Forwarded-Proto", forwarded_proto))
    if forwarded_host is not None:
        pairs.append(("X-Forwarded-Host", forwarded_host))
    incoming = headers(*pairs)
    client = ClientAddress(peer, incoming, "http", TRUSTED)
    assert (client.proto, client.host) == (proto, host)
    out = forward(incoming, peer=peer)
    assert out.getall("X-Forwarded-Proto") == [proto]
    assert out.getall("X-Forwarded-Host") == [host]
    assert "Host" not in out


# -- request ids --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "value", "honoured"),
    [
        ("10.0.0.1", "abc-123", True),
        ("10.0.0.1", "4bf92f3577b34da6a3ce929d0e0e4736", True),
        ("10.0.0.1", "lb:1.2_3-4", True),
        ("10.0.0.1", "a" * 128, True),
        ("10.0.0.1", "a" * 129, False),
        ("10.0.0.1", "", False),
        ("10.0.0.1", "has space", False),
        ("10.0.0.1", "abc\n", False),
        ("10.0.0.1", "abc\r\nX-Evil: 1", False),
        ("10.0.0.1", "<script>", False),
        ("10.0.0.1", "ünïcode", False),
        ("203.0.113.9", "abc-123", False),
    ],
)
def test_incoming_request_id_is_honoured_only_from_trusted_peers_when_well_formed(
    peer: str, value: str, honoured: bool
) -> None:
    """A proxy in front of us may set the request id; a client may not, and junk is ignored."""
    incoming = headers(("X-Request-Id", value))
    client = ClientAddress(peer, incoming, "http", TRUSTED)
    assert client.incoming_request_id(incoming) == (value if honoured else None)


def test_request_id_sent_upstream_is_the_gateways() -> None:
    """The upstream gets exactly one X-Request-Id: the one the gateway chose."""
    out = forward(headers(("X-Request-Id", "client-chosen"), ("x-request-id", "again")))
    assert out.getall("X-Request-Id") == ["req-123"]
