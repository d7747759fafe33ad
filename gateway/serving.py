"""Serving: the listeners of one process, or a supervisor with its workers.

`serve_one` runs the proxy (with its verify listener, if configured) and (unless it is a
worker) the admin listener in this process;
`serve_supervised` runs N proxy workers sharing the port (`gateway.workers`) and the admin
listener beside them. Both stop on SIGTERM/SIGINT after in-flight requests finish, and
reload TLS files on SIGHUP. The `gateway serve` command (`gateway.cli`) checks the schema
first, then calls one of them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import ssl
import types
from collections.abc import Callable, Mapping
from typing import Any, cast

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from . import metrics
from .config import Config, ServerConfig
from .errors import (
    GatewayError,
    error_body,
    error_response,
    http_error,
    internal_error,
    new_request_id,
    unreadable_request,
)
from .headers import SERVER_NAME
from .tls import Reloader
from .verify_listener import VerifyListener

log = logging.getLogger("gateway")


# CPython's cyclic collector runs generation 0 after every 700 net allocations of
# containers and then walks every tracked object of the generations it collects. A
# serving gateway allocates for each request and keeps many long-lived containers (cached
# keys, rate-limit windows), so with the defaults collections took 17-41 µs a request,
# more the more keys were cached (full collections walk the whole cache). Its garbage is
# almost all freed by reference counting, so running the collector ~14 times less often
# costs little memory. Measured side by side (two processes, alternating 6-s runs): 2-4%
# less CPU a request on the hot path, ~14% with 10,000 keys in use.
GC_THRESHOLDS = (10_000, 10, 10)


def _tune_gc() -> None:
    """Once serving: what start-up made is never garbage, and collect less often."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _on_sighup(reload: Callable[[], object]) -> None:
    """SIGHUP reloads the TLS certificate files (renewed certificates, no restart)."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


class _Handler(RequestHandler):
    """aiohttp's connection handler, but a request its parser refuses gets the gateway's
    JSON error. aiohttp's own is plain text that quotes the offending bytes (a key among
    them) under its and Python's versions."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises once answering
        if status >= 500:  # a handler's failure; the middlewares answer those first
            error = GatewayError(status, "internal_error", internal_error().message)
        else:
            error = unreadable_request(status)
        request_id = new_request_id()
        response = web.Response(
            status=error.status,
            text=error_body(error, request_id),
            content_type="application/json",
            headers={"X-Request-Id": request_id, "Server": SERVER_NAME},
        )
        response.force_close()
        return response

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        # An HTTP error of aiohttp's own that no middleware rendered: on the public
        # listener, which has none, the router's 404 for a target that is not a path
        # (`OPTIONS *`, `CONNECT host:443`, `GET http://host`). Else it went out as text,
        # under aiohttp's and Python's versions.
        if isinstance(resp, web.HTTPException) and resp.status >= 400:
            resp = error_response(cast(web.Request, request), http_error(resp))
        return await super().finish_response(request, resp, start_time)


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


# What `web.Server` calls to make each request object (aiohttp's own alias is private).
_RequestFactory = Callable[
    [RawRequestMessage, StreamReader, RequestHandler, AbstractStreamWriter, "asyncio.Task[None]"],
    BaseRequest,
]


def _last_if_chunked(make: _RequestFactory) -> _RequestFactory:
    """`make`, but a chunked request is the last of its connection (`Connection: close`).

    aiohttp's parser keeps the last trailer field of a chunked body and adds it to the
    head of the next request on the connection: an `Authorization` trailer authenticated
    the request after it, which behind a proxy sharing its connections is another
    client's. Trailers come only after chunked bodies, so no request follows one.
    """

    def made(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> BaseRequest:
        if message.chunked and not message.should_close:
            message = message._replace(should_close=True)
        return make(message, payload, protocol, writer, task)

    return made


class _Runner(web.AppRunner):
    """`web.AppRunner` whose connections are handled by `_Handler`, and end with a chunked
    request (`_last_if_chunked`)."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _Server(
            made.request_handler,
            request_factory=_last_if_chunked(made.request_factory),
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )


async def _start_listener(
    name: str,
    app: web.Application,
    host: str,
    port: int,
    server: ServerConfig,
    reuse_port: bool,
    ssl_context: ssl.SSLContext | None = None,
    options: Mapping[str, Any] = types.MappingProxyType({}),
) -> web.AppRunner:
    """`app` served on `host`:`port`, with aiohttp's server `options` besides these."""
    # aiohttp's keep-alive timer runs from the connection's start (and from each response)
    # until a whole request head has arrived, so it bounds slow heads as well as idle
    # connections; its default is an hour.
    runner = _Runner(
        app,
        access_log=None,
        shutdown_timeout=server.shutdown_timeout_seconds,
        keepalive_timeout=server.keepalive_timeout_seconds,
        **options,
    )
    await runner.setup()
    try:
        await web.TCPSite(
            runner, host, port, reuse_port=reuse_port or None, ssl_context=ssl_context
        ).start()
    except BaseException:
        await runner.cleanup()
        raise
    scheme = "https" if ssl_context is not None else "http"
    log.info("listening", extra={"listener": name, "url": f"{scheme}://{host}:{port}"})
    return runner


async def serve_one(config: Config, *, worker: bool) -> None:
    """The proxy and (unless this is a worker) the admin listener, in this process."""
    from admin.app import create_admin_app
    from admin.health import LISTENER_CHECK

    from .app import LISTENER, SERVER_OPTIONS, create_app

    stop = _stop_event()
    if worker:
        from .workers import stop_with_parent

        stop_with_parent()
    tls = Reloader()
    # The handler before the files: the supervisor passes SIGHUP only to a worker that
    # has it, so one that has not yet is sure to read the files after the signal.
    _on_sighup(tls.reload)
    proxy_tls = tls.server_context(config.proxy.tls, "proxy.tls")
    admin_tls = None if worker else tls.server_context(config.admin.tls, "admin.tls")
    runners: list[web.AppRunner] = []
    verify: VerifyListener | None = None
    try:
        proxy_app = None
        if config.proxy.enabled:
            proxy_app = create_app(config)
            runners.append(
                await _start_listener(
                    "proxy",
                    proxy_app,
                    config.proxy.host,
                    config.proxy.port,
                    config.server,
                    worker,
                    proxy_tls,
                    SERVER_OPTIONS,
                )
            )
            if config.proxy.verify_port:
                verify = await _start_verify_listener(proxy_app, config, worker, proxy_tls)
        if not worker:
            metrics.PROXY_PROCESSES.set(1 if proxy_app is not None else 0)
        if config.admin.enabled and not worker:
            admin_app = create_admin_app(config)
            if proxy_app is not None:
                listener = proxy_app[LISTENER]
                admin_app[LISTENER_CHECK] = lambda: (
                    None if listener.connected.is_set() else "listener disconnected"
                )
            runners.append(
                await _start_listener(
                    "admin",
                    admin_app,
                    config.admin.host,
                    config.admin.port,
                    config.server,
                    False,
                    admin_tls,
                )
            )
        _tune_gc()
        await stop.wait()
        log.info("shutting down: finishing in-flight requests, then flushing")
    finally:
        if verify is not None:  # first: its answers under way still need the proxy's pool
            await verify.close(config.server.shutdown_timeout_seconds)
        for runner in reversed(runners):
            await runner.cleanup()
    log.info("stopped")


async def _start_verify_listener(
    proxy_app: web.Application,
    config: Config,
    reuse_port: bool,
    ssl_context: ssl.SSLContext | None,
) -> VerifyListener:
    """`proxy.verify_port`: the proxy's verify endpoint on a port of its own."""
    from .app import VERIFY

    host, port = config.proxy.host, config.proxy.verify_port
    scheme = "https" if ssl_context is not None else "http"
    listener = VerifyListener(
        proxy_app[VERIFY],
        scheme=scheme,
        keepalive_timeout=config.server.keepalive_timeout_seconds,
    )
    await listener.start(host, port, reuse_port=reuse_port, ssl_context=ssl_context)
    log.info("listening", extra={"listener": "verify", "url": f"{scheme}://{host}:{port}"})
    return listener


async def _bind_and_close(host: str, port: int) -> None:
    """Bind as the workers will (SO_REUSEPORT), then let go: an address another process
    holds stops the start here, with the one line a single process gives (`OSError`),
    instead of workers that fail to bind and are started again for ever."""
    server = await asyncio.get_running_loop().create_server(
        asyncio.Protocol, host, port, reuse_port=True
    )
    server.close()
    await server.wait_closed()


async def serve_supervised(config: Config, workers: int, config_path: str | None) -> None:
    """N proxy workers sharing the port, the admin listener here, metrics summed."""
    from admin.app import create_admin_app
    from admin.health import LISTENER_CHECK, registry

    from .workers import MULTIPROC_ENV, Supervisor

    # `gateway.cli` prepared it before anything imported prometheus-client.
    directory = os.environ[MULTIPROC_ENV]
    stop = _stop_event()
    timeout = config.server.shutdown_timeout_seconds
    child_args = [*(["--config", config_path] if config_path else []), "serve", "--worker"]
    supervisor = Supervisor(workers, child_args, timeout)
    tls = Reloader()
    admin_tls = tls.server_context(config.admin.tls, "admin.tls")

    def reload() -> None:
        tls.reload()
        supervisor.signal(signal.SIGHUP)  # each worker reloads the proxy's files

    _on_sighup(reload)
    runner: web.AppRunner | None = None
    if config.proxy.enabled:
        for port in (config.proxy.port, config.proxy.verify_port):
            if port:
                await _bind_and_close(config.proxy.host, port)
    log.info("starting workers", extra={"workers": workers, "metrics_dir": directory})
    metrics.PROXY_PROCESSES.set(workers)  # proxy processes (cli runs one without a proxy)
    try:
        await supervisor.start()
        if config.admin.enabled:
            admin_app = create_admin_app(config)

            def listeners_connected() -> str | None:
                connected = 0.0
                for family in registry().collect():
                    if family.name == "gateway_listener_connected":
                        connected = sum(sample.value for sample in family.samples)
                alive = supervisor.alive()
                if alive < workers:
                    return f"{workers - alive} of {workers} workers down"
                if connected < workers:
                    return f"{workers - int(connected)} of {workers} listeners disconnected"
                return None

            admin_app[LISTENER_CHECK] = listeners_connected
            runner = await _start_listener(
                "admin",
                admin_app,
                config.admin.host,
                config.admin.port,
                config.server,
                False,
                admin_tls,
            )
        await stop.wait()
        log.info("shutting down: stopping workers, which finish requests and flush")
    finally:
        await supervisor.stop()
        if runner is not None:
            await runner.cleanup()
    log.info("stopped")
