"""A lean HTTP/1.1 client for the one upstream, built for the forwarding hot path.

aiohttp's `ClientSession` is general (cookies, redirects, tracing, proxies, encodings) and
costs more CPU per request than the rest of the gateway together. Forwarding needs much
less: write one request head, stream a body, parse a response with llhttp (`httptools`),
hand its body over chunk by chunk, and keep the connection for the next request. This
module does only that, on plain asyncio protocols with back-pressure both ways.

Framing is this module's own, on both sides, because a proxy that lets any text decide
it can be desynchronised (request smuggling, response splitting):

- The request head is built from validated fields only: a method and header names that
  are RFC 9110 tokens, a target and header values without CR, LF, NUL or other controls.
  Anything else is refused (`UnsafeRequest`) before a byte is written. The body framing
  (Content-Length or chunked) is the caller's decision, passed in, never read back from
  header text, and the bytes sent must add up to the length declared.
- A response is parsed to its end and no further (RFC 9112 §6: a response to HEAD, and a
  1xx/204/304 response, has no body; otherwise Content-Length or chunked frames it, and
  without either the body runs until the upstream closes). Interim 1xx answers are
  skipped. Any byte after the final response (a second response, a body where none can
  be, stray text), a response that starts before the request body was sent, or anything
  llhttp refuses poisons the connection: it is closed, never reused, and the request
  fails (`UpstreamError` before the head, `UpstreamBodyError` after) unless its answer
  was already complete.

A connection goes back to the pool only when the whole response was read, the whole
request was sent before it began, and both sides allow keep-alive.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import re
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from typing import cast

import httptools
from yarl import URL

log = logging.getLogger("gateway.upstream")

_NO_BODY_STATUS = frozenset({204, 304})
_HIGH_WATER = 256 * 1024  # buffered response bytes before we stop reading the socket

# RFC 9110 §5.6.2: a token (a method, a header name).
_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TOKEN = re.compile(_TCHAR + "+")
# Header names joined by LF: one regex call checks them all, and an empty name cannot
# hide between two others.
_NAMES = re.compile(f"{_TCHAR}+(?:\n{_TCHAR}+)*")
# Controls other than CR, LF (counted apart) and HTAB (allowed in values, RFC 9110 §5.5).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# An origin-form target (RFC 9112 §3.2.1): visible ASCII only, no space, no controls.
_TARGET = re.compile(r"/[!-~]*")


class UpstreamError(Exception):
    """The upstream could not be reached or broke the protocol before the response head."""

    def __init__(self, message: str, kind: str = "protocol") -> None:
        super().__init__(message)
        self.kind = kind  # "connect", "protocol" or "timeout": a metric label


class UpstreamTimeout(UpstreamError):
    """No response head within the timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "timeout")


class UpstreamBodyError(Exception):
    """The upstream failed while sending the response body (after the head)."""


class UnsafeRequest(ValueError):
    """A request the upstream client refuses to write: a field that could change framing."""


class _Stray(Exception):
    """Raised from a parser callback to stop llhttp at bytes past the final response."""


class _Connection(asyncio.Protocol):
    """One TCP connection; parses responses and buffers body chunks with back-pressure."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.received_any = False
        self.request_sent = False  # the whole request, body included, was written
        self._final = False  # the head of the final (non-1xx) response was parsed
        self._writable = asyncio.Event()
        self._writable.set()
        self._response: UpstreamResponse | None = None
        self._parser: httptools.HttpResponseParser | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self._parser is None:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except Exception as exc:  # llhttp's errors, an upgrade, or `_Stray` from a callback
            self._poison(f"invalid response from upstream: {exc.__context__ or exc}")

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost does the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._writable.set()
        response = self._response
        if response is not None and not response.complete:
            if response.head_received and response.close_delimited:
                response.finish()  # the close *is* the end of such a body
            else:
                self._fail(UpstreamError("upstream closed the connection"))

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._final:  # a second response after the one this request gets
            raise _Stray("bytes after the end of the response")

    def on_status(self, status: bytes) -> None:
        assert self._response is not None
        self._response.reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._response is not None
        # As aiohttp does: bytes that are not UTF-8 survive the round trip as surrogates.
        self._response.raw_headers.append(
            (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None and self._parser is not None
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue and friends: wait for the real response
            if status == 101:  # we never ask to switch protocols
                raise _Stray("unrequested 101 Switching Protocols")
            response.raw_headers.clear()
            return
        self._final = True
        response.status = status
        # An answer that began before the request body was all sent (handed to the
        # kernel, not just to the transport's buffer) leaves the upstream's reading of
        # that body unknown: the connection ends with this response.
        sent = self.request_sent and not self._buffered()
        response.keep_alive = sent and self._parser.should_keep_alive()
        framed = any(
            name.lower() in ("content-length", "transfer-encoding")
            for name, _ in response.raw_headers
        )
        no_body = response.method == "HEAD" or status in _NO_BODY_STATUS
        response.close_delimited = not framed and not no_body
        if not response.head_received.done():
            response.head_received.set_result(None)
        if no_body:
            response.finish()

    def on_body(self, body: bytes) -> None:
        assert self._response is not None
        if self._response.complete:  # a body after a HEAD, 204 or 304 answer
            raise _Stray("a body where the response has none")
        self._response.feed(body)

    def on_message_complete(self) -> None:
        response = self._response
        if response is not None and response.status >= 200:
            response.finish()

    # -- use by the pool ----------------------------------------------------------------

    def start(self, response: UpstreamResponse) -> None:
        self.received_any = False
        self.request_sent = False
        self._final = False
        self._response = response
        self._parser = httptools.HttpResponseParser(self)

    def done(self) -> None:
        self._response = None
        self._parser = None

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def send(self, data: bytes) -> None:
        """Hand `data` to the transport, which buffers what the socket cannot take yet."""
        if self.closed or self.transport is None:
            raise UpstreamError("upstream closed the connection")
        self.transport.write(data)

    async def write(self, data: bytes) -> None:
        """`send`, then wait while the transport's buffer is over its high-water mark."""
        self.send(data)
        if not self._writable.is_set():
            await self._writable.wait()

    def _buffered(self) -> int:
        return 0 if self.transport is None else self.transport.get_write_buffer_size()

    def _fail(self, exc: Exception) -> None:
        if self._response is not None:
            self._response.fail(exc)

    def _poison(self, reason: str) -> None:
        """Framing doubt: fail an unfinished response, close, and stop parsing for good."""
        self._parser = None
        response = self._response
        if response is not None:
            response.keep_alive = False
            if not response.complete:
                self._fail(UpstreamError(reason))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """Status, headers as received, and the body as an async iterator of chunks."""

    def __init__(self, connection: _Connection, method: str) -> None:
        self._connection = connection
        self.method = method
        self.status = 0
        self.reason = ""
        self.raw_headers: list[tuple[str, str]] = []
        self.keep_alive = False
        self.close_delimited = False
        self.complete = False
        self.head_received: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._error: Exception | None = None
        self._ready = asyncio.Event()
        self._released = False

    # called by the connection
    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._ready.set()
        if self._buffered > _HIGH_WATER:
            self._connection.pause_reading()

    def finish(self) -> None:
        self.complete = True
        self._ready.set()

    def fail(self, exc: Exception) -> None:
        self._error = exc
        if not self.head_received.done():
            self.head_received.set_exception(exc)
            self.head_received.exception()  # retrieved: the waiter re-raises it
        self._ready.set()

    async def iter_chunks(self, read_timeout: float) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered <= _HIGH_WATER // 2:
                    self._connection.resume_reading()
                yield chunk
                continue
            if self.complete:
                return
            if self._error is not None:
                raise UpstreamBodyError(str(self._error))
            self._ready.clear()
            try:
                async with asyncio.timeout(read_timeout):
                    await self._ready.wait()
            except TimeoutError:
                raise UpstreamBodyError("upstream stopped sending the body") from None

    def release(self) -> None:
        """Give the connection back if it can carry another request, else close it."""
        if self._released:
            return
        self._released = True
        connection = self._connection
        connection.done()
        reusable = (
            self.complete and self.keep_alive and not self.close_delimited and not self._chunks
        )
        connection.pool._return(connection, reusable)


def _time_out(head_received: asyncio.Future[None]) -> None:
    if not head_received.done():
        head_received.set_exception(UpstreamTimeout("no response from the upstream in time"))


class UpstreamPool:
    """Keep-alive connections to one upstream, at most `limit` at a time."""

    def __init__(
        self,
        base_url: str,
        *,
        limit: int,
        connect_timeout: float,
        idle_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https"):
            raise ValueError(f"unsupported upstream scheme: {url.scheme!r}")
        self.host = url.host or "127.0.0.1"
        self.port = url.port or (443 if url.scheme == "https" else 80)
        # TLS to an https upstream, verified (hostname included) against the system's CA
        # store, or the context given (proxy.upstream_ca: a private CA).
        self.ssl = None
        if url.scheme == "https":
            self.ssl = ssl_context or ssl.create_default_context()
        self._tls_logged_at = -math.inf
        self.base_path = url.raw_path.rstrip("/")
        self.host_header = url.raw_host or self.host
        if not url.is_default_port():
            self.host_header += f":{self.port}"
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._slots = asyncio.Semaphore(limit)
        self._idle: collections.deque[_Connection] = collections.deque()
        self._open: set[_Connection] = set()

    async def close(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._idle.clear()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl
                )
        except TimeoutError:
            raise UpstreamError("timed out connecting to the upstream", "connect") from None
        except ssl.SSLError as exc:
            # A misconfiguration rather than an outage: say what was refused, in the log
            # (at most every 10 s: each request tries again).
            reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
            message = f"TLS with the upstream {self.host}:{self.port} failed: {reason}"
            now = time.monotonic()
            if now - self._tls_logged_at >= 10:
                self._tls_logged_at = now
                log.error(message)
            raise UpstreamError(message, "tls") from None
        except OSError as exc:
            message = f"cannot connect to the upstream: {exc.strerror or exc}"
            raise UpstreamError(message, "connect") from None
        self._open.add(connection)
        return connection

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # most recently used: likeliest still open
            if not connection.closed and now - connection.idle_since < self.idle_timeout:
                return connection
            connection.close()
            self._open.discard(connection)
        return None

    def _return(self, connection: _Connection, reusable: bool) -> None:
        if reusable and not connection.closed:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
            self._open.discard(connection)
        self._slots.release()

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: AsyncIterator[bytes] | None = None,
        *,
        content_length: int | None = None,
        timeout: float,
    ) -> UpstreamResponse:
        """Send a request and wait for the response head (at most `timeout` seconds).

        `target` is the raw path and query; the base path of the upstream URL is prefixed.
        The caller must `release()` the response when done with it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._slots.locked():
            # Every connection is busy: waiting for one counts toward the timeout, or the
            # requests queued behind a silent upstream would each wait several timeouts.
            try:
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
            except TimeoutError:
                raise UpstreamTimeout("no upstream connection free in time") from None
        else:
            await self._slots.acquire()
        try:
            # The body framing is decided here, once, from what the caller knows: the
            # length when it has one, else chunked. Nothing downstream re-reads it.
            chunked = body is not None and content_length is None
            head = self._head(method, target, headers, body is not None, content_length)
            for attempt in (0, 1):
                connection = self._take_idle()
                reused = connection is not None
                if connection is None:
                    connection = await self._connect()
                response = UpstreamResponse(connection, method)
                connection.start(response)
                try:
                    remaining = deadline - loop.time()
                    return await self._exchange(
                        connection, response, head, body, content_length, chunked, remaining
                    )
                except BaseException as exc:
                    # Whatever went wrong (a timeout, a body that was refused, a broken
                    # connection), a half-used connection is never reused.
                    connection.done()
                    connection.close()
                    self._open.discard(connection)
                    # An idle connection the upstream had just closed is retried once, as
                    # long as no request body was consumed and no response byte came back.
                    stale = (
                        type(exc) is UpstreamError
                        and reused
                        and attempt == 0
                        and body is None
                        and not connection.received_any
                    )
                    if not stale:
                        raise
            raise AssertionError("unreachable")
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(
        self,
        connection: _Connection,
        response: UpstreamResponse,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        content_length: int | None,
        chunked: bool,
        timeout: float,
    ) -> UpstreamResponse:
        if body is None:
            # Most requests: the head is all there is to send, and the transport buffers
            # it whole (heads are bounded: 431 over 64 KiB), so the wait for the answer
            # needs a timer, not a cancel scope: ~10 µs less per request.
            connection.send(head)
            connection.request_sent = True
            timer = asyncio.get_running_loop().call_later(
                timeout, _time_out, response.head_received
            )
            try:
                await response.head_received
            finally:
                timer.cancel()
            return response
        try:
            async with asyncio.timeout(timeout):
                await connection.write(head)
                sent = 0
                async for chunk in body:
                    if response.head_received.done():
                        break  # answered early: the rest is not wanted (and not reused)
                    if not chunk:
                        continue
                    sent += len(chunk)
                    if chunked:
                        await connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    elif sent > cast(int, content_length):
                        raise UpstreamError("request body longer than its Content-Length")
                    else:
                        await connection.write(chunk)
                else:
                    if chunked:
                        await connection.write(b"0\r\n\r\n")
                    elif sent != content_length:
                        raise UpstreamError("request body shorter than its Content-Length")
                    connection.request_sent = not response.head_received.done()
                await response.head_received
        except TimeoutError:
            raise UpstreamTimeout("no response from the upstream in time") from None
        except ConnectionError as exc:
            raise UpstreamError(f"upstream connection failed: {exc}") from None
        return response

    def _head(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        has_body: bool,
        content_length: int | None,
    ) -> bytes:
        target = self.base_path + target
        if not (_TOKEN.fullmatch(method) and _TARGET.fullmatch(target)):
            raise UnsafeRequest("request line with characters outside HTTP's grammar")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if has_body:
            if content_length is not None:
                lines.append(f"Content-Length: {content_length}")
            else:
                lines.append("Transfer-Encoding: chunked")
        elif method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0")
        lines.append("\r\n")
        head = "\r\n".join(lines)
        # Values are checked on the whole head at once: CR and LF only where the lines
        # above put them, and no other control but HTAB.
        breaks = len(lines)
        if head.count("\n") != breaks or head.count("\r") != breaks or _CONTROL.search(head):
            raise UnsafeRequest("a header field with a control character")
        if headers and not _NAMES.fullmatch("\n".join([name for name, _ in headers])):
            raise UnsafeRequest("a header name outside HTTP's token grammar")
        return head.encode("utf-8", "surrogateescape")
