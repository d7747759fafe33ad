"""One upstream connection on the wire: the request head and the response parser.

Framing is this module's own, on both sides, because a proxy that lets any text decide
it can be desynchronised (request smuggling, response splitting):

- The request head is built from validated fields only (`request_head`): a method and
  header names that are RFC 9110 tokens, a target and header values without CR, LF, NUL
  or other controls. Anything else is refused (`UnsafeRequest`) before a byte is written.
  The body framing (Content-Length or chunked) is the caller's decision, passed in, never
  read back from header text.
- A response is parsed to its end and no further (RFC 9112 §6: a response to HEAD, and a
  1xx/204/304 response, has no body; otherwise Content-Length or chunked frames it, and
  without either the body runs until the upstream closes). Interim 1xx answers are
  skipped. Any byte after the final response (a second response, a body where none can
  be, stray text), a response that starts before the request body was sent, a head or
  trailer section over 64 KiB, or anything llhttp refuses poisons the connection: it is
  closed, never reused, and the request fails (`UpstreamError` before the head,
  `UpstreamBodyError` after) unless its answer was already complete.

The pool that owns these connections is `gateway.upstream`.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, cast

import httptools

if TYPE_CHECKING:
    from .upstream import UpstreamPool

_NO_BODY_STATUS = frozenset({204, 304})
_HIGH_WATER = 256 * 1024  # buffered response bytes before we stop reading the socket
# Response bytes in a row that complete no head and carry no body byte: a head (with its
# interim answers) or a trailer section. llhttp bounds neither, and httptools keeps what
# it has of a field in memory, so without this an upstream could fill ours.
_MAX_HEAD = 64 * 1024

# RFC 9110 §5.6.2: a token (a method, a header name).
_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TOKEN = re.compile(_TCHAR + "+")
# Header names joined by LF: one regex call checks them all, and an empty name cannot
# hide between two others.
_NAMES = re.compile(f"{_TCHAR}+(?:\n{_TCHAR}+)*")
# Every byte of an encoded head but the controls (HTAB is allowed in values, RFC 9110
# §5.5): deleting these leaves the CR LF pairs the head's lines put there, and nothing
# else unless a field carried a control. One `bytes.translate` pass: a regex search over
# the head cost ~20k more instructions a proxied request (3.9 %, callgrind).
_NOT_CONTROL = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
# An origin-form target (RFC 9112 §3.2.1): visible ASCII only, no space, no controls.
_TARGET = re.compile(r"/[!-~]*")


class UpstreamError(Exception):
    """The upstream could not be reached or broke the protocol before the response head."""

    def __init__(self, message: str, kind: str = "protocol") -> None:
        super().__init__(message)
        self.kind = kind  # "connect", "protocol", "timeout" or "tls": a metric label


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


class Connection(asyncio.Protocol):
    """One TCP connection; parses responses and buffers body chunks with back-pressure."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.received_any = False
        self.request_sent = False  # the whole request, body included, was written
        self._final = False  # the head of the final (non-1xx) response was parsed
        self._progressed = False  # the bytes being parsed finished a head or held body
        self._head_bytes = 0  # bytes read since the response last progressed
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
        self._progressed = False
        try:
            self._parser.feed_data(data)
        except Exception as exc:  # llhttp's errors, an upgrade, or `_Stray` from a callback
            self._poison(f"invalid response from upstream: {exc.__context__ or exc}")
            return
        if self._progressed:
            self._head_bytes = 0
        else:
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD:
                self._poison("response head or trailers over 64 KiB")

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost does the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._writable.set()
        response = self._response
        if response is not None and not response.complete:
            if response.close_delimited and exc is None:
                response.finish()  # the close *is* the end of such a body; a reset is not
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
        # llhttp hands over what each read holds of the line: a reason split across
        # reads comes in pieces.
        self._response.reason += status.decode("latin-1")

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
            response.reason = ""
            response.raw_headers.clear()
            return
        self._final = True
        self._progressed = True
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
        self._progressed = True
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
        self._head_bytes = 0
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

    def stop_writing(self, _: object = None) -> None:
        """Wake a `write` waiting for the transport to drain: the writer stops anyway."""
        self._writable.set()

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

    def __init__(self, connection: Connection, method: str) -> None:
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


def time_out(head_received: asyncio.Future[None]) -> None:
    if not head_received.done():
        head_received.set_exception(UpstreamTimeout("no response from the upstream in time"))


def request_head(
    base_path: str,
    host_header: str,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    has_body: bool,
    content_length: int | None,
) -> bytes:
    """The request head, built from validated fields only (`UnsafeRequest` otherwise);
    the body framing is the caller's decision: `content_length`, else chunked."""
    target = base_path + target
    if not (_TOKEN.fullmatch(method) and _TARGET.fullmatch(target)):
        raise UnsafeRequest("request line with characters outside HTTP's grammar")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if has_body:
        if content_length is not None:
            lines.append(f"Content-Length: {content_length}")
        else:
            lines.append("Transfer-Encoding: chunked")
    elif method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Length: 0")
    lines.append("\r\n")
    head = "\r\n".join(lines).encode("utf-8", "surrogateescape")
    # Values are checked on the whole head at once: CR LF only where the lines above put
    # them, and no other control but HTAB.
    if head.translate(None, _NOT_CONTROL) != b"\r\n" * len(lines):
        raise UnsafeRequest("a header field with a control character")
    if headers and not _NAMES.fullmatch("\n".join([name for name, _ in headers])):
        raise UnsafeRequest("a header name outside HTTP's token grammar")
    return head
