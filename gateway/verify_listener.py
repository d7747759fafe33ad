"""The verify listener (`proxy.verify_port`): `/_gateway/verify` on a port of its own.

An ingress asks about every request it proxies, so the verify answer is on the path of
every request. The public listener serves the same endpoint through aiohttp's web stack,
whose request and response objects cost more than the decision itself; a verify request
has no body and its answer is a head with at most a short JSON body, so this listener is
an asyncio protocol around llhttp (`httptools`, which the upstream client already uses to
read responses), and the decision is the public listener's (`ingress.VerifyEndpoint.decide`):
the same answers, headers and counting, tested side by side (tests/test_verify_listener.py).

The HTTP/1.1 it speaks:

- llhttp parses every request, strictly (no lenient flags): what it refuses is a 400 and
  the connection closes. The target must be `/_gateway/verify` or below it (else 404).
- No body is ever read: a request announcing one (`Content-Length` other than 0, or
  `Transfer-Encoding`) is answered, then the connection closes, so nothing of its body can
  be taken for a request. So is an `Upgrade` request, and any request asking to close.
- As aiohttp's strict parser has it: an HTTP/1.1 request without `Host`, or with two of a
  singleton header (`Host`, `Content-Length`, `Content-Type`, ...), is a 400; header values
  lose their trailing whitespace; the path ends at the target's first '?', or without
  one at its first '#'.
- Bounded: a target of at most 8,190 bytes (else 414), header lines of at most 8,190
  bytes, 128 of them and 64 KiB in all (else 431), counted as the bytes arrive, not only
  once a line has ended; then the connection closes.
- Pipelined requests are answered in order; reading pauses while 8 wait, or while the
  client does not read its answers, and more than 32 in one go is a 503 and a close.
- Keep-alive: from the connection's start and from each answer until the next whole head
  has arrived, at most `server.keepalive_timeout_seconds` (which also bounds a slow head).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import http
import logging
import ssl
import time
import typing

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import GatewayError, error_body, head_too_large, new_request_id, unreadable_request
from .headers import SERVER_NAME
from .ingress import JSON, PATH, Verdict, VerifyEndpoint

log = logging.getLogger("gateway")

MAX_TARGET = 8190  # aiohttp's request-line bound, so both listeners take the same targets
MAX_FIELD = 8190
MAX_HEAD = 64 * 1024  # as the proxy's MAX_HEADER_BYTES
MAX_HEADERS = 128  # aiohttp's bound
# What an unfinished head may hold: the largest whole head (target, headers and the
# request line's and header lines' other bytes). llhttp hands a header line over only
# once it has ended, and httptools keeps what has come of it until then, unbounded.
MAX_UNFINISHED = MAX_TARGET + MAX_HEAD + 32 + 2 * MAX_HEADERS
# Headers of which a request may carry one (RFC 9110), as aiohttp's strict parser has them.
SINGLETONS = frozenset((
    "content-length", "content-location", "content-range", "content-type", "etag", "host",
    "max-forwards", "server", "transfer-encoding", "user-agent",
))  # fmt: skip
MAX_WAITING = 8  # requests parsed and not yet answered before reading pauses
MAX_PIPELINED = 32  # ... and in one read, before the connection is refused


class _Refused(Exception):
    """Raised from a parser callback: the request is answered with this, then closed."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


class _Request:
    __slots__ = ("close", "head_only", "headers", "http10", "method", "target", "verdict")

    def __init__(self) -> None:
        self.method = ""
        self.target = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.close = False
        self.head_only = False
        self.http10 = False
        self.verdict: Verdict | None = None  # set at once for a request refused unread


class VerifyProtocol(asyncio.Protocol):
    """One connection of the verify listener."""

    def __init__(self, listener: VerifyListener) -> None:
        self._listener = listener
        self._endpoint = listener.endpoint
        self._loop = asyncio.get_running_loop()  # once: each lookup costs a getpid() on 3.11
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None
        self._waiting: collections.deque[_Request] = collections.deque()
        self._current = _Request()
        self._url: list[bytes] = []
        self._head_bytes = 0
        self._unfinished = 0  # bytes read since the last whole head
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._reading = True  # False: stopped for good (a close is coming)
        self._paused = False  # reading paused: waiting requests, or the client not reading
        self._write_paused = False

    # -- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = typing.cast(asyncio.Transport, transport)  # uvloop's: no subclass
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else None
        self._listener.connections.add(self)
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.forget(self)
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._maybe_resume()

    def data_received(self, data: bytes) -> None:
        if not self._reading:
            return
        self._unfinished += len(data)  # back to 0 at each whole head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The head was a whole request (queued): answered, and nothing read after it.
            self._stop_reading()
            if self._waiting:
                self._waiting[-1].close = True
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if not isinstance(refused, _Refused):
                raise
            self._refuse(refused.error)
        except httptools.HttpParserError:
            self._refuse(unreadable_request())
        else:
            if self._unfinished > MAX_UNFINISHED:
                self._refuse(head_too_large())
        self._serve_waiting()

    def shut_down(self) -> None:
        """Stop reading; close now when idle, else after the answers under way."""
        self._stop_reading()
        if self._waiting:
            self._waiting[-1].close = True
        elif self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- llhttp callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._current = _Request()
        self._url.clear()
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_bytes += len(url)
        if self._head_bytes > MAX_TARGET:
            raise _Refused(GatewayError(414, "uri_too_long", "The request target is too long."))

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._head_bytes += size
        headers = self._current.headers
        if size > MAX_FIELD or self._head_bytes > MAX_HEAD or len(headers) >= MAX_HEADERS:
            raise _Refused(head_too_large())
        # As aiohttp reads them (trailing whitespace off, values UTF-8 with the odd bytes
        # kept, one of each singleton), so both listeners judge the same strings.
        text = name.decode("latin-1")
        if text.lower() in SINGLETONS and text in headers:
            raise _Refused(unreadable_request())  # aiohttp: "Duplicate '<name>' header"
        headers.add(text, value.strip(b" \t").decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        self._unfinished = 0
        request = self._current
        parser = self._parser
        request.method = parser.get_method().decode("latin-1")
        request.target = b"".join(self._url).decode("utf-8", "surrogateescape")
        request.head_only = request.method == "HEAD"
        request.http10 = parser.get_http_version() == "1.0"
        headers = request.headers
        if not request.http10 and "Host" not in headers:
            raise _Refused(unreadable_request())  # aiohttp: "Missing 'Host' header"
        announces_body = "Transfer-Encoding" in headers or headers.get(
            "Content-Length", "0"
        ).strip() not in ("0", "")
        request.close = announces_body or not parser.should_keep_alive()
        if len(self._waiting) >= MAX_PIPELINED:
            raise _Refused(GatewayError(503, "too_many_requests", "Too many pipelined requests."))
        self._waiting.append(request)
        if request.close:
            self._stop_reading()  # nothing after this head is read, its body included
            raise _Refused(GatewayError(0, "", ""))  # stops the parser; the request is answered
        if len(self._waiting) >= MAX_WAITING:
            self._pause()

    # -- answering ----------------------------------------------------------------------

    def _refuse(self, error: GatewayError) -> None:
        """Answer what is waiting, then `error` (unless a request already closes)."""
        self._stop_reading()
        if error.status and not any(r.close for r in self._waiting):
            request = _Request()
            request.close = True
            request.verdict = _unread(error)
            self._waiting.append(request)

    def _serve_waiting(self) -> None:
        if self._waiting and self._task is None:
            self._task = self._loop.create_task(self._answer_waiting())

    async def _answer_waiting(self) -> None:
        try:
            while self._waiting and self._transport is not None:
                request = self._waiting[0]
                verdict = request.verdict or await self._decide(request)
                self._waiting.popleft()
                if self._transport is None:
                    return
                self._transport.write(_serialise(verdict, request, self._listener.date()))
                if request.close:
                    self._transport.close()
                    return
                self._maybe_resume()
        except Exception:  # a bug: this connection's framing can no longer be trusted
            log.exception("verify listener: connection dropped")
            self.abort()
            return
        finally:
            self._task = None
        self._arm_timer()

    async def _decide(self, request: _Request) -> Verdict:
        target = request.target
        path = _path_of(target)
        if not target.startswith("/") or (path != PATH and not path.startswith(PATH + "/")):
            return _unread(GatewayError(404, "not_found", f"This listener serves only {PATH}."))
        return await self._endpoint.decide(
            self._peer,
            self._listener.scheme,
            request.method,
            path,
            CIMultiDictProxy(request.headers),
        )

    # -- flow control -------------------------------------------------------------------

    def _stop_reading(self) -> None:
        self._reading = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _maybe_resume(self) -> None:
        if (
            self._paused
            and self._reading
            and not self._write_paused
            and len(self._waiting) < MAX_WAITING
            and self._transport is not None
        ):
            self._paused = False
            self._transport.resume_reading()

    def _arm_timer(self) -> None:
        """Idle from now: closed unless a whole head arrives within the keep-alive time.
        One timer, moved on lazily (`_idle`), not one per request."""
        if not self._reading or self._transport is None:
            return
        self._idle_since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(
                self._idle_since + self._listener.keepalive_timeout, self._idle
            )

    def _idle(self) -> None:
        self._timer = None
        if self._waiting or self._transport is None:
            return  # answering: re-armed after the answer
        deadline = self._idle_since + self._listener.keepalive_timeout
        if self._loop.time() >= deadline:
            self._transport.close()
        else:
            self._timer = self._loop.call_at(deadline, self._idle)


def _path_of(target: str) -> str:
    """The path of a request target as aiohttp reads one (the public listener's
    `raw_path`): up to the first '?', or without one up to the first '#'. A '#' before
    the '?' stays, and the route table refuses it (`routes.canonical_segments`)."""
    path, question, _ = target.partition("?")
    return path if question else path.partition("#")[0]


def _unread(error: GatewayError) -> Verdict:
    """A refusal made before the decision (framing, or a path not served here)."""
    request_id = new_request_id()
    headers = [("X-Request-Id", request_id), ("Server", SERVER_NAME), ("Content-Type", JSON)]
    return Verdict(error.status, headers, error_body(error, request_id).encode())


def _serialise(verdict: Verdict, request: _Request, date: str) -> bytes:
    fields = [f"{name}: {value}" for name, value in verdict.headers]
    # A line break in a header would split the answer: never written. (Three `in`s: a
    # regex search over the same text was 3% of a verify.)
    text = "".join(fields)
    if "\r" in text or "\n" in text or "\x00" in text:
        raise ValueError("a response header carries a line break")
    lines = [_STATUS_LINES.get(verdict.status) or _status_line(verdict.status), *fields]
    lines.append(f"Content-Length: {len(verdict.body)}")
    lines.append(f"Date: {date}")
    if request.close:
        lines.append("Connection: close")
    elif request.http10:  # kept open, which HTTP/1.0 assumes only when told
        lines.append("Connection: keep-alive")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return data if request.head_only else data + verdict.body


def _status_line(status: int) -> str:
    return f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"


_STATUS_LINES = {s: _status_line(s) for s in (200, 400, 401, 403, 404, 429, 500, 503)}


class VerifyListener:
    """The listening socket and its connections; `close` lets answers under way finish."""

    def __init__(
        self, endpoint: VerifyEndpoint, *, scheme: str = "http", keepalive_timeout: float = 75.0
    ) -> None:
        self.endpoint = endpoint
        self.scheme = scheme
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[VerifyProtocol] = set()
        self._server: asyncio.Server | None = None
        self._second = 0
        self._date = ""
        self._drained: asyncio.Future[None] | None = None

    async def start(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: VerifyProtocol(self),
            host,
            port,
            reuse_port=reuse_port or None,
            ssl=ssl_context,
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def date(self) -> str:
        now = int(time.time())
        if now != self._second:  # made once a second
            self._second, self._date = now, email.utils.formatdate(now, usegmt=True)
        return self._date

    async def close(self, timeout: float) -> None:
        """Stop accepting; close idle connections, and the others once answered (at most
        `timeout` seconds)."""
        if self._server is not None:
            self._server.close()
        if self.connections:
            self._drained = asyncio.get_running_loop().create_future()
            for connection in list(self.connections):
                connection.shut_down()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._drained), timeout)
        for connection in list(self.connections):
            connection.abort()

    def forget(self, connection: VerifyProtocol) -> None:
        self.connections.discard(connection)
        if not self.connections and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
