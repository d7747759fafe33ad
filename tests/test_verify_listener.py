"""The verify listener (`proxy.verify_port`, gateway/verify_listener.py): `/_gateway/verify`
over llhttp on a port of its own, carrying the public listener's decision.

Two layers, every request sent as raw bytes over a real socket and every answer read with
a parser independent of both servers (`http.client`, on a blocking socket in a thread:
the servers run on the test's event loop):

- a differential property (hypothesis): the same hostile but meaningful verify requests
  (trusted and untrusted peers, nginx / Caddy / Envoy conventions, odd values, every kind
  of key, request ids, forwarded-for chains, bodies) to the public aiohttp listener and to
  the verify listener get the same status, body and headers, up to what may differ
  (stated where it is normalised);
- the listener's own HTTP/1.1 rules (its module docstring), one test each: pipelining,
  requests announcing a body, bounds, upgrades, HEAD, 404 outside the endpoint,
  keep-alive, and closing with answers under way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import io
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from gateway.config import Argon2Config
from gateway.ingress import Verdict
from gateway.keyformat import Hasher
from gateway.keys import KeyStore
from gateway.records import NewKey
from gateway.verify_listener import MAX_UNFINISHED, VerifyListener, _Request, _serialise

from .conftest import GatewayFactory, Seed, VerifyListenerFactory
from .helpers import DEFAULT_ROUTE_DATA, make_config, sample, wait_for

TRUSTED = "127.0.0.1"
UNTRUSTED = "127.0.0.2"  # on the loopback too (127.0.0.0/8), outside trusted_proxies
TIMEOUT = 5.0  # every socket read: a server that neither answers nor closes fails the test
JSON = "application/json; charset=utf-8"
SERVER = "GrowPanel-Gateway"
GENERATED_ID = re.compile(r"[0-9a-f]{24}")  # errors.new_request_id


# -- a raw client ------------------------------------------------------------------------


@dataclasses.dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = json.loads(self.body)["error"]
        return error


class _Reader(io.BufferedReader):
    """The one buffered reader of a connection, handed to each `http.client.HTTPResponse`
    in turn as its socket (it asks for `makefile`), so that pipelined answers are read one
    after another and none swallows the next one's bytes. `HTTPResponse` closes its file
    once an answer is read: here that is a no-op."""

    def makefile(self, *args: Any, **kwargs: Any) -> _Reader:
        return self

    def close(self) -> None:
        pass


class Conn:
    """One client connection; its blocking calls run in a thread (`asyncio.to_thread`)."""

    def __init__(self, port: int, source: str = TRUSTED) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0)
        )
        self.reader = _Reader(socket.SocketIO(self.sock, "rb"))

    def send_sync(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer_sync(self, method: str = "GET") -> Answer:
        response = http.client.HTTPResponse(self.reader, method=method)  # type: ignore[arg-type]
        response.begin()
        return Answer(response.status, response.getheaders(), response.read())

    def rest_sync(self) -> bytes:
        """Every byte until the server closes (a `TimeoutError` after `TIMEOUT` s if it
        does not)."""
        data = b""
        while chunk := self.reader.read1(65536):
            data += chunk
        return data

    async def send(self, data: bytes) -> None:
        await asyncio.to_thread(self.send_sync, data)

    async def answer(self, method: str = "GET") -> Answer:
        return await asyncio.to_thread(self.answer_sync, method)

    async def rest(self) -> bytes:
        return await asyncio.to_thread(self.rest_sync)

    def close(self) -> None:
        self.sock.close()


Connect = Callable[..., Awaitable[Conn]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """`conn = await connect(port, source=...)`; closed after the test."""
    conns: list[Conn] = []

    async def open_(port: int, source: str = TRUSTED) -> Conn:
        conn = await asyncio.to_thread(Conn, port, source)
        conns.append(conn)
        return conn

    yield open_
    for conn in conns:
        conn.close()


def exchange(port: int, data: bytes, source: str, method: str) -> Answer:
    """One request on a new connection, its answer (blocking: run it in a thread)."""
    conn = Conn(port, source)
    try:
        conn.send_sync(data)
        return conn.answer_sync(method)
    finally:
        conn.close()


def assert_refusal(answer: Answer, status: int, code: str) -> None:
    """A refusal of the verify listener: its status and code, the gateway's JSON, its name,
    and an `X-Request-Id` that is the body's."""
    assert answer.status == status, (answer.status, answer.body)
    assert answer.get("Content-Type") == JSON
    assert answer.get("Server") == SERVER
    error = answer.error()
    assert error["code"] == code
    assert answer.all("X-Request-Id") == [error["request_id"]]


# -- the gateway under test --------------------------------------------------------------

UNLIMITED: dict[str, Any] = {"rate_limit_per_minute": 1_000_000, "rate_limit_per_day": 10_000_000}


@dataclasses.dataclass
class Rig:
    public: TestServer
    public_port: int
    listener: VerifyListener
    tokens: dict[str, str]  # valid, allowlisted, wrong: the keys the requests name

    def request(self, template: bytes) -> bytes:
        """`template` with {valid}, {allowlisted} and {wrong} replaced by the keys."""
        for name, token in self.tokens.items():
            template = template.replace(b"{%s}" % name.encode(), token.encode())
        return template


@pytest.fixture
async def rig(
    start_gateway: GatewayFactory,
    start_verify_listener: VerifyListenerFactory,
    seed: Seed,
    database_url: str,
    upstream: TestServer,
) -> Rig:
    """A gateway that trusts 127.0.0.1 as its ingress, with failed-authentication budgets
    no test reaches (so that no answer depends on the order of the requests), its verify
    listener, and keys whose limits no test reaches either."""
    config = make_config(
        database_url,
        str(upstream.make_url("")).rstrip("/"),
        proxy={"trusted_proxies": [f"{TRUSTED}/32"]},
        routes=DEFAULT_ROUTE_DATA,
        rate_limits={"failed_auth": {"per_ip_per_minute": 100_000, "per_key_per_minute": 100_000}},
    )
    public = await start_gateway(config=config)
    listener = await start_verify_listener(public, keepalive_timeout=30)
    account = await seed.account()
    valid = await seed.key(account, permissions=["customers:read"], **UNLIMITED)
    allowlisted = await seed.key(
        account, permissions=["customers:read"], ip_allowlist=["10.0.0.0/8"], **UNLIMITED
    )
    public_id = valid.key[len(seed.store.format.prefix) :][:12]
    wrong, _ = seed.store.format.generate(public_id)  # the valid key's id, another secret
    tokens = {"valid": valid.key, "allowlisted": allowlisted.key, "wrong": wrong}
    assert public.port is not None
    return Rig(public, public.port, listener, tokens)


# -- 1. the same answers as the public listener ------------------------------------------

PATH = "/_gateway/verify"
# Visible ASCII: what both parsers take in a target (llhttp refuses the rest, on both
# listeners), "#" included (a fragment: see
# test_a_fragment_in_the_target_is_judged_as_on_the_public_listener).
VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))
PIECES = [
    "v1", "V1", "customers", "Customers", "reports", "mrr", "account", "cus_1", ".", "..",
    "%2e%2e", "%2F", "%2f", "%252f", "%20", "%00", "%C3%A9", "%ZZ", "%", ";x=1", "\\", "",
    "~", ".json", "*", "@", ":", "?", "&", "=", "+", "'",
]  # fmt: skip
# Most original paths are real ones, so that most answers turn on the key, the peer and
# the conventions; the rest are hostile.
real_paths = st.sampled_from(
    ["/v1/customers", "/v1/customers/cus_1", "/V1/Customers.json", "/v1/reports/mrr",
     "/v1/account", "/v1/customers/"]
)  # fmt: skip
hostile_paths = st.one_of(
    st.lists(st.sampled_from(PIECES) | st.text(VISIBLE, max_size=4), max_size=6).map(
        lambda parts: "/" + "/".join(parts)
    ),
    st.integers(1000, 7000).map(lambda n: "/v1/customers/" + "c" * n),  # long, within bounds
)
original_paths = st.one_of(real_paths, real_paths, hostile_paths)


@st.composite
def targets(draw: st.DrawFn, envoy: bool) -> str:
    """`/_gateway/verify` or, Envoy's way (mostly when no header names the original
    request), `/_gateway/verify/<original path>`, with or without a query. Only targets
    the public listener routes to its verify route: with the prefix spelt out (its router
    matches on the decoded path, the verify listener on the raw one) and in origin form."""
    target = PATH
    if draw(st.integers(0, 9)) < (9 if envoy else 2):
        target += draw(original_paths)
    if draw(st.booleans()):
        target += "?" + draw(st.text(VISIBLE, max_size=12))
    return target


# What llhttp takes in a field value (HTAB, SP, VCHAR, obs-text): other controls are a
# 400 from both parsers. Whitespace around values is added apart (`LEADING_OWS`).
FIELD_BYTES = [0x09, *range(0x20, 0x7F), *range(0x80, 0x100)]
field_values = st.lists(st.sampled_from(FIELD_BYTES), max_size=16).map(bytes)
LEADING_OWS = [b"", b"", b" ", b"\t", b" \t "]
# Trailing whitespace is not part of a value on either listener (see
# test_a_request_id_with_trailing_whitespace_is_echoed_as_on_the_public_listener).
TRAILING_OWS = [b"", b"", b" ", b"\t", b" \t "]


uris = st.one_of(
    original_paths.map(str.encode),
    real_paths.map(str.encode),
    real_paths.map(str.encode),
    st.sampled_from(
        [
            b"/v1/cus tomers",
            b"/v1/customers\t?x=1",
            b"/v1/caf\xc3\xa9",
            b"/v1/\xff",
            b"http://elsewhere/v1/customers",
            b"v1/customers",
            b"",
            b"/v1/customers#top",
            b"  /v1/customers",
            b"/v1/reports/mrr?x=/v1/customers",
            b"/v1/../v1/customers",
            b"/v1/customers%2F..%2Faccount",
            b"/" + b"x" * 8000,
        ]
    ),
    field_values,
)
methods_named = st.one_of(
    st.sampled_from([b"GET", b"HEAD"]),
    st.sampled_from([b"GET", b"HEAD"]),
    st.sampled_from(
        [
            b"GET",
            b"HEAD",
            b"POST",
            b"DELETE",
            b"get",
            b"G T",
            b"",
            b"GET,POST",
            b"A" * 33,
            b"PROPFIND",
            b"caf\xc3\xa9",
            b"  GET",
        ]
    ),
    field_values,
)
AUTHORIZATIONS = [
    b"Bearer {valid}", b"bearer {valid}", b"BEARER {valid}", b"Bearer   {valid}",
    b"Bearer {allowlisted}", b"Bearer {wrong}", b"Bearer gp_notakey", b"{valid}",
    b"Basic dXNlcjpwYXNz", b"Bearer", b"", b"Bearer {valid}x", b"Token {valid}",
]  # fmt: skip
REQUEST_IDS = [b"trace-1.2:3_ok", b"r" * 128, b"r" * 129, b"bad id", b"caf\xc3\xa9", b""]
FORWARDED_FOR = [
    b"10.1.2.3", b"10.1.2.3, 127.0.0.1", b"192.168.7.7, 10.0.0.9", b"garbage, 10.0.0.1",
    b"[2001:db8::1]:443", b"10.0.0.1:8080", b"127.0.0.1", b"", b"10.0.0.1,,192.168.1.1",
]  # fmt: skip
# Headers a request may carry once (as aiohttp's strict parser has them).
_SINGLETONS = [
    b"content-length", b"content-location", b"content-range", b"content-type", b"etag",
    b"host", b"max-forwards", b"server", b"transfer-encoding", b"user-agent",
]  # fmt: skip
# The requests' framing: kept alive or not, and bodies the verify listener never reads.
FRAMING_HEADERS = {b"Transfer-Encoding", b"Content-Length", b"Connection", b"Upgrade"}
FRAMINGS = ["none", "close", "keep-alive", "content-length-0", "body", "chunked", "upgrade"]
HTTP10_FRAMINGS = ["none", "close", "keep-alive", "content-length-0", "body"]


@dataclasses.dataclass
class VerifyRequest:
    source: str
    method: str
    target: str
    version: str
    framing: str
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def template(self) -> bytes:
        """The request, its keys still named ({valid}, ...): what a failure shows."""
        head = f"{self.method} {self.target} {self.version}\r\n".encode()
        for name, value in self.headers:
            head += name + b": " + value + b"\r\n"
        return head + b"\r\n" + self.body

    def request_id(self) -> str | None:
        for name, value in self.headers:
            if name.lower() == b"x-request-id":  # without its whitespace (RFC 9110 §5.5)
                return value.strip(b" \t").decode("utf-8", "surrogateescape")
        return None

    def closes(self) -> bool:
        """Whether the verify listener closes after answering (its docstring's rules)."""
        if self.framing in ("close", "body", "chunked", "upgrade") or self.unreadable():
            return True
        return self.version == "HTTP/1.0" and self.framing != "keep-alive"

    def unreadable(self) -> bool:
        """Refused by the parser on both listeners: an HTTP/1.1 request without `Host`, or
        two of a singleton header (RFC 9110 §5.3, RFC 9112 §3.2)."""
        names = [name.lower() for name, _ in self.headers]
        if self.version == "HTTP/1.1" and b"host" not in names:
            return True
        return any(names.count(name) > 1 for name in _SINGLETONS)


@st.composite
def verify_requests(draw: st.DrawFn) -> VerifyRequest:
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
    framing = draw(st.sampled_from(FRAMINGS if version == "HTTP/1.1" else HTTP10_FRAMINGS))
    headers: list[tuple[bytes, bytes]] = []
    # Mostly one Host; sometimes none or two (a 400 on both listeners for HTTP/1.1, RFC
    # 9112 §3.2; two of any singleton header is a 400 on both, whatever the version).
    hosts = draw(st.sampled_from([1, 1, 1, 1, 1, 1, 0, 2]))
    headers += [(b"Host", b"gateway.internal")] * hosts
    if draw(st.integers(0, 9)) == 0:
        singleton = draw(st.sampled_from([b"User-Agent", b"Content-Type", b"Max-Forwards"]))
        headers += [(singleton, b"x")] * draw(st.integers(1, 2))
    convention = draw(st.sampled_from(["envoy", "envoy", "nginx", "nginx", "caddy", "both", "any"]))
    for names, used in [
        ((b"X-Original-Method", b"X-Original-URI"), ("nginx", "both")),
        ((b"X-Forwarded-Method", b"X-Forwarded-Uri"), ("caddy", "both")),
    ]:
        if convention in used:
            counts = (1, 1)
        elif convention == "any":  # one of a pair, both doubled, ...
            counts = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        else:
            counts = (0, 0)
        headers += [(names[0], draw(methods_named)) for _ in range(counts[0])]
        headers += [(names[1], draw(uris)) for _ in range(counts[1])]
    authorizations = st.sampled_from([[b"Bearer {valid}"], [b"Bearer {allowlisted}"]]) | st.lists(
        st.sampled_from(AUTHORIZATIONS), max_size=2
    )
    for authorization in draw(authorizations):
        headers.append((b"Authorization", authorization))
    for request_id in draw(st.lists(st.sampled_from(REQUEST_IDS) | field_values, max_size=2)):
        headers.append((b"X-Request-Id", request_id))
    for forwarded in draw(st.lists(st.sampled_from(FORWARDED_FOR), max_size=2)):
        headers.append((b"X-Forwarded-For", forwarded))
    body = b""
    if framing == "close":
        headers.append((b"Connection", b"close"))
    elif framing == "keep-alive":
        headers.append((b"Connection", b"keep-alive"))
    elif framing == "content-length-0":
        headers.append((b"Content-Length", b"0"))
    elif framing == "body":
        body = draw(st.binary(min_size=1, max_size=64))
        headers.append((b"Content-Length", str(len(body)).encode()))
    elif framing == "chunked":
        data = draw(st.binary(min_size=1, max_size=64))
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
        headers.append((b"Transfer-Encoding", b"chunked"))
    elif framing == "upgrade":
        headers += [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]
    # Trailing whitespace on the framing headers is left out: aiohttp's parser refuses
    # `Transfer-Encoding: chunked<TAB>`, llhttp reads it as chunked, and the verify
    # listener, which never reads a body, answers and closes (either way nothing desyncs).
    ows = st.sampled_from(LEADING_OWS), st.sampled_from(TRAILING_OWS)
    headers = [
        (name, draw(ows[0]) + value + (b"" if name in FRAMING_HEADERS else draw(ows[1])))
        for name, value in headers
    ]
    return VerifyRequest(
        source=draw(st.sampled_from([TRUSTED, TRUSTED, TRUSTED, UNTRUSTED])),
        method=draw(st.sampled_from(["GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"])),
        target=draw(targets(envoy=convention == "envoy")),
        version=version,
        framing=framing,
        headers=draw(st.permutations(headers)),
        body=body,
    )


def normalised(answer: Answer, request_id: str | None, head: bool) -> tuple[Any, ...]:
    """What must be the same on both listeners: the status, the body without its
    request_id, and the headers in order, less what legitimately differs."""
    body: Any = None
    body_id = None
    if answer.body:
        body = json.loads(answer.body)
        body_id = body["error"].pop("request_id")
    headers: list[tuple[str, str]] = []
    for name, value in answer.headers:
        lower = name.lower()
        if lower == "date":
            continue  # the clock's second may turn between the two requests
        if lower == "connection":
            # Each listener's own connection management (the verify listener closes after
            # any request announcing a body, HTTP/1.0 or an upgrade, and says so; aiohttp
            # reads bodies and keeps the connection): the verify side is checked apart.
            continue
        if lower == "x-request-id":
            # Each listener makes its own random id, unless it echoes the one a trusted
            # ingress sent: compared is which of the two it did, not the random value.
            if body_id is not None:
                assert value == body_id
            if value != request_id:
                assert GENERATED_ID.fullmatch(value), value
            value = "<echoed>" if value == request_id else "<generated>"
        elif lower in ("x-ratelimit-remaining", "x-ratelimit-reset"):
            # The second request is counted after the first (one fewer left), and the
            # seconds to a reset may tick between them.
            assert value.isdigit(), value
            value = "<n>"
        elif lower == "ratelimit":
            # The same, as the structured field's r= (left) and t= (seconds) members.
            value = re.sub(r"=\d+", "=<n>", value)
        elif lower == "x-growpanel-refusal-body":
            # The body for nginx: the same JSON, with the same (random) request_id.
            refusal = json.loads(value)
            assert refusal["error"].pop("request_id") == answer.get("X-Request-Id")
            value = json.dumps(refusal, sort_keys=True)
        elif lower == "content-length":
            if head and value == "0":
                # aiohttp leaves a zero Content-Length out of a HEAD answer, the verify
                # listener writes it: both mean an empty GET answer (RFC 9110 §9.3.2).
                continue
            if not head:
                assert int(value) == len(answer.body)
            # Otherwise equal: a generated request_id has the same length on both.
        headers.append((name, value))
    return answer.status, body, headers


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request_=verify_requests())
async def test_the_verify_listener_answers_every_verify_request_as_the_public_listener(
    rig: Rig, request_: VerifyRequest
) -> None:
    request = request_
    note(f"from {request.source}: {request.template()!r}")  # shown for a failing example
    data = rig.request(request.template())
    method = request.method
    public = await asyncio.to_thread(exchange, rig.public_port, data, request.source, method)
    own = await asyncio.to_thread(exchange, rig.listener.port, data, request.source, method)
    head = method == "HEAD"
    # The spread of answers, shown by --hypothesis-show-statistics.
    event(f"{public.status} {public.error()['code'] if public.body else method}")
    expected = normalised(public, request.request_id(), head)
    assert normalised(own, request.request_id(), head) == expected
    assert (own.get("Connection") == "close") is request.closes()
    if own.status >= 400 and not head:
        assert_refusal(own, own.status, own.error()["code"])


# Differences found while writing the property, each left out of its space above.


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (b"/_gateway/verify/v1/customers#top", 200),
        (b"/_gateway/verify#top", 200),
        # aiohttp ends the path at '?' when one follows the '#': the path holds '#x', a 400
        (b"/_gateway/verify/v1/customers#x?y", 400),
        (b"/_gateway/verify/v1/customers#?", 400),
        (b"/_gateway/verify/v1/customers?q#top", 200),
    ],
)
async def test_a_fragment_in_the_target_is_judged_as_on_the_public_listener(
    rig: Rig, target: bytes, status: int
) -> None:
    """aiohttp cuts the path of a target at its first '?', or without one at its first
    '#' (its `raw_path`); the verify listener must judge the same path (llhttp passes
    `#...` on to it)."""
    original = b""
    if target.startswith(b"/_gateway/verify#"):
        original = b"X-Original-Method: GET\r\nX-Original-URI: /v1/customers\r\n"
    data = rig.request(
        b"GET " + target + b" HTTP/1.1\r\nHost: g\r\n" + original
        + b"Authorization: Bearer {valid}\r\n\r\n"
    )  # fmt: skip
    public = await asyncio.to_thread(exchange, rig.public_port, data, TRUSTED, "GET")
    own = await asyncio.to_thread(exchange, rig.listener.port, data, TRUSTED, "GET")
    assert public.status == status
    assert normalised(own, None, False) == normalised(public, None, False)


async def test_a_request_id_with_trailing_whitespace_is_echoed_as_on_the_public_listener(
    rig: Rig,
) -> None:
    """aiohttp strips the whitespace after a field value (llhttp keeps it), so it echoes
    a trusted ingress's `X-Request-Id: trace-42 `; the verify listener must too."""
    for padding in (b" ", b"\t", b" \t "):
        data = rig.request(
            b"GET /_gateway/verify/v1/customers HTTP/1.1\r\nHost: g\r\n"
            b"X-Request-Id: trace-42" + padding + b"\r\nAuthorization: Bearer {valid}\r\n\r\n"
        )
        public = await asyncio.to_thread(exchange, rig.public_port, data, TRUSTED, "GET")
        own = await asyncio.to_thread(exchange, rig.listener.port, data, TRUSTED, "GET")
        assert public.get("X-Request-Id") == "trace-42"
        assert own.get("X-Request-Id") == "trace-42", padding


# -- 2. the listener's HTTP/1.1 ----------------------------------------------------------

ENVOY = (
    b"GET /_gateway/verify/v1/customers HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {valid}\r\n"
)


def envoy(request_id: str, extra: bytes = b"") -> bytes:
    """A granted verify request (Envoy's way), with a request id to tell its answer by."""
    return ENVOY + b"X-Request-Id: " + request_id.encode() + b"\r\n" + extra + b"\r\n"


async def test_pipelined_requests_are_answered_in_order(rig: Rig, connect: Connect) -> None:
    conn = await connect(rig.listener.port)
    await conn.send(rig.request(envoy("first") + envoy("second")))
    for request_id in ("first", "second"):
        answer = await conn.answer()
        assert (answer.status, answer.get("X-Request-Id")) == (200, request_id)
        assert answer.get("Connection") is None
    await conn.send(rig.request(envoy("third")))  # still open, and in step
    assert (await conn.answer()).get("X-Request-Id") == "third"


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(lambda body: b"Content-Length: %d\r\n\r\n%s" % (len(body), body), id="length"),
        pytest.param(
            lambda body: (
                b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            ),
            id="chunked",
        ),
    ],
)
async def test_a_body_is_never_read_as_a_request(
    rig: Rig, connect: Connect, framing: Callable[[bytes], bytes]
) -> None:
    """The body is itself a whole verify request: one answer, then the connection closes
    without a second (the body was never parsed)."""
    smuggled = rig.request(envoy("smuggled"))
    head = rig.request(
        b"GET /_gateway/verify/v1/customers HTTP/1.1\r\nHost: g\r\n"
        b"Authorization: Bearer {valid}\r\nX-Request-Id: carrier\r\n"
    )
    conn = await connect(rig.listener.port)
    await conn.send(head + framing(smuggled))
    answer = await conn.answer()
    assert (answer.status, answer.get("X-Request-Id")) == (200, "carrier")
    assert answer.get("Connection") == "close"
    assert await conn.rest() == b""


async def test_content_length_with_transfer_encoding_is_a_400_and_a_close(
    rig: Rig, connect: Connect
) -> None:
    conn = await connect(rig.listener.port)
    await conn.send(
        rig.request(envoy("x", b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"))
        + b"0\r\n\r\n"
    )
    answer = await conn.answer()
    assert_refusal(answer, 400, "invalid_request")
    assert answer.get("Connection") == "close"
    assert await conn.rest() == b""


@pytest.mark.parametrize(
    "line",
    [b"GET /_gateway/verify HTTP/1.1 extra", b"GET", b"G@T /_gateway/verify HTTP/1.1",
     b"GET /_gateway/verify HTTP/9.9", b"GET /_gateway/ verify HTTP/1.1"],
)  # fmt: skip
async def test_a_malformed_request_line_is_a_400_and_a_close(
    rig: Rig, connect: Connect, line: bytes
) -> None:
    conn = await connect(rig.listener.port)
    await conn.send(line + b"\r\nHost: g\r\n\r\n" + rig.request(envoy("after")))
    answer = await conn.answer()
    assert_refusal(answer, 400, "invalid_request")
    assert answer.get("Connection") == "close"
    assert await conn.rest() == b""


async def test_http_1_0_is_answered_and_closed(rig: Rig, connect: Connect) -> None:
    conn = await connect(rig.listener.port)
    await conn.send(
        rig.request(
            b"GET /_gateway/verify/v1/customers HTTP/1.0\r\nAuthorization: Bearer {valid}\r\n\r\n"
        )
        + rig.request(envoy("after"))
    )
    answer = await conn.answer()
    assert answer.status == 200
    assert answer.get("Connection") == "close"
    assert await conn.rest() == b""


@pytest.mark.parametrize(
    ("template", "status", "code"),
    [
        (ENVOY + b"X-Pad: " + b"p" * 8190 + b"\r\n\r\n", 431, "request_header_fields_too_large"),
        (
            b"GET /_gateway/verify/v1/" + b"c" * 8190 + b" HTTP/1.1\r\nHost: g\r\n\r\n",
            414,
            "uri_too_long",
        ),
    ],
    ids=["header-line", "target"],
)
async def test_a_head_over_its_bounds_is_refused_and_closed(
    rig: Rig, connect: Connect, template: bytes, status: int, code: str
) -> None:
    conn = await connect(rig.listener.port)
    await conn.send(rig.request(template) + rig.request(envoy("after")))
    answer = await conn.answer()
    assert_refusal(answer, status, code)
    assert answer.get("Connection") == "close"
    assert await conn.rest() == b""


@pytest.mark.parametrize("unfinished", [b"X-Pad: ", b"X-Pad", b"Host: g\r\nX-Pad: "])
async def test_a_header_line_that_never_ends_is_refused_as_it_grows(
    rig: Rig, connect: Connect, unfinished: bytes
) -> None:
    """llhttp (httptools) hands a header over only once its line has ended, keeping what
    has come of it until then: the listener counts the bytes of an unfinished head as
    they arrive, so one endless line cannot take the memory (nor, copied at each read,
    the CPU)."""
    conn = await connect(rig.listener.port)
    # Past the bound (about 72 KiB), then nothing: what was sent is all read before the
    # listener closes, so its answer is not cut short by a reset.
    line = b"GET /_gateway/verify/v1/customers HTTP/1.1\r\n" + unfinished
    await conn.send(line + b"p" * (MAX_UNFINISHED + 1))
    answer = await conn.answer()
    assert_refusal(answer, 431, "request_header_fields_too_large")
    assert answer.get("Connection") == "close"
    assert await conn.rest() == b""


async def test_an_upgrade_request_is_answered_then_closed(rig: Rig, connect: Connect) -> None:
    conn = await connect(rig.listener.port)
    upgrade = envoy("upgrade", b"Upgrade: websocket\r\nConnection: Upgrade\r\n")
    await conn.send(rig.request(upgrade + envoy("after")))
    answer = await conn.answer()
    assert (answer.status, answer.get("X-Request-Id")) == (200, "upgrade")
    assert answer.get("Connection") == "close"
    assert await conn.rest() == b""


async def test_head_answers_carry_the_length_but_no_body(rig: Rig, connect: Connect) -> None:
    """A refusal has a JSON body: HEAD gets its Content-Length and not a byte of it, and
    the next answer on the connection is read from the right place."""
    conn = await connect(rig.listener.port)
    await conn.send(b"HEAD /_gateway/verify/v1/customers HTTP/1.1\r\nHost: g\r\n\r\n")
    head = await conn.answer("HEAD")
    assert head.status == 401
    assert int(head.get("Content-Length") or 0) > 0
    assert head.get("Connection") is None
    await conn.send(b"GET /_gateway/verify/v1/customers HTTP/1.1\r\nHost: g\r\n\r\n")
    get = await conn.answer()
    assert_refusal(get, 401, "missing_api_key")
    assert int(head.get("Content-Length") or 0) == len(get.body)


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b"])
def test_an_answer_header_with_a_line_break_or_nul_is_never_written(value: str) -> None:
    """A decision's headers carry what keys and routes hold: a CR, LF or NUL among them
    would split the answer, so the answer is refused (and the connection dropped)."""
    with pytest.raises(ValueError, match="line break"):
        _serialise(Verdict(200, [("X-Request-Id", "r"), ("X-Note", value)]), _Request(), "d")
    whole = _serialise(Verdict(200, [("X-Note", "a b")]), _Request(), "d")
    assert whole == b"HTTP/1.1 200 OK\r\nX-Note: a b\r\nContent-Length: 0\r\nDate: d\r\n\r\n"


async def test_more_than_32_pipelined_requests_are_a_503_and_a_close(
    rig: Rig, connect: Connect
) -> None:
    conn = await connect(rig.listener.port)
    await conn.send(b"".join(rig.request(envoy(f"r{i}")) for i in range(40)))
    for i in range(32):
        answer = await conn.answer()
        assert (answer.status, answer.get("X-Request-Id")) == (200, f"r{i}")
    refused = await conn.answer()
    assert_refusal(refused, 503, "too_many_requests")
    assert refused.get("Connection") == "close"
    assert await conn.rest() == b""


@pytest.mark.parametrize(
    "target",
    [b"/v1/customers", b"/_gateway/verifyX", b"/_gateway/verif", b"/_gateway/ready", b"/",
     b"*", b"/_gateway/verify%2Fv1/customers", b"/x/_gateway/verify"],
)  # fmt: skip
async def test_a_target_outside_the_endpoint_is_a_404(
    rig: Rig, connect: Connect, target: bytes
) -> None:
    conn = await connect(rig.listener.port)
    method = b"OPTIONS" if target == b"*" else b"GET"
    await conn.send(
        rig.request(
            method + b" " + target + b" HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {valid}\r\n"
            b"X-Original-Method: GET\r\nX-Original-URI: /v1/customers\r\n\r\n"
        )
    )
    assert_refusal(await conn.answer(), 404, "not_found")
    await conn.send(rig.request(envoy("after")))  # a 404 keeps the connection
    assert (await conn.answer()).status == 200


@pytest.mark.parametrize(
    ("source", "template", "status", "code"),
    [
        (TRUSTED, b"GET /_gateway/verify/v1/customers HTTP/1.1\r\nHost: g\r\n\r\n",
         401, "missing_api_key"),
        (TRUSTED, b"GET /_gateway/verify/v1/customers HTTP/1.1\r\nHost: g\r\n"
         b"Authorization: Bearer {wrong}\r\n\r\n", 401, "invalid_api_key"),
        (UNTRUSTED, ENVOY + b"\r\n", 403, "untrusted_ingress"),
        (TRUSTED, b"GET /_gateway/verify HTTP/1.1\r\nHost: g\r\n\r\n",
         400, "invalid_original_request"),
        (TRUSTED, b"GET /_gateway/verify/v1/reports/mrr HTTP/1.1\r\nHost: g\r\n"
         b"Authorization: Bearer {valid}\r\n\r\n", 403, "insufficient_permission"),
        (TRUSTED, b"GET /_gateway/verify/v1/customers HTTP/1.1\r\nHost: g\r\n"
         b"Authorization: Bearer {allowlisted}\r\n\r\n", 403, "ip_not_allowed"),
        (TRUSTED, b"GET /_gateway/verify/v1//customers HTTP/1.1\r\nHost: g\r\n"
         b"Authorization: Bearer {valid}\r\n\r\n", 400, "invalid_path"),
        (TRUSTED, b"GET /v1/customers HTTP/1.1\r\nHost: g\r\n\r\n", 404, "not_found"),
        (TRUSTED, b"GET /_gateway/verify HTTP/1.1\r\nHost: g\r\nBad Name: x\r\n\r\n",
         400, "invalid_request"),
    ],
)  # fmt: skip
async def test_every_refusal_is_the_gateways_json_named_and_with_its_request_id(
    rig: Rig, connect: Connect, source: str, template: bytes, status: int, code: str
) -> None:
    conn = await connect(rig.listener.port, source)
    await conn.send(rig.request(template))
    assert_refusal(await conn.answer(), status, code)


# -- keep-alive and closing --------------------------------------------------------------


async def test_a_head_that_does_not_arrive_within_the_keepalive_time_is_closed(
    rig: Rig, start_verify_listener: VerifyListenerFactory, connect: Connect
) -> None:
    listener = await start_verify_listener(rig.public, keepalive_timeout=0.5)
    conn = await connect(listener.port)
    started = asyncio.get_running_loop().time()
    await conn.send(b"GET /_gateway/verify/v1/customers HTTP/1.1\r\nHost: g\r\nX-Orig")
    assert await conn.rest() == b""  # closed, unanswered (within TIMEOUT)
    assert asyncio.get_running_loop().time() - started >= 0.4  # by the timer, not at once


async def test_an_idle_connection_is_closed_after_the_keepalive_time(
    rig: Rig, start_verify_listener: VerifyListenerFactory, connect: Connect
) -> None:
    listener = await start_verify_listener(rig.public, keepalive_timeout=0.5)
    never_asked = await connect(listener.port)
    answered = await connect(listener.port)
    await answered.send(rig.request(envoy("one")))
    assert (await answered.answer()).status == 200
    assert await never_asked.rest() == b""
    assert await answered.rest() == b""
    await wait_for(lambda: not listener.connections, timeout=TIMEOUT)


async def slow_key(seed: Seed) -> NewKey:
    """A key whose verification takes about a second (argon2 with a large time cost):
    an answer that waits on it is held under way."""
    slow_store = KeyStore(
        seed.pool,
        seed.store.format,
        Hasher(Argon2Config(time_cost=24, memory_kib=65536, parallelism=1)),
    )
    account = await seed.account()
    return await slow_store.create(
        account.account_id, "slow", created_by=account.member_id, permissions=["customers:read"]
    )


async def test_a_client_gone_while_its_key_is_verified_is_counted_once_as_gone(
    rig: Rig, seed: Seed, connect: Connect
) -> None:
    """The decision is under way in a task (a key not yet verified, with a slow hash)
    when the client leaves: the task is cancelled, the request counted as 499, and the
    listener serves the next connection."""
    slow = await slow_key(seed)
    listener = rig.listener
    gone = sample("gateway_requests_total", outcome="ok", status_class="4xx")
    misses = sample("gateway_key_cache_misses_total")
    leaving = await connect(listener.port)
    await leaving.send(
        b"GET /_gateway/verify/v1/customers HTTP/1.1\r\nHost: g\r\n"
        b"Authorization: Bearer " + slow.key.encode() + b"\r\n\r\n"
    )
    await wait_for(lambda: sample("gateway_key_cache_misses_total") > misses, timeout=TIMEOUT)
    leaving.close()
    await wait_for(
        lambda: sample("gateway_requests_total", outcome="ok", status_class="4xx") > gone,
        timeout=TIMEOUT,
    )
    assert not listener.connections
    staying = await connect(listener.port)
    await staying.send(rig.request(envoy("next")))
    assert (await staying.answer()).status == 200
    assert sample("gateway_requests_total", outcome="ok", status_class="4xx") == gone + 1


async def test_close_closes_idle_connections_at_once_and_finishes_answers_under_way(
    rig: Rig, seed: Seed, connect: Connect
) -> None:
    """An answer is held under way by a key not yet verified whose hash is slow."""
    slow = await slow_key(seed)
    listener = rig.listener
    port = listener.port
    idle = await connect(port)
    busy = await connect(port)
    await wait_for(lambda: len(listener.connections) == 2, timeout=TIMEOUT)
    misses = sample("gateway_key_cache_misses_total")
    await busy.send(
        b"GET /_gateway/verify/v1/customers HTTP/1.1\r\nHost: g\r\nX-Request-Id: slow\r\n"
        b"Authorization: Bearer " + slow.key.encode() + b"\r\n\r\n"
    )
    await wait_for(lambda: sample("gateway_key_cache_misses_total") > misses, timeout=TIMEOUT)
    closing = asyncio.create_task(listener.close(30))
    assert await idle.rest() == b""
    assert not closing.done()  # waiting for the answer under way
    answer = await busy.answer()
    assert (answer.status, answer.get("X-Request-Id")) == (200, "slow")
    assert answer.get("Connection") == "close"
    assert await busy.rest() == b""
    await asyncio.wait_for(closing, TIMEOUT)
    assert not listener.connections
    with pytest.raises(ConnectionRefusedError):  # no longer listening
        await connect(port)
