"""The lean upstream client against real servers: framing, keep-alive, faults, back-pressure."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.embedded_pg import free_port
from gateway.upstream import UpstreamPool
from gateway.upstream_wire import (
    UpstreamBodyError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)

from .helpers import wait_for


async def read_all(response: UpstreamResponse, timeout: float = 10) -> bytes:
    parts = [chunk async for chunk in response.iter_chunks(timeout)]
    response.release()
    return b"".join(parts)


def header(response: UpstreamResponse, name: str) -> str | None:
    for key, value in response.raw_headers:
        if key.lower() == name.lower():
            return value
    return None


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    async def fixed(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.query.get("n", "10")))

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(5):
            await response.write(f"part{i};".encode())
        await response.write_eof()
        return response

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "sha256": hashlib.sha256(body).hexdigest(),
                "length": len(body),
                "te": request.headers.get("Transfer-Encoding"),
                "cl": request.headers.get("Content-Length"),
                "host": request.headers.get("Host"),
                "path": request.rel_url.raw_path_qs,
                "x": request.headers.getall("X-Multi", []),
            }
        )

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/fixed", fixed)
    app.router.add_get("/chunked", chunked)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get(r"/status/{code:\d+}", empty)
    app.router.add_get("/slow", slow)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    yield test_server
    await test_server.close()


@pytest.fixture
async def pool(server: TestServer) -> AsyncIterator[UpstreamPool]:
    upstream = UpstreamPool(
        str(server.make_url("")).rstrip("/"), limit=4, connect_timeout=2, idle_timeout=30
    )
    yield upstream
    await upstream.close()


async def test_content_length_body_and_keep_alive_reuse(pool: UpstreamPool) -> None:
    for _ in range(10):
        response = await pool.request("GET", "/fixed?n=1000", [], timeout=5)
        assert response.status == 200
        assert header(response, "Content-Length") == "1000"
        assert await read_all(response) == b"x" * 1000
    assert pool.open_connections == 1


async def test_chunked_body_is_delivered_dechunked(pool: UpstreamPool) -> None:
    response = await pool.request("GET", "/chunked", [], timeout=5)
    assert header(response, "Transfer-Encoding") == "chunked"
    assert await read_all(response) == b"part0;part1;part2;part3;part4;"
    response = await pool.request("GET", "/fixed", [], timeout=5)
    assert await read_all(response) == b"x" * 10
    assert pool.open_connections == 1


@pytest.mark.parametrize(
    ("method", "path"), [("HEAD", "/fixed?n=500"), ("GET", "/status/204"), ("GET", "/status/304")]
)
async def test_responses_without_a_body_end_at_the_head(
    pool: UpstreamPool, method: str, path: str
) -> None:
    response = await pool.request(method, path, [], timeout=5)
    assert await read_all(response) == b""
    again = await pool.request("GET", "/fixed", [], timeout=5)
    assert await read_all(again) == b"x" * 10
    assert pool.open_connections == 1


@pytest.mark.parametrize("known_length", [True, False])
async def test_request_body_is_streamed_with_its_framing(
    pool: UpstreamPool, server: TestServer, known_length: bool
) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 7)

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    response = await pool.request(
        "POST",
        "/echo",
        [("X-Multi", "a"), ("X-Multi", "b")],
        body(),
        content_length=len(payload) if known_length else None,
        timeout=10,
    )
    echo = json.loads(await read_all(response))
    assert echo["sha256"] == hashlib.sha256(payload).hexdigest()
    assert echo["te"] == (None if known_length else "chunked")
    assert echo["cl"] == (str(len(payload)) if known_length else None)
    assert echo["host"] == f"127.0.0.1:{server.port}"
    assert echo["x"] == ["a", "b"]


@contextlib.asynccontextmanager
async def pool_on_raw_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    limit: int = 2,
) -> AsyncIterator[UpstreamPool]:
    """An upstream pool on a TCP server that answers with exactly the bytes a test writes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
            await reader.read()  # until the client closes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(f"http://127.0.0.1:{port}", limit=limit, connect_timeout=2)
    try:
        yield pool
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def test_close_delimited_body_ends_at_close() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    async with pool_on_raw_server(handler) as pool:
        response = await pool.request("GET", "/", [], timeout=5)
        assert await read_all(response) == b"until the end"
        assert pool.open_connections == 0  # never reused


async def test_close_delimited_body_cut_by_a_reset_is_an_error() -> None:
    """Only an orderly close ends a body that runs until the close; a reset cuts it."""
    reset = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nfirst part")
        await writer.drain()
        await reset.wait()
        linger = struct.pack("ii", 1, 0)  # close with a reset (RST), not a FIN
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        writer.transport.abort()

    async with pool_on_raw_server(handler) as pool:
        response = await pool.request("GET", "/", [], timeout=5)
        chunks = response.iter_chunks(5)
        assert await anext(chunks) == b"first part"
        reset.set()
        with pytest.raises(UpstreamBodyError):
            async for _ in chunks:
                pass
        response.release()
        assert pool.open_connections == 0


async def test_upstream_that_dies_mid_body_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()

    async with pool_on_raw_server(handler) as pool:
        response = await pool.request("GET", "/", [], timeout=5)
        with pytest.raises(UpstreamBodyError):
            await read_all(response)
        response.release()
        assert pool.open_connections == 0


async def test_garbage_answer_is_an_upstream_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    async with pool_on_raw_server(handler) as pool:
        with pytest.raises(UpstreamError):
            await pool.request("GET", "/", [], timeout=5)
        assert pool.open_connections == 0


async def test_interim_100_continue_is_skipped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
        )
        await writer.drain()

    async with pool_on_raw_server(handler) as pool:
        response = await pool.request("GET", "/", [], timeout=5)
        assert response.status == 201
        assert await read_all(response) == b"ok"


@pytest.mark.parametrize("interim", [b"", b"HTTP/1.1 100 Continue\r\n\r\n"])
async def test_reason_phrase_split_across_reads_comes_whole(interim: bytes) -> None:
    go = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(interim + b"HTTP/1.1 299 Everything ")
        await writer.drain()
        await go.wait()
        writer.write(b"Is Fine\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with pool_on_raw_server(handler, limit=1) as pool:
        request = asyncio.create_task(pool.request("GET", "/", [], timeout=5))
        await wait_for(lambda: any(c.received_any for c in pool._open))
        go.set()
        response = await request
        assert (response.status, response.reason) == (299, "Everything Is Fine")
        assert await read_all(response) == b"ok"


async def test_refused_connection_and_timeout() -> None:
    refused = UpstreamPool(f"http://127.0.0.1:{free_port()}", limit=1, connect_timeout=2)
    with pytest.raises(UpstreamError):
        await refused.request("GET", "/", [], timeout=5)
    await refused.close()


async def test_no_head_in_time_is_a_timeout_and_frees_the_slot(pool: UpstreamPool) -> None:
    for _ in range(5):  # more than the pool's limit of 4: slots must come back
        with pytest.raises(UpstreamTimeout):
            await pool.request("GET", "/slow", [], timeout=0.2)
    response = await pool.request("GET", "/fixed", [], timeout=5)
    assert await read_all(response) == b"x" * 10


async def test_idle_connection_closed_by_the_upstream_is_retried() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        await writer.drain()
        writer.close()  # keep-alive promised, connection closed anyway

    async with pool_on_raw_server(handler, limit=1) as pool:
        for _ in range(3):
            response = await pool.request("GET", "/", [], timeout=5)
            assert await read_all(response) == b"hi"
        assert connections == 3


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_a_request_that_is_not_idempotent_is_never_sent_twice(method: str) -> None:
    """An upstream that closes a reused connection without answering may have acted on
    the request (RFC 9110 §9.2.2): a POST or PATCH is not retried, it fails."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head.split(b" ", 1)[0])
            if not head.startswith(b"GET "):
                writer.close()  # acted on it, then died before answering
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
            await writer.drain()

    async with pool_on_raw_server(handler, limit=1) as pool:
        response = await pool.request("GET", "/", [], timeout=5)
        assert await read_all(response) == b"hi"
        with pytest.raises(UpstreamError):
            await pool.request(method, "/charge", [], timeout=5)
    assert seen == [b"GET", method.encode()]


async def test_an_early_answer_is_returned_though_the_upstream_never_reads_the_body() -> None:
    """An upstream that refuses a large body at once and never reads it: its answer comes
    back, not a timeout for a write that can never finish."""
    answered = asyncio.Event()
    finished = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()
        answered.set()
        await finished.wait()  # reads nothing more, keeps the connection open

    chunk = b"x" * 65536

    async def body() -> AsyncIterator[bytes]:
        for _ in range(1024):  # 64 MiB: far more than the socket buffers hold
            yield chunk

    async with pool_on_raw_server(handler) as pool:
        length = 1024 * len(chunk)
        try:
            response = await pool.request(
                "POST", "/upload", [], body(), content_length=length, timeout=5
            )
        finally:
            finished.set()
        assert answered.is_set()
        assert response.status == 413
        assert await read_all(response) == b"big"
        assert pool.open_connections == 0  # the body was cut short: never reused


FILLER = b"a" * 1000
ENDLESS = {
    "header fields": (b"HTTP/1.1 200 OK\r\n", b"X-Filler: " + FILLER + b"\r\n"),
    "one field": (b"HTTP/1.1 200 OK\r\nX-Long: ", FILLER),
    "interim answers": (b"", b"HTTP/1.1 103 Early Hints\r\nLink: </" + FILLER + b">\r\n\r\n"),
    "trailers": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n",
        b"X-Trailer: " + FILLER + b"\r\n",
    ),
}


@pytest.mark.parametrize("kind", sorted(ENDLESS))
async def test_a_head_or_trailers_that_never_end_are_cut_off(kind: str) -> None:
    """llhttp bounds no head: an upstream that sends one without end is cut off once it
    passes 64 KiB, not read into memory until the timeout."""
    start, unit = ENDLESS[kind]
    cut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(start)
        try:
            for _ in range(8 * 1024):  # 8 MiB
                writer.write(unit)
                await writer.drain()
        except ConnectionError:
            cut.set_result(True)
            return
        cut.set_result(False)

    async def exchange() -> None:
        response = await pool.request("GET", "/", [], timeout=10)
        try:
            await read_all(response)
        finally:
            response.release()

    async with pool_on_raw_server(handler) as pool:
        request = asyncio.create_task(exchange())
        assert await asyncio.wait_for(cut, 10), "the upstream sent it all"
        with pytest.raises((UpstreamError, UpstreamBodyError)) as refused:
            await request
        assert not isinstance(refused.value, UpstreamTimeout)
        assert pool.open_connections == 0


async def test_slow_reader_bounds_the_buffer(pool: UpstreamPool) -> None:
    """A 20 MB body read slowly never buffers much more than the high-water mark."""
    response = await pool.request("GET", "/fixed?n=20000000", [], timeout=5)
    seen = 0
    peak = 0
    async for chunk in response.iter_chunks(10):
        seen += len(chunk)
        peak = max(peak, response._buffered)
        await asyncio.sleep(0)
    response.release()
    assert seen == 20_000_000
    assert peak < 2 * 1024 * 1024
