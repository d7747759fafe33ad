"""Step 7 of the pipeline: forward an authorised request upstream and relay the answer.

`Forwarder` owns the request body (size limit, `100 Continue` sent only now), the
mapping of upstream failures to 413/400/502/504, and the relay of the answer: small
bodies of known length in one write, the rest streamed with a timeout per write so a
client that stops reading cannot hold the upstream connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from . import metrics
from .config import ProxyConfig
from .errors import GatewayError, Outcome
from .headers import (
    ClientAddress,
    copy_response_headers,
    identity_headers,
    upstream_request_headers,
)
from .records import KeyRecord
from .upstream import UpstreamPool
from .upstream_wire import (
    UnsafeRequest,
    UpstreamBodyError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from .proxy import Call

log = logging.getLogger("gateway.proxy")

_CHUNK = 64 * 1024


class BodyTooLarge(Exception):
    pass


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(413, "request_too_large", f"The request body exceeds {limit} bytes.")


SMALL_BODY = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})


def _small_body_length(upstream: UpstreamResponse, method: str) -> int | None:
    """The body length when the whole answer may be sent in one write, else None."""
    if method == "HEAD" or upstream.status in _NO_BODY_STATUSES or upstream.status < 200:
        return None  # their Content-Length describes a body that is not there
    for name, value in upstream.raw_headers:
        if name.lower() == "content-length":
            return int(value) if value.isdigit() and int(value) <= SMALL_BODY else None
    return None


class Forwarder:
    def __init__(self, config: ProxyConfig, upstream: UpstreamPool) -> None:
        self.config = config
        self.upstream = upstream

    async def forward(
        self, request: web.Request, call: Call, client: ClientAddress, key: KeyRecord
    ) -> web.StreamResponse:
        """Send the request upstream and relay its answer; a failure to reach it or an
        unsafe request is a `GatewayError` before anything is sent to the client."""
        config = self.config
        body: AsyncIterator[bytes] | None = None
        length = None
        if request.body_exists:
            length = request.content_length
            if length is not None and length > config.max_body_bytes:
                raise body_too_large(config.max_body_bytes)
            body = self._stream_body(request, config.max_body_bytes)
        headers = upstream_request_headers(
            request.headers,
            client=client,
            request_id=call.request_id,
            identity=identity_headers(key),
            forward_authorization=config.forward_authorization,
        )
        target = request.rel_url.raw_path
        if request.rel_url.raw_query_string:
            target += "?" + request.rel_url.raw_query_string
        started = time.perf_counter()
        try:
            upstream = await self.upstream.request(
                request.method,
                target,
                headers,
                body,
                content_length=length,
                timeout=config.timeout_seconds,
            )
        except BodyTooLarge:
            raise body_too_large(config.max_body_bytes) from None
        except UnsafeRequest as exc:
            raise GatewayError(400, "invalid_request", f"The request was refused: {exc}.") from None
        except UpstreamTimeout:
            metrics.UPSTREAM_ERRORS.labels("timeout").inc()
            raise GatewayError(
                504, "upstream_timeout", "The upstream did not answer in time."
            ) from None
        except UpstreamError as exc:
            metrics.UPSTREAM_ERRORS.labels(exc.kind).inc()
            raise GatewayError(
                502, "upstream_unavailable", "The upstream could not be reached."
            ) from None
        metrics.upstream_duration.observe(time.perf_counter() - started)
        try:
            call.outcome = Outcome.of_status(upstream.status)
            small = _small_body_length(upstream, request.method)
            if small is not None:
                return await self._relay_small(upstream, call, small)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            copy_response_headers(upstream.raw_headers, response.headers)
            response.headers.update(call.extra_headers)
            response.headers["X-Request-Id"] = call.request_id
            try:
                await response.prepare(request)
                async for chunk in upstream.iter_chunks(config.timeout_seconds):
                    # A client that stops reading (slow-read) must not hold the upstream
                    # connection: each write gets the timeout each upstream read gets.
                    async with asyncio.timeout(config.timeout_seconds):
                        await response.write(chunk)
                await response.write_eof()
            except (ConnectionError, TimeoutError):
                # The client left (aiohttp raises plain ConnectionError as well as
                # ConnectionResetError) or stopped reading: nobody to answer.
                call.client_gone = True
                if request.transport is not None:
                    request.transport.abort()
            except UpstreamBodyError as exc:
                # Headers are sent: all we can honestly do is cut the connection.
                metrics.UPSTREAM_ERRORS.labels("protocol").inc()
                call.outcome = Outcome.UPSTREAM_5XX
                log.warning(
                    "upstream failed mid-body: %s", exc, extra={"request_id": call.request_id}
                )
                if request.transport is not None:
                    request.transport.abort()
            return response
        finally:
            upstream.release()

    async def _relay_small(
        self, upstream: UpstreamResponse, call: Call, length: int
    ) -> web.Response:
        """A body of known, small length: read it, then send headers and body in one write.

        Streaming costs a write for the headers, one per chunk and one for the end; for
        the typical API answer of a few KiB that is most of a proxy's system calls. The
        bound (`SMALL_BODY`) keeps memory per request small, and reading first means an
        upstream that breaks mid-body still gets an honest 502 instead of a cut connection.
        """
        chunks = []
        try:
            async for chunk in upstream.iter_chunks(self.config.timeout_seconds):
                chunks.append(chunk)
        except UpstreamBodyError:
            metrics.UPSTREAM_ERRORS.labels("protocol").inc()
            raise GatewayError(
                502, "upstream_unavailable", "The upstream failed while answering."
            ) from None
        body = b"".join(chunks)
        if len(body) != length:  # cannot happen with a sound parser: refuse, never guess
            raise GatewayError(502, "upstream_unavailable", "The upstream answer was truncated.")
        response = web.Response(status=upstream.status, reason=upstream.reason, body=body)
        copy_response_headers(upstream.raw_headers, response.headers, skip_length=True)
        response.headers.update(call.extra_headers)
        response.headers["X-Request-Id"] = call.request_id
        return response

    @staticmethod
    async def _stream_body(request: web.Request, limit: int) -> AsyncIterator[bytes]:
        if expects_continue(request):
            # The request passed every check and the upstream wants its body: now the
            # client may send it (aiohttp's own expect handler is disabled in app.py).
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        seen = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            seen += len(chunk)
            if seen > limit:
                raise BodyTooLarge
            yield chunk


def expects_continue(request: web.Request) -> bool:
    expect = request.headers.get("Expect")
    return (
        expect is not None
        and expect.strip().lower() == "100-continue"
        and request.version >= (1, 1)
    )
