"""The request pipeline of the public listener, top to bottom (SPEC §3):

    parse → throttle admits → authenticate → authorise → limit → record → forward

`_pipeline` reads as that list. Every step before forward is `admit`, which the verify
endpoint for an ingress (`ingress.py`, `/_gateway/verify`) runs too, on the method and
path the ingress names. Every step either passes or raises a `GatewayError`, which
carries its status, code and `Outcome`; `serve` renders it (`errors.error_response`),
then counts the request (`record`: metrics, hourly usage) and writes its access-log
line, whatever happened. The verify endpoint does the same around `admit` with
`note_refusal` and `record`, so both are counted and logged alike.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from . import metrics
from .auth import (
    Authenticator,
    AuthError,
    Credentials,
    authorization_header,
    parse_authorization,
)
from .config import ProxyConfig
from .errors import (
    REQUEST_ID,
    USAGE_OUTCOMES,
    GatewayError,
    Outcome,
    error_response,
    head_too_large,
    internal_error,
    new_request_id,
)
from .forward import Forwarder, expects_continue
from .headers import ClientAddress, TrustedProxies, parse_address
from .logs import AccessLog
from .ratelimit import RateLimiter
from .records import KeyRecord
from .routes import RouteTable
from .throttle import AuthAttempt, FailedAuthThrottle
from .upstream import (
    UpstreamPool,
)
from .usage import UsageRecorder

log = logging.getLogger("gateway.proxy")


@dataclasses.dataclass(slots=True)
class Call:
    """What the pipeline learnt about one request, for the log line and the counters."""

    request_id: str
    client_ip: str
    method: str  # of the request the key is used for (the ingress's original request)
    path: str
    key: KeyRecord | None = None
    outcome: Outcome = Outcome.OK
    # gateway_auth_total's label: "ok", or the AuthError's reason; None for a request
    # refused before its key was judged (throttled, a head or expectation refused)
    auth_result: str | None = None
    status: int = 0
    client_gone: bool = False
    extra_headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


class Proxy:
    def __init__(
        self,
        config: ProxyConfig,
        authenticator: Authenticator,
        throttle: FailedAuthThrottle,
        limiter: RateLimiter,
        usage: UsageRecorder,
        upstream: UpstreamPool,
        routes: RouteTable,
        *,
        access_log: AccessLog | None = None,
    ) -> None:
        self.config = config
        self.routes = routes
        self.auth = authenticator
        self.key_format = authenticator.key_format
        self.throttle = throttle
        self.limiter = limiter
        self.usage = usage
        self.forwarder = Forwarder(config, upstream)
        self.trusted = TrustedProxies(config.trusted_proxies)
        self.access_log = access_log

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, self._pipeline)

    async def serve(self, request: web.Request, pipeline: Pipeline) -> web.StreamResponse:
        """Run `pipeline` (the proxy's, or the verify endpoint's) on a request, render a
        refusal, and count and log the request whatever happened."""
        started = time.perf_counter()
        client = ClientAddress(request.remote, request.headers, request.scheme, self.trusted)
        call = Call(
            request_id=client.incoming_request_id(request.headers) or new_request_id(),
            client_ip=client.ip,
            method=request.method,
            path=request.rel_url.raw_path,
        )
        request[REQUEST_ID] = call.request_id
        response: web.StreamResponse | None = None
        try:
            response = await pipeline(request, call, client)
        except GatewayError as exc:
            self.note_refusal(call, exc)
            response = error_response(request, exc)
            response.headers.update(call.extra_headers)
            if expects_continue(request):
                # Refused before any 100 Continue: the client keeps its body, so this
                # connection has none to skip to the next request.
                response.force_close()
        except ConnectionError:
            raise  # the client is gone: nobody to answer
        except Exception:
            # A bug: the client gets the JSON error shape, the log the traceback, and the
            # request is counted and logged like any other.
            log.exception("unhandled error", extra={"request_id": call.request_id})
            call.outcome = Outcome.INTERNAL_ERROR
            response = error_response(request, internal_error())
        finally:
            # A response we could not finish (client gone, upstream died mid-body) is
            # logged with the status that had been sent, or 499 when none was.
            call.status = 499 if response is None or call.client_gone else response.status
            self.record(call, time.perf_counter() - started)
        return response

    async def _pipeline(
        self, request: web.Request, call: Call, client: ClientAddress
    ) -> web.StreamResponse:
        _check_head(request)
        authorization = authorization_header(request.headers)
        key = await self.admit(authorization, call.method, call.path, call)
        return await self.forwarder.forward(request, call, client, key)

    async def admit(
        self, authorization: str | None, method: str, raw_path: str, call: Call
    ) -> KeyRecord:
        """Every step before forward: parse → throttle admits → authenticate → authorise
        → limit → record. The key, or a `GatewayError`; the proxy and `/_gateway/verify`
        both decide here, so an ingress refuses exactly what the proxy refuses."""
        credentials = parse_authorization(authorization, self.key_format)
        attempt = self.throttle.admit(call.client_ip, credentials.public_id)
        call.key = key = await self._authenticate(credentials, attempt)
        call.auth_result = "ok"
        self._authorise(method, raw_path, key, call)
        self._limit(key, call)
        self.usage.mark_used(key.id)
        return key

    # -- authenticate -------------------------------------------------------------------

    async def _authenticate(self, credentials: Credentials, attempt: AuthAttempt) -> KeyRecord:
        """Step 3, with step 2's attempt: each verification is charged to the client IP
        and the key id before it starts, and refunded unless it failed."""
        try:
            key = await self.auth.authenticate(credentials, before_verify=attempt.charge)
        except AuthError as exc:
            attempt.settle(failed=exc.failed_verification)
            raise
        except BaseException:
            attempt.settle(failed=True)  # cancelled (client gone) or a bug: the charge stays
            raise
        attempt.settle(failed=False)
        return key

    # -- authorise ----------------------------------------------------------------------

    def _authorise(self, method: str, raw_path: str, key: KeyRecord, call: Call) -> None:
        """Step 4: the route the method and path match (`routes.RouteTable`), the key's
        IP allowlist and the route's permission. A refusal is not counted against the
        limits, but the client sees its budget."""
        try:
            permission = self.routes.permission_for(method, raw_path)
            if key.ip_allowlist and not _allowed(call.client_ip, key):
                raise GatewayError(
                    403, "ip_not_allowed", "This API key may not be used from this address."
                )
            if permission is not None and permission not in key.permissions:
                raise GatewayError(
                    403,
                    "insufficient_permission",
                    f"This API key lacks the '{permission}' permission needed for this route.",
                    details={"permission": permission},
                )
        except GatewayError:
            call.extra_headers = self.limiter.headers(key)
            raise

    def _limit(self, key: KeyRecord, call: Call) -> None:
        """Step 5: count the request against the key's windows, or refuse it."""
        decision = self.limiter.check(key)
        call.extra_headers = decision.headers
        if not decision.allowed:
            raise GatewayError(
                429,
                "rate_limited",
                f"Rate limit exceeded for the {decision.window} window.",
                {"Retry-After": str(decision.retry_after)},
                outcome=Outcome.RATE_LIMITED,
            )

    # -- record -------------------------------------------------------------------------

    @staticmethod
    def note_refusal(call: Call, exc: GatewayError) -> None:
        """What a refusal tells the counters: its outcome, and for a failed
        authentication its reason and the key it named, if one of ours."""
        if isinstance(exc, AuthError):
            call.auth_result = exc.reason
            if exc.key is not None:
                call.key = exc.key  # a known key id: its usage shows the refusal
        call.outcome = exc.outcome

    def record(self, call: Call, elapsed: float) -> None:
        """Count a finished request (metrics, hourly usage) and write its access-log line."""
        status_class = f"{call.status // 100}xx"
        metrics.count(metrics.requests_by(call.outcome, status_class))
        if call.auth_result is not None:
            metrics.count(metrics.auth_results_by(call.auth_result))
        metrics.request_duration.observe(elapsed)
        if call.key is not None:
            outcome = call.outcome if call.outcome in USAGE_OUTCOMES else Outcome.DENIED
            self.usage.count(call.key.id, outcome)
        if self.access_log is not None:
            key = call.key
            self.access_log.write(
                request_id=call.request_id,
                account_id=key.account_id_text if key else None,
                key_id=key.id_text if key else None,
                method=call.method,
                path=call.path,
                status=call.status,
                latency_ms=round(elapsed * 1000, 3),
                client_ip=call.client_ip,
                outcome=call.outcome,
            )


def _check_head(request: web.Request) -> None:
    """What the head must be before anything is looked up: bounded, and no expectation
    but `100-continue` (answered only once the request is authorised: `_stream_body`)."""
    if sum(len(k) + len(v) for k, v in request.raw_headers) > MAX_HEADER_BYTES:
        # aiohttp bounds each line and the number of lines, not their total.
        raise head_too_large()
    expect = request.headers.get("Expect")
    if expect is not None and expect.strip().lower() != "100-continue":
        raise GatewayError(417, "expectation_failed", "Only 'Expect: 100-continue' is known.")


def _allowed(client_ip: str, key: KeyRecord) -> bool:
    ip = parse_address(client_ip)
    return ip is not None and any(ip in net for net in key.ip_allowlist)


Pipeline = Callable[[web.Request, Call, ClientAddress], Awaitable[web.StreamResponse]]
# The whole request head, less the request line; aiohttp's own limits are per line.
MAX_HEADER_BYTES = 64 * 1024
