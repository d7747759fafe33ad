"""HTTP framing between the client, the gateway and the upstream (SPEC §3 "Framing", §10).

The two desyncs found in review, each a regression test that failed before the fix:
header text deciding the request's body framing (finding 1), and a second response on
an upstream connection absorbed into, or answering, the next request (finding 2). Then
`Expect: 100-continue`, forwarding headers from untrusted peers, and the fields the
upstream client refuses to write, with a property test of the head it writes against
h11. The property-based differential fuzzing of the whole gateway is in
test_framing_fuzz.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re

import aiohttp
import h11
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import SERVER_OPTIONS, UPSTREAM, create_app
from gateway.upstream import UpstreamPool
from gateway.upstream_wire import UnsafeRequest, request_head

from .conftest import GatewayFactory, Seed
from .helpers import ServedTestServer, make_config, wait_for
from .reliability import (
    Received,
    StartServe,
    answer,
    exchange,
    raw_upstream,
    serve,  # noqa: F401
    status_codes,
)

FRAMING_DECOYS = [
    ("X-Transfer-Encoding", "chunked"),
    ("X-Note", "transfer-encoding: chunked"),
    ("X-Chunked", "Transfer-Encoding: chunked, content-length: 0"),
]


@pytest.mark.parametrize(("name", "value"), FRAMING_DECOYS)
async def test_header_text_never_decides_request_framing(
    start_gateway: GatewayFactory, seed: Seed, database_url: str, name: str, value: str
) -> None:
    """Finding 1: a header merely mentioning chunked left Content-Length: 5 on a chunked body."""
    key = await seed.key()
    async with raw_upstream() as upstream:
        gateway = await start_gateway(make_config(database_url, upstream.url))
        request = (
            f"POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key.key}\r\n"
            f"{name}: {value}\r\nContent-Length: 5\r\n\r\nhello"
        ).encode()
        raw = await exchange(gateway.port, request)
        assert status_codes(raw) == [200]
        assert [r.body for r in upstream.received] == [b"hello"]
        (received,) = upstream.received
        assert received.header("Content-Length") == ["5"]
        assert received.header("Transfer-Encoding") == []
        assert upstream.parse_errors == 0
        assert bytes(upstream.raw[0]).endswith(b"\r\n\r\nhello")


async def test_chunked_client_body_is_rechunked_by_the_gateway(
    start_gateway: GatewayFactory, seed: Seed, database_url: str
) -> None:
    """No length known: the gateway chunks, whatever the client's chunk extensions said."""
    key = await seed.key()
    async with raw_upstream() as upstream:
        gateway = await start_gateway(make_config(database_url, upstream.url))
        request = (
            f"POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key.key}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
            '3;ext="Content-Length: 1"\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n'
        ).encode()
        raw = await exchange(gateway.port, request)
        assert status_codes(raw) == [200]
        (received,) = upstream.received
        assert received.body == b"abcde"
        assert received.header("Transfer-Encoding") == ["chunked"]
        assert received.header("Content-Length") == []
        assert received.header("X-Trailer") == []
        assert b"ext=" not in upstream.raw[0]


# The first request of a connection, by the endpoint it reaches: each is chunked and
# ends with an `Authorization` trailer holding a valid key.
TRAILED = {
    "proxied": "POST /v1/echo HTTP/1.1\r\nAuthorization: Bearer {key}\r\n",
    "refused": "POST /v1/echo HTTP/1.1\r\n",
    "reserved": "POST /_gateway/ready HTTP/1.1\r\n",
    "gateway 404": "POST /_gateway/nothing HTTP/1.1\r\n",
}


def _trailed_then_keyless(first: str, key: str) -> bytes:
    trailed = (
        first.format(key=key) + "Host: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"3\r\nabc\r\n0\r\nAuthorization: Bearer {key}\r\n\r\n"
    )
    return (trailed + "GET /v1/customers HTTP/1.1\r\nHost: x\r\n\r\n").encode()


@pytest.mark.parametrize("first", sorted(TRAILED))
async def test_a_trailer_never_becomes_a_header_of_the_next_request(
    seed: Seed, database_url: str, first: str
) -> None:
    """aiohttp's parser carries the last trailer field of a chunked request into the head
    of the next request on the connection: a keyless request was served with the key of
    the trailer before it (behind a proxy that shares connections, another client's)."""
    key = await seed.key()
    async with raw_upstream() as upstream:
        gateway = ServedTestServer(create_app(make_config(database_url, upstream.url)))
        await gateway.start_server(**SERVER_OPTIONS)
        try:
            raw = await exchange(gateway.port, _trailed_then_keyless(TRAILED[first], key.key), 2)
        finally:
            await gateway.close()
        head = raw.split(b"\r\n\r\n", 1)[0].lower()
        assert b"\r\nconnection: close" in head
        assert status_codes(raw)[1:] in ([], [401])
        assert [r.target for r in upstream.received] == (["/v1/echo"] if first == "proxied" else [])


async def test_a_trailer_never_becomes_a_header_of_the_next_request_under_serve(
    serve: StartServe,  # noqa: F811
    seed: Seed,
) -> None:
    """The same, through `gateway serve`."""
    key = await seed.key()
    async with raw_upstream() as upstream:
        served = await serve(upstream.url)
        raw = await exchange(
            served.proxy_port, _trailed_then_keyless(TRAILED["refused"], key.key), 2
        )
        assert status_codes(raw) == [401]
        assert upstream.received == []


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
async def test_an_encoded_body_reaches_the_upstream_as_the_client_sent_it(
    start_gateway: GatewayFactory, seed: Seed, database_url: str, coding: str, framing: str
) -> None:
    """The gateway never decodes a body. aiohttp did, as it read one: a gzip body reached
    the upstream decoded, still labelled gzip (or got a 502, its length now another), and
    a deflate body that did not inflate was a 500."""
    key = await seed.key()
    body = gzip.compress(b'{"name": "x"}' * 20) if coding == "gzip" else b"\x8b\x01not inflatable"
    head = (
        f"POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key.key}\r\n"
        f"Content-Type: application/json\r\nContent-Encoding: {coding}\r\n"
    ).encode()
    if framing == "length":
        request = head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    else:
        request = head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
            len(body),
            body,
        )
    async with raw_upstream() as upstream:
        gateway = await start_gateway(make_config(database_url, upstream.url))
        assert status_codes(await exchange(gateway.port, request)) == [200]
        (received,) = upstream.received
        assert received.body == body
        assert received.header("Content-Encoding") == [coding]


async def second_response(request: Received, transport: asyncio.Transport) -> None:
    transport.write(answer(b"ok") + answer(b"smuggled", "400 Bad Request"))


async def head_with_body(request: Received, transport: asyncio.Transport) -> None:
    transport.write(answer(b"body-of-a-head"))  # Content-Length 14, and the 14 bytes


async def no_content_with_body(request: Received, transport: asyncio.Transport) -> None:
    transport.write(b"HTTP/1.1 204 No Content\r\n\r\n" + answer(b"smuggled", "400 Bad Request"))


async def stray_text(request: Received, transport: asyncio.Transport) -> None:
    transport.write(answer(b"ok") + b"garbage")


POISONERS = {
    "/v1/two": ("GET", second_response, 200, b"ok"),
    "/v1/head": ("HEAD", head_with_body, 200, b""),
    "/v1/no-content": ("GET", no_content_with_body, 204, b""),
    "/v1/stray": ("GET", stray_text, 200, b"ok"),
}


@pytest.mark.parametrize("path", sorted(POISONERS))
async def test_bytes_after_a_response_never_reach_the_next_request(
    start_gateway: GatewayFactory, seed: Seed, database_url: str, path: str
) -> None:
    """Finding 2: bytes after the end of a response poison the connection; the next
    request gets its own answer on a new one."""
    method, behaviour, status, body = POISONERS[path]
    key = await seed.key()
    async with raw_upstream({path: behaviour}) as upstream:
        gateway = await start_gateway(make_config(database_url, upstream.url))
        headers = {"Authorization": f"Bearer {key.key}"}
        async with aiohttp.ClientSession() as session:
            async with session.request(method, gateway.make_url(path), headers=headers) as r:
                assert (r.status, await r.read()) == (status, body)
            async with session.get(gateway.make_url("/v1/after"), headers=headers) as r:
                assert (r.status, await r.read()) == (200, b"ok")
        assert [r.connection for r in upstream.received] == [0, 1]
        assert upstream.accepted == 2


async def test_an_answer_before_the_request_body_ends_the_connection(
    start_gateway: GatewayFactory, seed: Seed, database_url: str
) -> None:
    """An upstream that answers before reading the body leaves its framing unknown: the
    client gets that answer, and the upstream connection is closed, not pooled."""
    key = await seed.key()
    answered = asyncio.Event()

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer(b"early", "413 Content Too Large"))
        answered.set()
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass  # whatever still comes, until the gateway closes
        writer.close()

    server = await asyncio.start_server(early, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gateway = await start_gateway(make_config(database_url, f"http://127.0.0.1:{port}"))
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(
            f"POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key.key}\r\n"
            "Content-Length: 100000\r\n\r\n".encode()
            + b"x" * 10
        )
        await asyncio.wait_for(answered.wait(), 10)
        writer.write(b"y" * (100000 - 10))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 413")
        writer.close()
        pool = gateway.app[UPSTREAM]
        await wait_for(lambda: pool.open_connections == 0)
    finally:
        server.close()
        await server.wait_closed()


# -- Expect: 100-continue ---------------------------------------------------------------


async def test_refused_request_gets_its_final_status_without_100_continue(
    gateway: TestServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer gp_nope\r\n"
        b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 401 ")
    assert b"connection: close" in head.lower()
    writer.close()


async def test_authorised_request_gets_100_continue_then_its_answer(
    start_gateway: GatewayFactory, seed: Seed, database_url: str
) -> None:
    key = await seed.key()
    async with raw_upstream() as upstream:
        gateway = await start_gateway(make_config(database_url, upstream.url))
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(
            f"POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key.key}\r\n"
            "Expect: 100-continue\r\nContent-Length: 5\r\n\r\n".encode()
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert upstream.received == []  # nothing forwarded before the body came
        writer.write(b"hello")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ")
        writer.close()
        (received,) = upstream.received
        assert received.body == b"hello"
        assert received.header("Expect") == []


async def test_unknown_expectation_is_refused(gateway: TestServer) -> None:
    raw = await exchange(
        gateway.port, b"GET /v1/customers HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n"
    )
    assert status_codes(raw) == [417]


# -- forwarding headers -----------------------------------------------------------------

CLIENT_CLAIMS = {
    "X-Real-IP": "10.9.9.9",
    "True-Client-IP": "10.9.9.9",
    "Forwarded": "for=10.9.9.9;host=evil.example",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "1",
    "X-Forwarded-Prefix": "/admin",
    "X-Forwarded-Server": "evil",
}


@pytest.mark.parametrize("trusted", [False, True])
async def test_forwarding_headers_pass_only_from_trusted_proxies(
    start_gateway: GatewayFactory, seed: Seed, database_url: str, trusted: bool
) -> None:
    key = await seed.key()
    async with raw_upstream() as upstream:
        proxy = {"trusted_proxies": ["127.0.0.1/32"] if trusted else []}
        gateway = await start_gateway(make_config(database_url, upstream.url, proxy=proxy))
        headers = {"Authorization": f"Bearer {key.key}", **CLIENT_CLAIMS}
        async with aiohttp.ClientSession() as session:
            async with session.get(gateway.make_url("/v1/customers"), headers=headers) as r:
                assert r.status == 200
        (received,) = upstream.received
        for name in CLIENT_CLAIMS:
            if name in ("Forwarded", "X-Forwarded-Host"):
                continue  # re-derived by the gateway either way: below
            assert received.header(name) == ([CLIENT_CLAIMS[name]] if trusted else []), name
        assert received.header("Forwarded") == []
        expected_host = "evil.example" if trusted else f"127.0.0.1:{gateway.port}"
        assert received.header("X-Forwarded-Host") == [expected_host]


# -- what the upstream client refuses to write ----------------------------------------------

UNSAFE = [
    ("GET", "/x", [("X-A", "a\r\nX-Injected: 1")]),
    ("GET", "/x", [("X-A", "a\nb")]),
    ("GET", "/x", [("X-A", "a\x00b")]),
    ("GET", "/x", [("X-A: b\r\nX-B", "c")]),
    ("GET", "/x", [("Content-Length: 5\tX", "c")]),
    ("GET", "/x", [("", "empty name")]),
    ("GET", "/x", [("X A", "space in name")]),
    ("GET", "/x HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /y", []),
    ("GET", "/a b", []),
    ("GET", "/caf\u00e9", []),
    ("GET /x HTTP/1.1\r\n", "/y", []),
    ("G ET", "/x", []),
]


@pytest.mark.parametrize(("method", "target", "headers"), UNSAFE)
async def test_upstream_client_refuses_fields_that_could_change_framing(
    method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    async with raw_upstream() as upstream:
        pool = UpstreamPool(upstream.url, limit=1, connect_timeout=2)
        try:
            with pytest.raises(UnsafeRequest):
                await pool.request(method, target, headers, timeout=5)
            # The slot was given back, and a sound request still goes through.
            response = await pool.request("GET", "/ok", [("X-A", "caf\u00e9\tok")], timeout=5)
            assert response.status == 200
            response.release()
        finally:
            await pool.close()
        assert [r.target for r in upstream.received] == ["/ok"]


async def test_gateway_answers_400_for_a_request_it_will_not_forward(
    start_gateway: GatewayFactory, seed: Seed, database_url: str
) -> None:
    key = await seed.key()
    async with raw_upstream() as upstream:
        gateway = await start_gateway(make_config(database_url, upstream.url))
        request = f"GET /v1/caf\u00e9 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key.key}"
        raw = await exchange(gateway.port, f"{request}\r\n\r\n".encode())
        assert status_codes(raw) == [400]
        assert upstream.received == []


# The grammar, written here apart from gateway/upstream_wire.py: RFC 9110 §5.6.2 tokens
# for the method and names, an origin-form target of visible ASCII (RFC 9112 §3.2.1), and
# values free of every control but HTAB (RFC 9110 §5.5).
REFERENCE_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
REFERENCE_TARGET = re.compile(r"/[\x21-\x7e]*")
REFERENCE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Mostly sound characters, with every control, the separators and some non-ASCII.
HOSTILE = st.text(
    st.sampled_from(
        [*'aZ09-_./~!#*:; ,"()', *map(chr, range(0x20)), "\x7f", "\x85", "\u00e9", "\u2028"]
    ),
    max_size=12,
)
METHODS = st.sampled_from(["GET", "POST", "PATCH", "DELETE"]) | HOSTILE
TARGETS = st.builds(lambda tail: "/" + tail, HOSTILE) | HOSTILE
NAMES = st.sampled_from(["Accept", "X-GrowPanel-Key-Id", "X-A"]) | HOSTILE
VALUES = st.sampled_from(["*/*", "caf\u00e9\tok", "a, b"]) | HOSTILE


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(
    method=METHODS,
    target=TARGETS,
    headers=st.lists(st.tuples(NAMES, VALUES), max_size=5),
    content_length=st.none() | st.integers(0, 10**6),
)
def test_request_head_is_written_only_from_fields_h11_reads_back(
    method: str, target: str, headers: list[tuple[str, str]], content_length: int | None
) -> None:
    """The upstream client writes a head exactly when every field is in HTTP's grammar,
    and then h11 reads back the same method, target and header fields."""
    sound = (
        REFERENCE_TOKEN.fullmatch(method) is not None
        and REFERENCE_TARGET.fullmatch(target) is not None
        and all(REFERENCE_TOKEN.fullmatch(name) for name, _ in headers)
        and not any(REFERENCE_CONTROL.search(value) for _, value in headers)
    )
    has_body = content_length is not None
    try:
        head = request_head("", "upstream.test", method, target, headers, has_body, content_length)
    except UnsafeRequest:
        assert not sound
        return
    assert sound, head
    server = h11.Connection(h11.SERVER)
    server.receive_data(head)
    event = server.next_event()
    assert isinstance(event, h11.Request), event
    assert event.method.decode() == method
    assert event.target.decode() == target
    # h11 strips the values' outer whitespace and lower-cases names, as RFC 9110 allows.
    read = [(name.decode(), value.decode("utf-8")) for name, value in event.headers]
    written = [("host", "upstream.test")]
    written += [(name.lower(), value.strip(" \t")) for name, value in headers]
    if has_body:
        written.append(("content-length", str(content_length)))
    elif method in ("POST", "PUT", "PATCH"):
        written.append(("content-length", "0"))
    assert read == written
