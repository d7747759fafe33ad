"""Differential fuzzing of HTTP framing (SPEC §3 "Framing"): a real `gateway serve` between
raw-socket clients and an upstream that parses with h11 (tests/h11_upstream.py).

Requests: random methods, headers whose names and values are made of the framing
vocabulary or claim an identity, bodies framed by Content-Length, by chunked (with
extensions and trailers, credentials and identity among them) or not at all, with or
without a `Content-Encoding`, hostile framings (obs-fold included), some without a key,
1–3 requests pipelined on one connection. Property: the upstream sees exactly the
requests the gateway answered with the upstream's status, in order, method, target and
body identical to what the client sent, framed the one way h11 can read, and never one
more; a request without a key is never forwarded; and the upstream's header fields are
exactly the client's own, in order, less those docs/proxy.md says are dropped, then the
gateway's identity, `X-Request-Id` (the one the client was answered with), forwarding and
framing fields (`expected_headers`, written apart from gateway/headers.py). A trailer
that became a header of the next request (H15) failed this.

Responses: the upstream answers with hostile framing (lengths too short or too long,
chunked with extensions and trailers, 1xx first, bytes after 204/304/HEAD answers, two
responses in one write, an answer before the request body, early closes, garbage).
Property: each client gets its own answer or a 502, never a byte of another response,
and a connection that carried a doubtful answer is never used again.

`FRAMING_EXAMPLES` sets the examples per property (default 150, the same ones every run
unless `FUZZ_RANDOM=1`); `make fuzz` runs many more.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import os
import socket
import subprocess
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.accounts import create_account
from gateway.config import DEFAULT_PERMISSIONS, Argon2Config, KeysConfig
from gateway.embedded_pg import free_port
from gateway.keyformat import Hasher, KeyFormat
from gateway.keys import KeyStore

from . import secret_scan
from .conftest import Cluster
from .h11_upstream import Answer, H11Upstream, Seen, ok_answer
from .helpers import FAST_ARGON2, gateway_command, served_config_file
from .reliability import NO_LIMITS

EXAMPLES = int(os.environ.get("FRAMING_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TIMEOUT = 10.0


# -- the gateway under test -------------------------------------------------------------


@dataclasses.dataclass
class Rig:
    upstream: H11Upstream
    process: subprocess.Popen[bytes]
    port: int
    key: str
    account_id: str
    key_id: str
    permissions: str  # as the gateway writes them: sorted, comma-separated
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


PERMISSIONS = [*DEFAULT_PERMISSIONS, "test:any"]


async def _account_and_key(url: str) -> tuple[str, str, str]:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        hasher = Hasher(Argon2Config(**FAST_ARGON2))
        account = await create_account(pool, hasher, "Framing", "framing@example.com")
        secret_scan.register(account.token)
        store = KeyStore(pool, KeyFormat(KeysConfig().prefix), hasher)
        key = await store.create(
            account.account_id,
            "fuzzed",
            created_by=account.member_id,
            permissions=PERMISSIONS,
        )
        return str(account.account_id), str(key.id), key.key
    finally:
        await pool.close()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


@pytest.fixture(scope="module")
def rig(
    cluster: Cluster, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    name = f"gw_framing_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def create() -> tuple[str, str, str]:
        conn = await asyncpg.connect(cluster.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        finally:
            await conn.close()
        return await _account_and_key(cluster.url(name))

    account_id, key_id, key = asyncio.run(create())
    secret_scan.register(key)
    upstream = H11Upstream().start()
    port, admin_port = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("framing") / "gateway.log"
    env = {
        **os.environ,
        **NO_LIMITS,
        "DATABASE_URL": cluster.url(name),
        "GATEWAY__PROXY__UPSTREAM": upstream.url,
        "GATEWAY__PROXY__PORT": str(port),
        "GATEWAY__PROXY__TIMEOUT_SECONDS": "3",
        "GATEWAY__ADMIN__PORT": str(admin_port),
        "GATEWAY__KEYS__ARGON2__TIME_COST": str(FAST_ARGON2["time_cost"]),
        "GATEWAY__KEYS__ARGON2__MEMORY_KIB": str(FAST_ARGON2["memory_kib"]),
        "GATEWAY__LOGGING__ACCESS_LOG": "false",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            gateway_command("--config", str(served_config_file()), "serve"),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    permissions = ",".join(sorted(PERMISSIONS))
    rig = Rig(upstream, process, port, key, account_id, key_id, permissions, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, rig.logs()
            try:
                _connect(port).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "gateway not listening in time"
                time.sleep(0.05)
        yield rig
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)
        upstream.close()


# -- a client that reads what it gets with h11 ----------------------------------------------


@dataclasses.dataclass
class Got:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool = True

    @property
    def seq(self) -> int | None:
        value = self.headers.get("x-upstream-seq")
        return None if value is None else int(value)

    @property
    def error_code(self) -> str | None:
        if self.headers.get("content-type", "").startswith("application/json"):
            return str(json.loads(self.body)["error"]["code"])
        return None


def read_responses(sock: socket.socket, methods: list[str], buffered: bytes = b"") -> list[Got]:
    """One response per method (interim 1xx skipped), until the server closes or a
    response breaks off (then it is the last, with `complete` false)."""
    got: list[Got] = []
    data = buffered
    closed = False
    for method in methods:
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
        if data:  # (b"" would mean the end of the stream to h11)
            client.receive_data(data)
        if closed:
            client.receive_data(b"")
        current: Got | None = None
        while True:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError:
                if current is not None:
                    current.complete = False
                    got.append(current)
                return got
            if event is h11.NEED_DATA:
                try:
                    chunk = sock.recv(65536)
                except (ConnectionError, TimeoutError):
                    chunk = b""
                closed = not chunk
                client.receive_data(chunk)
                continue
            if isinstance(event, h11.ConnectionClosed):
                return got
            if isinstance(event, h11.Response):
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
                current = Got(event.status_code, headers, b"")
            elif isinstance(event, h11.Data):
                assert current is not None
                current.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                got.append(current)
                data, _ = client.trailing_data
                break
    return got


# -- requests -------------------------------------------------------------------------------

WORDS = [
    "transfer-encoding",
    "chunked",
    "content-length",
    "te",
    "trailer",
    "trailers",
    "connection",
    "upgrade",
    "expect",
    "100-continue",
    "host",
    "keep-alive",
    "close",
    "identity",
    "gzip",
]
HOP_NAMES = [
    "Connection",
    "TE",
    "Trailer",
    "Upgrade",
    "Keep-Alive",
    "Proxy-Connection",
    "Proxy-Authorization",
]
# What a client may not say about itself: its identity, address, request id or method.
CLAIMS = [
    "X-GrowPanel-Account-Id",
    "X-GrowPanel-Key-Permissions",
    "X_GrowPanel_Key_Id",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X_Forwarded_Proto",
    "Forwarded",
    "X-Real-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "X-Request-Id",
    "X-HTTP-Method-Override",
]
# Bytes above 0x7F too (as latin-1): opaque data, forwarded byte for byte (H3), whether
# or not they make UTF-8 ("\xc3\xa9" does, "\xe9" and "\x80" do not).
SAFE_TEXT = st.text(alphabet="abcXYZ019 -_./=,;:\xc3\xa9\xe9\x80", max_size=6)

header_names = st.one_of(
    st.sampled_from(WORDS).map(lambda w: "X-" + w),
    st.sampled_from(WORDS).map(lambda w: w + "-X"),
    st.tuples(st.sampled_from(WORDS), st.sampled_from(WORDS)).map("-".join),
    st.sampled_from(HOP_NAMES + CLAIMS),
)
# "transfer-encoding: chunked", "content-length=0": header lines written into a value.
phrases = st.tuples(
    st.sampled_from(WORDS), st.sampled_from([": ", ":", "=", " "]), st.sampled_from([*WORDS, "0"])
).map("".join)
header_values = st.lists(
    st.one_of(st.sampled_from([*WORDS, ",", ", ", ": ", "; ", "0", "5", "\t"]), phrases, SAFE_TEXT),
    max_size=6,
).map(lambda parts: "".join(parts).strip())
# Headers that only mention framing: each once fooled a proxy that searched header text.
# Then `Connection` naming an ordinary header (spelled with `_` too), which is dropped.
DECOYS = [
    ("X-Transfer-Encoding", "chunked"),
    ("X-Note", "transfer-encoding: chunked"),
    ("Transfer-Encoding-X", "chunked"),
    ("X-Content-Length", "0"),
    ("X-Note", "content-length: 0"),
    ("Connection", "transfer-encoding, content-length"),
    ("Connection", "close, te"),
    ("TE", "trailers, chunked"),
    ("Trailer", "Content-Length"),
    ("Connection", "X-Note"),
    ("Connection", "keep-alive, x_note"),
]
headers_lists = st.lists(
    st.one_of(st.tuples(header_names, header_values), st.sampled_from(DECOYS)), max_size=5
)
# Trailer fields, the last of which aiohttp's parser once carried into the head of the
# next request on the connection (H15): credentials, identity, framing, routing.
TRAILERS = [
    "X-T: 1",
    "Content-Length: 3",
    "Authorization: Bearer {key}",
    "X-GrowPanel-Key-Id: forged",
    "Host: evil.example",
    "X-Forwarded-For: 10.9.9.9",
    "Transfer-Encoding: chunked",
    "Expect: 100-continue",
]
trailer_fields = st.one_of(
    st.sampled_from(TRAILERS),
    st.tuples(header_names, header_values).map(lambda field: "{}: {}".format(*field)),
)


@dataclasses.dataclass
class Sent:
    """A request as the client framed it, and what it means."""

    method: str
    target: str
    raw: bytes
    body: bytes
    hostile: bool  # framing no server may accept: the gateway must refuse it
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # in the head
    framing: str = "none"
    keyless: bool = False  # no `Authorization`: must never be forwarded


def _chunked(body: bytes, sizes: list[int], extensions: list[str], trailers: list[str]) -> bytes:
    out = []
    rest = body
    for i, size in enumerate(sizes):
        if not rest:
            break
        piece, rest = rest[: max(1, size)], rest[max(1, size) :]
        ext = extensions[i % len(extensions)] if extensions else ""
        out.append(b"%x%s\r\n%s\r\n" % (len(piece), ext.encode(), piece))
    if rest:
        out.append(b"%x\r\n%s\r\n" % (len(rest), rest))
    out.append(b"0\r\n" + "".join(f"{t}\r\n" for t in trailers).encode() + b"\r\n")
    return b"".join(out)


HOSTILE = [
    "Content-Length: {n}\r\nTransfer-Encoding: chunked",
    "Transfer-Encoding: chunked\r\nContent-Length: {n}",
    "Content-Length: {n}\r\nContent-Length: {m}",
    "Content-Length: +{n}",
    "Content-Length: {n} {n}",
    "Content-Length: 0x{n}",
    "Transfer-Encoding: chunked, identity",
    "Transfer-Encoding: identity",
    "Transfer-Encoding: xchunked",
    "Transfer-Encoding : chunked",
    "Content-Length : {n}",
    "Transfer-Encoding: chunked\r\n\tX-Folded: yes",
    "Content-Length: {n}\r\n Transfer-Encoding: chunked",
    # obs-fold in an ordinary field (RFC 9112 §5.2): refused, never joined or split.
    "Content-Length: {n}\r\nX-Folded: a\r\n b",
    "Content-Length: {n}\r\nAuthorization: Bearer\r\n\tx",
]
CODINGS = ["gzip", "deflate", "br", "zstd", "identity", "gzip, br"]


def _encoded(coding: str, body: bytes) -> bytes:
    """`body` in `coding` where the standard library has it (a body aiohttp would have
    decoded), else as it is: either way it must reach the upstream byte for byte."""
    if coding == "gzip":
        return gzip.compress(body)
    if coding == "deflate":
        return zlib.compress(body)
    return body


@st.composite
def requests(draw: st.DrawFn, key: str, index: int) -> Sent:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]))
    query = draw(st.sampled_from(["", "?a=1", "?te=chunked&content-length=5", "?x=%0d%0a"]))
    target = f"/v1/echo/{index}{query}"
    framing = draw(st.sampled_from(["none", "length", "chunked", "hostile"]))
    body = draw(st.binary(max_size=300)) if framing != "none" else b""
    keyless = draw(st.integers(0, 4)) == 0
    fields = [("Host", "gateway.test")]
    if not keyless:
        fields.append(("Authorization", f"Bearer {key}"))
    fields += draw(headers_lists)
    if framing in ("length", "chunked") and draw(st.booleans()):
        coding = draw(st.sampled_from(CODINGS))
        body = _encoded(coding, body)
        fields.append(("Content-Encoding", coding))
    if draw(st.booleans()) and framing in ("length", "chunked"):
        fields.append(("Expect", "100-continue"))
    hostile = framing == "hostile"
    extra = ""
    if framing == "length":
        fields.append(("Content-Length", str(len(body))))
        payload = body
    elif framing == "chunked":
        fields.append(("Transfer-Encoding", "chunked"))
        sizes = draw(st.lists(st.integers(1, 64), max_size=8))
        extensions = draw(st.lists(st.sampled_from([";a=b", ';x="c;d"', ";chunked", " ;e"])))
        trailers = draw(st.lists(trailer_fields, min_size=1, max_size=2) | st.just([]))
        payload = _chunked(body, sizes, extensions, [t.format(key=key) for t in trailers])
    elif framing == "hostile":
        template = draw(st.sampled_from(HOSTILE))
        extra = template.format(n=len(body), m=len(body) + 1) + "\r\n"
        payload = body
    else:
        payload = b""
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in fields)]
    raw = ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1") + payload
    return Sent(method, target, raw, body, hostile, fields, framing, keyless)


@st.composite
def pipelines(draw: st.DrawFn, key: str) -> list[Sent]:
    count = draw(st.integers(1, 3))
    return [draw(requests(key, i)) for i in range(count)]


# What docs/proxy.md ("What the upstream receives") says the upstream never gets from
# the client, written here apart from gateway/headers.py. From a peer that is not a
# trusted proxy (the fuzz's client), address claims included.
DROPPED = {
    # hop-by-hop
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    # the key, unless `proxy.forward_authorization` (off here)
    "authorization",
    # the gateway's to write
    "host",
    "content-length",
    "expect",
    "x-request-id",
    "forwarded",
    # method overrides
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    # address claims from an untrusted peer
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
}
DROPPED_PREFIXES = ("x-growpanel-", "x-forwarded-")


def _judged(name: str) -> str:
    """A name as the rule reads it: case-insensitive, `_` as `-` (CGI upstreams)."""
    return name.lower().replace("_", "-")


def expected_headers(sent: Sent, rig: Rig, request_id: str) -> list[tuple[str, str]]:
    """The header fields the upstream must receive for `sent`, in order, names lower-case
    as h11 gives them: its Host, the client's own fields less the dropped ones, the
    gateway's identity and forwarding fields, and the gateway's body framing."""
    named = {
        _judged(token.strip())
        for name, value in sent.headers
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    }
    expected = [("host", f"127.0.0.1:{rig.upstream.port}")]
    expected += [
        (name.lower(), value)
        for name, value in sent.headers
        if _judged(name) not in DROPPED | named and not _judged(name).startswith(DROPPED_PREFIXES)
    ]
    expected += [
        ("x-growpanel-account-id", rig.account_id),
        ("x-growpanel-key-id", rig.key_id),
        ("x-growpanel-key-permissions", rig.permissions),
        ("x-request-id", request_id),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "gateway.test"),
    ]
    if sent.framing == "chunked":
        expected.append(("transfer-encoding", "chunked"))
    elif sent.body:
        expected.append(("content-length", str(len(sent.body))))
    elif sent.method in ("POST", "PUT", "PATCH"):
        expected.append(("content-length", "0"))
    return expected


def check_forwarded(seen: Seen, sent: Sent, response: Got, rig: Rig) -> None:
    assert (seen.method, seen.target, seen.body) == (sent.method, sent.target, sent.body)
    assert seen.headers == expected_headers(sent, rig, response.headers["x-request-id"])


@FUZZ
@given(data=st.data())
def test_upstream_sees_exactly_what_the_gateway_answered_for(rig: Rig, data: st.DataObject) -> None:
    sent = data.draw(pipelines(rig.key))
    upstream = rig.upstream
    upstream.settle()
    upstream.reset()
    upstream.script = ok_answer
    with _connect(rig.port) as sock:
        sock.sendall(b"".join(s.raw for s in sent))
        got = read_responses(sock, [s.method for s in sent])
    upstream.settle()
    assert upstream.errors == [], upstream.errors
    forwarded = [g for g in got if g.seq is not None]
    assert len(upstream.records) == len(forwarded), (got, upstream.records)
    by_seq = {seen.seq: seen for seen in upstream.records}
    last_seq = -1
    for response, request in zip(got, sent, strict=False):
        assert response.complete
        if request.hostile:
            assert response.seq is None and response.status == 400, response
            break
        if request.keyless:
            # 401, or 400 for a body the parser refused (a framing field as a trailer)
            assert response.seq is None and response.status in (400, 401), response
            continue
        if response.seq is None:
            continue  # the gateway's own answer (a 4xx): nothing went upstream
        assert response.seq > last_seq
        last_seq = response.seq
        assert response.seq in by_seq, (response, upstream.records)
        check_forwarded(by_seq[response.seq], request, response, rig)
    assert rig.process.poll() is None, rig.logs()


def test_gateway_serve_passes_an_encoded_body_on_undecoded(rig: Rig) -> None:
    """`gateway serve` (not only the test servers) never decodes a body: aiohttp did,
    and the upstream got the decoded bytes under the client's `Content-Encoding: gzip`."""
    body = gzip.compress(b'{"name": "x"}' * 20)
    upstream = rig.upstream
    upstream.settle()
    upstream.reset()
    upstream.script = ok_answer
    request = (
        f"POST /v1/echo/gzip HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {rig.key}\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with _connect(rig.port) as sock:
        sock.sendall(request)
        (got,) = read_responses(sock, ["POST"])
    upstream.settle()
    assert got.status == 200, got
    (seen,) = upstream.records
    assert (seen.body, seen.header("content-encoding")) == (body, ["gzip"])


# -- responses ------------------------------------------------------------------------------

GOOD = ["good", "chunked", "interim", "close_delimited"]
DOUBTFUL = ["short", "long", "stray", "two", "early", "garbage", "cut_head", "upgrade"]


def _tag(index: int) -> bytes:
    return b"<%d>" % index


def intended(index: int, method: str) -> tuple[int, bytes]:
    """The status and body the upstream means for request `index`."""
    return 200, b"" if method == "HEAD" else _tag(index) * 4


def hostile_answer(kind: str, index: int, method: str) -> Answer:
    body = _tag(index) * 4
    no_body = method == "HEAD"
    good = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        b"" if no_body else body,
    )
    second = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\n<S>"
    if kind == "good":
        return Answer(good)
    if kind == "chunked":
        chunks = b"".join(
            b"%x;ext=%d\r\n%s\r\n" % (len(_tag(index)), i, _tag(index)) for i in range(4)
        )
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
        return Answer(head + (b"" if no_body else chunks + b"0\r\nX-T: 1\r\n\r\n"))
    if kind == "interim":
        interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        return Answer(interim + good)
    if kind == "close_delimited":
        return Answer(b"HTTP/1.1 200 OK\r\n\r\n" + (b"" if no_body else body), close=True)
    if kind == "short":
        return Answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body) - 2, body))
    if kind == "long":
        return Answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body) + 5, body), close=True
        )
    if kind == "stray":
        if no_body:
            return Answer(good + body)  # a body after an answer to HEAD
        return Answer(b"HTTP/1.1 204 No Content\r\n\r\n" + second)
    if kind == "two":
        return Answer(good + second)
    if kind == "early":
        return Answer(good, early=True)
    if kind == "garbage":
        return Answer(b"NOT HTTP AT ALL\r\n\r\n")
    if kind == "cut_head":
        return Answer(b"HTTP/1.1 200 OK\r\nContent-Le", close=True)
    if kind == "upgrade":
        return Answer(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
        )
    raise AssertionError(kind)


@dataclasses.dataclass
class Step:
    method: str
    kind: str

    @property
    def doubtful(self) -> bool:
        # An answer before the body is only early when there is a body (POST here).
        return self.kind in DOUBTFUL and (self.kind != "early" or self.method == "POST")


steps = st.lists(
    st.builds(Step, st.sampled_from(["GET", "HEAD", "POST"]), st.sampled_from(GOOD + DOUBTFUL)),
    min_size=1,
    max_size=4,
)


def _request(index: int, step: Step, key: str) -> bytes:
    body = b"b" * 40000 if step.method == "POST" else b""
    head = (
        f"{step.method} /v1/echo/{index} HTTP/1.1\r\nHost: gateway.test\r\n"
        f"Authorization: Bearer {key}\r\n"
    )
    if step.method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


@FUZZ
@given(plan=steps)
def test_each_client_gets_its_own_answer_or_a_502(rig: Rig, plan: list[Step]) -> None:
    upstream = rig.upstream
    upstream.settle()
    upstream.reset()

    def script(seen: Seen) -> Answer:
        index = int(seen.target.rsplit("/", 1)[1])
        return hostile_answer(plan[index].kind, index, seen.method)

    upstream.script = script
    sock = _connect(rig.port)
    try:
        for index, step in enumerate(plan):
            try:
                sock.sendall(_request(index, step, rig.key))
                got = read_responses(sock, [step.method])
            except ConnectionError:
                got = []
            status, body = intended(index, step.method)
            if not got or not got[0].complete:
                # Cut: allowed only for a doubtful answer, and only its own bytes came.
                assert step.doubtful, (step, got)
                assert not got or body.startswith(got[0].body)
            else:
                response = got[0]
                assert b"<S>" not in response.body
                if response.status == 502:
                    assert response.headers["content-type"].startswith("application/json")
                    if step.method != "HEAD":
                        assert response.error_code == "upstream_unavailable", response
                    assert step.doubtful, (step, response)
                elif step.kind == "short":
                    assert (response.status, response.body) == (status, body[:-2])
                elif step.kind == "stray" and step.method != "HEAD":
                    assert (response.status, response.body) == (204, b"")
                else:
                    assert (response.status, response.body) == (status, body), (step, response)
            if not got or not got[0].complete or got[0].headers.get("connection") == "close":
                sock.close()
                sock = _connect(rig.port)
    finally:
        sock.close()
    upstream.settle()
    assert upstream.errors == [], upstream.errors
    # A connection that carried a doubtful answer carries nothing after it.
    # An early answer to a request whose body the gateway had all sent by then leaves the
    # connection in step (the upstream read the body after answering: its record is
    # whole); any other doubtful answer ends the connection.
    heads = list(upstream.heads)
    whole = {seen.seq for seen in upstream.records}
    for position, seen in enumerate(heads):
        index = int(seen.target.rsplit("/", 1)[1])
        if plan[index].doubtful:
            later = [h.target for h in heads[position + 1 :] if h.connection == seen.connection]
            if plan[index].kind == "early" and seen.seq in whole:
                continue
            assert later == [], (plan, heads)
    assert rig.process.poll() is None, rig.logs()
