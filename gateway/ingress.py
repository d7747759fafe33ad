"""`/_gateway/verify`: the gateway's decision for an ingress that moves the bytes itself.

nginx `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth` and Envoy `ext_authz`
(HTTP service) ask an auth service about each request before proxying it. This endpoint
runs the proxy's own steps up to "record" (`Proxy.admit`: parse → throttle admits →
authenticate → authorise → limit → record) on the request the ingress names, and answers

- 200, empty, with the identity headers the proxy sends upstream (`headers.identity_headers`)
  and the rate-limit headers the proxy sends the client, for the ingress to copy;
- or the refusal the proxy would answer: the same status, JSON body and headers.

The original request is named by `X-Original-Method` / `X-Original-URI` (nginx), or
`X-Forwarded-Method` / `X-Forwarded-Uri` (Caddy, Traefik), or, with neither, by this
request's own method and the path after `/_gateway/verify` (Envoy's `path_prefix`). Those
are believed only from a peer in `proxy.trusted_proxies`: any other caller is refused
with 403 `untrusted_ingress` before any key work, never judged on a route it picked. Both
header conventions at once is a 400: one of them was written by the client.

nginx's `auth_request` passes on only 2xx, 401 and 403 (anything else becomes its own
500) and never the body, so for the nginx convention a refusal also carries its status
and JSON body in `X-GrowPanel-Refusal-Status` / `-Body` for `deploy/nginx/` to answer
with. Nothing is read of the body, and nothing is sent upstream.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Mapping

from aiohttp import web
from multidict import CIMultiDictProxy

from .auth import authorization_header
from .errors import GatewayError, Outcome, error_body, internal_error, new_request_id
from .headers import SERVER_NAME, ClientAddress, identity_headers
from .proxy import Call, Proxy

log = logging.getLogger("gateway.proxy")

PATH = "/_gateway/verify"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}$")
# Visible ASCII: what a request target may hold (RFC 9112 §3.2), at most the proxy's line.
_TARGET = re.compile(r"^/[\x21-\x7e]{0,8191}$")
JSON = "application/json; charset=utf-8"


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to one verify request, whichever listener carries it."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""


class VerifyEndpoint:
    """The decision (`decide`), and its route on the public listener (`handle`); the verify
    listener (`verify_listener.py`) carries the same decision over its own connections."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def handle(self, request: web.Request) -> web.Response:
        verdict = await self.decide(
            request.remote, request.scheme, request.method, request.rel_url.raw_path,
            request.headers,
        )  # fmt: skip
        return web.Response(status=verdict.status, headers=verdict.headers, body=verdict.body)

    async def decide(
        self,
        peer: str | None,
        scheme: str,
        method: str,
        raw_path: str,
        headers: CIMultiDictProxy[str],
    ) -> Verdict:
        """`Proxy.admit` on the request the ingress names; counted and logged like a
        request of the proxy (`Proxy.record`), whatever the answer."""
        proxy = self.proxy
        started = time.perf_counter()
        client = ClientAddress(peer, headers, scheme, proxy.trusted)
        call = Call(
            request_id=client.incoming_request_id(headers) or new_request_id(),
            client_ip=client.ip,
            method=method,
            path=raw_path,
        )
        verdict: Verdict | None = None
        try:
            call.method, call.path = _original(method, raw_path, headers, client.peer_trusted)
            authorization = authorization_header(headers)
            key = await proxy.admit(authorization, call.method, call.path, call)
            verdict = Verdict(
                200,
                [
                    *call.extra_headers.items(),
                    *identity_headers(key),
                    ("X-Request-Id", call.request_id),
                    ("Server", SERVER_NAME),
                ],
            )
        except GatewayError as exc:
            proxy.note_refusal(call, exc)
            verdict = _refusal(exc, call, nginx="X-Original-URI" in headers)
        except Exception:
            log.exception("unhandled error", extra={"request_id": call.request_id})
            call.outcome = Outcome.INTERNAL_ERROR
            verdict = _refusal(internal_error(), call, nginx=False)
        finally:
            call.status = 499 if verdict is None else verdict.status  # None: cancelled
            proxy.record(call, time.perf_counter() - started)
        return verdict


def _refusal(exc: GatewayError, call: Call, *, nginx: bool) -> Verdict:
    """The proxy's refusal (`errors.error_response`), plus for nginx its status and body
    in headers (`auth_request` passes on neither)."""
    body = error_body(exc, call.request_id)
    headers: Mapping[str, str] = {**exc.headers, **call.extra_headers}
    listed = [*headers.items(), ("X-Request-Id", call.request_id), ("Server", SERVER_NAME)]
    listed.append(("Content-Type", JSON))
    if nginx:
        listed.append(("X-GrowPanel-Refusal-Status", str(exc.status)))
        listed.append(("X-GrowPanel-Refusal-Body", body))
    return Verdict(exc.status, listed, body.encode())


def _original(
    method: str, raw_path: str, headers: CIMultiDictProxy[str], trusted: bool
) -> tuple[str, str]:
    """The method and raw path of the request the ingress asks about."""
    if not trusted:
        raise GatewayError(
            403, "untrusted_ingress", "Only a trusted proxy may call the verify endpoint."
        )
    nginx = _pair(headers, "X-Original-Method", "X-Original-URI")
    forwarded = _pair(headers, "X-Forwarded-Method", "X-Forwarded-Uri")
    if nginx and forwarded:
        raise invalid_original("Name the original request one way, not two.")
    named = nginx or forwarded
    if named is not None:
        method, uri = named
        # Up to the '?' only: a '#' stays, and the route table refuses it. nginx passes
        # `/x#f` on to the API as `/x%23f`, a path other than `/x`; Caddy's and
        # Traefik's `{uri}` encode the '#' themselves.
        path = uri.partition("?")[0]
    else:
        uri = path = raw_path.removeprefix(PATH)  # a path already: this request's own
        if not uri.startswith("/"):
            raise invalid_original("The original request is not named.")
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(uri):
        raise invalid_original("The original method or URI is not valid.")
    return method, path


def _pair(headers: CIMultiDictProxy[str], method: str, uri: str) -> tuple[str, str] | None:
    if method not in headers and uri not in headers:
        return None
    values = headers.getall(method, []), headers.getall(uri, [])
    if len(values[0]) != 1 or len(values[1]) != 1:
        raise invalid_original(f"Expected one {method} and one {uri} header.")
    return values[0][0].strip(), values[1][0].strip()


def invalid_original(message: str) -> GatewayError:
    return GatewayError(400, "invalid_original_request", message)


def add_routes(app: web.Application, endpoint: web.AppKey[VerifyEndpoint]) -> None:
    """`/_gateway/verify` and, for Envoy, `/_gateway/verify/<original path>`; call before
    `reserved.add_routes` (its catch-all 404)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return await request.app[endpoint].handle(request)

    app.router.add_route("*", PATH, handle)
    app.router.add_route("*", PATH + "/{original:.*}", handle)
