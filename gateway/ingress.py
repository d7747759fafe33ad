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

import re

from aiohttp import web
from multidict import CIMultiDictProxy

from .errors import GatewayError, error_body
from .headers import SERVER_NAME, ClientAddress, identity_headers
from .proxy import Call, Proxy

PATH = "/_gateway/verify"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}$")
# Visible ASCII: what a request target may hold (RFC 9112 §3.2), at most the proxy's line.
_TARGET = re.compile(r"^/[\x21-\x7e]{0,8191}$")


class VerifyEndpoint:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return await self.proxy.serve(request, self._pipeline)

    async def _pipeline(
        self, request: web.Request, call: Call, client: ClientAddress
    ) -> web.StreamResponse:
        headers = request.headers
        nginx = "X-Original-URI" in headers
        try:
            call.method, call.path = _original(request, client.peer_trusted)
            authorization = headers.get("Authorization")
            key = await self.proxy.admit(authorization, call.method, call.path, call)
        except GatewayError as exc:
            if nginx:
                exc.headers["X-GrowPanel-Refusal-Status"] = str(exc.status)
                exc.headers["X-GrowPanel-Refusal-Body"] = error_body(exc, call.request_id)
            raise
        response = web.Response(status=200, headers=call.extra_headers)
        response.headers.extend(identity_headers(key))
        response.headers["X-Request-Id"] = call.request_id
        response.headers["Server"] = SERVER_NAME
        return response


def _original(request: web.Request, trusted: bool) -> tuple[str, str]:
    """The method and raw path of the request the ingress asks about."""
    if not trusted:
        raise GatewayError(
            403, "untrusted_ingress", "Only a trusted proxy may call the verify endpoint."
        )
    headers = request.headers
    nginx = _pair(headers, "X-Original-Method", "X-Original-URI")
    forwarded = _pair(headers, "X-Forwarded-Method", "X-Forwarded-Uri")
    if nginx and forwarded:
        raise invalid_original("Name the original request one way, not two.")
    named = nginx or forwarded
    if named is not None:
        method, uri = named
    else:
        method, uri = request.method, request.rel_url.raw_path.removeprefix(PATH)
        if not uri.startswith("/"):
            raise invalid_original("The original request is not named.")
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(uri):
        raise invalid_original("The original method or URI is not valid.")
    return method, uri.partition("?")[0]


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
