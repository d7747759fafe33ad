"""A lean HTTP/1.1 client for the one upstream, built for the forwarding hot path.

aiohttp's `ClientSession` is general (cookies, redirects, tracing, proxies, encodings) and
costs more CPU per request than the rest of the gateway together. Forwarding needs much
less: write one request head, stream a body, parse a response with llhttp (`httptools`),
hand its body over chunk by chunk, and keep the connection for the next request. This
module owns the pool (connect, TLS, idle connections, the one retry of a stale one, the
timeout of an exchange); `gateway.upstream_wire` owns what goes over one connection, and
why no text can change its framing.

A connection goes back to the pool only when the whole response was read, the whole
request was sent before it began, and both sides allow keep-alive.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from typing import cast

from yarl import URL

from .upstream_wire import (
    Connection,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
    request_head,
    time_out,
)

log = logging.getLogger("gateway.upstream")

# RFC 9110 §9.2.2: the methods a request of which may be sent twice to the same effect.
# Only these are retried on a fresh connection: an upstream that closed without answering
# may have acted on the request before it died.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


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
        self._idle: collections.deque[Connection] = collections.deque()
        self._open: set[Connection] = set()

    async def close(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._idle.clear()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: Connection(self), self.host, self.port, ssl=self.ssl
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

    def _take_idle(self) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # most recently used: likeliest still open
            if not connection.closed and now - connection.idle_since < self.idle_timeout:
                return connection
            connection.close()
            self._open.discard(connection)
        return None

    def _return(self, connection: Connection, reusable: bool) -> None:
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
            head = request_head(
                self.base_path,
                self.host_header,
                method,
                target,
                headers,
                body is not None,
                content_length,
            )
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
                    # long as no request body was consumed, no response byte came back,
                    # and sending the request again cannot do twice what it asks.
                    stale = (
                        type(exc) is UpstreamError
                        and reused
                        and attempt == 0
                        and body is None
                        and not connection.received_any
                        and method in _IDEMPOTENT
                    )
                    if not stale:
                        raise
            raise AssertionError("unreachable")
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(
        self,
        connection: Connection,
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
            timer = asyncio.get_running_loop().call_later(timeout, time_out, response.head_received)
            try:
                await response.head_received
            finally:
                timer.cancel()
            return response
        # An answer (or a failure) ends any wait for the upstream to take more of the
        # body: one that answered early may never read the rest, and it is not wanted.
        response.head_received.add_done_callback(connection.stop_writing)
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
