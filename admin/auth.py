"""Who calls the admin API and what they may do: admin tokens, the operator token, roles.

A member's admin token (`gpa_…`) is checked like an API key: the checksum first (no I/O),
then the member row by the token's public id (one indexed query), then argon2id — in a
small thread pool, off the event loop. A verified token is remembered as the SHA-256 of
the full token next to the argon2 hash it matched, so later requests cost that one query
and a constant-time comparison, no argon2. The row is read on every request on purpose:
a regenerated token has a new public id and a removed member has no row, so either
stops working at once in every process, and a role change applies to the next request,
with no invalidation protocol to get wrong.

Verifications are throttled like the proxy's (`gateway.throttle`, the same
`rate_limits.failed_auth` budgets): an address or token id that failed too often gets
429 `too_many_failed_attempts` before any query or argon2 work, so made-up tokens with a
valid checksum cannot be used to burn the CPU.

The operator token comes only from the environment (`GATEWAY_OPERATOR_TOKEN`) and is
compared in constant time; when it is unset, nothing authenticates as the operator.

`POLICY` is SPEC §6's table. `enforce_policy` applies it to every `/v1` route before the
handler runs: 401 for a missing or unknown token, 403 `forbidden` for a known one whose
role the table does not allow. A `/v1` route missing from the table is refused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import hmac
import logging
import uuid
from collections import OrderedDict
from typing import Literal

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.accounts import ADMIN_TOKEN_FORMAT, Member, hold_member, member_by_token_id
from gateway.clock import Clock, SystemClock
from gateway.config import FailedAuthConfig
from gateway.errors import GatewayError
from gateway.keyformat import Hasher
from gateway.throttle import FailedAuthThrottle

log = logging.getLogger("admin.auth")

OWNER, ADMIN, READONLY, OPERATOR = "owner", "admin", "readonly", "operator"
REALM = 'Bearer realm="GrowPanel Admin"'


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a member of one account, or the operator."""

    kind: Literal["member", "operator"]
    member: Member | None = None

    @property
    def role(self) -> str:
        return self.member.role if self.member is not None else OPERATOR

    @property
    def account_id(self) -> uuid.UUID:
        assert self.member is not None, "only members belong to an account"
        return self.member.account_id

    @property
    def actor_id(self) -> uuid.UUID | None:
        return None if self.member is None else self.member.id


PRINCIPAL = web.RequestKey("principal", Principal)

_MEMBERS = frozenset({OWNER, ADMIN, READONLY})
_MANAGERS = frozenset({OWNER, ADMIN})
_OWNERS = frozenset({OWNER})
_OPERATOR = frozenset({OPERATOR})

# SPEC §6, row by row: (method, route) -> the roles allowed.
POLICY: dict[tuple[str, str], frozenset[str]] = {
    ("POST", "/v1/accounts"): _OPERATOR,
    ("GET", "/v1/accounts"): _OPERATOR,
    ("GET", "/v1/me"): _MEMBERS,
    ("GET", "/v1/account"): _MEMBERS,
    ("GET", "/v1/permissions"): _MEMBERS,
    ("GET", "/v1/members"): _MANAGERS,
    ("POST", "/v1/members"): _OWNERS,
    ("PATCH", "/v1/members/{id}"): _OWNERS,
    ("DELETE", "/v1/members/{id}"): _OWNERS,
    ("POST", "/v1/members/{id}/regenerate-token"): _OWNERS,
    ("GET", "/v1/keys"): _MANAGERS,
    ("GET", "/v1/keys/{id}"): _MANAGERS,
    ("POST", "/v1/keys"): _MANAGERS,
    ("PATCH", "/v1/keys/{id}"): _MANAGERS,
    ("POST", "/v1/keys/{id}/regenerate"): _MANAGERS,
    ("DELETE", "/v1/keys/{id}"): _MANAGERS,
    ("GET", "/v1/keys/{id}/usage"): _MANAGERS,
    ("GET", "/v1/usage"): _MANAGERS,
    ("GET", "/v1/audit-log"): _MANAGERS,
    # Webhook endpoints carry signing secrets and point the gateway at other systems:
    # Owners only.
    ("GET", "/v1/webhooks"): _OWNERS,
    ("POST", "/v1/webhooks"): _OWNERS,
    ("GET", "/v1/webhooks/{id}"): _OWNERS,
    ("PATCH", "/v1/webhooks/{id}"): _OWNERS,
    ("DELETE", "/v1/webhooks/{id}"): _OWNERS,
    ("POST", "/v1/webhooks/{id}/rotate-secret"): _OWNERS,
    ("GET", "/v1/webhooks/{id}/deliveries"): _OWNERS,
    ("POST", "/v1/webhooks/{id}/deliveries/{delivery_id}/resend"): _OWNERS,
}


def missing_token() -> GatewayError:
    return GatewayError(
        401,
        "missing_token",
        "Send an admin token as 'Authorization: Bearer <token>'.",
        headers={"WWW-Authenticate": REALM},
    )


def invalid_token() -> GatewayError:
    # One answer for malformed, unknown and wrong tokens: no oracle.
    return GatewayError(
        401,
        "invalid_token",
        "The admin token is not valid.",
        headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
    )


def forbidden() -> GatewayError:
    return GatewayError(403, "forbidden", "Your role does not allow this.")


async def hold_caller(conn: asyncpg.Connection, who: Principal) -> None:
    """For a change that writes the caller's member id (`created_by`, a foreign key):
    keep the member until the transaction ends, or 401 `invalid_token` if they were
    removed since their token was checked (the answer their next request gets)."""
    if who.member is not None and not await hold_member(conn, who.account_id, who.member.id):
        raise invalid_token()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class AdminAuthenticator:
    def __init__(
        self,
        pool: asyncpg.Pool,
        hasher: Hasher,
        operator_token: str | None,
        *,
        failed_auth: FailedAuthConfig | None = None,
        clock: Clock | None = None,
        max_entries: int = 10_000,
        verify_concurrency: int = 2,
    ) -> None:
        self._pool = pool
        self._throttle = FailedAuthThrottle(
            failed_auth or FailedAuthConfig(), clock or SystemClock()
        )
        self._hasher = hasher
        self._operator = _digest(operator_token) if operator_token else None
        self._max_entries = max_entries
        # public id -> (digest of the full token, the argon2 hash it was verified against)
        self._verified: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=verify_concurrency, thread_name_prefix="admin-argon2"
        )
        self._dummy_hash: str | None = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def authenticate(self, header: str | None, client_ip: str = "") -> Principal:
        if header is None or not header.strip():
            raise missing_token()
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise invalid_token()
        digest = _digest(token)
        if self._operator is not None and hmac.compare_digest(digest, self._operator):
            return Principal("operator")
        parsed = ADMIN_TOKEN_FORMAT.parse(token)
        if parsed is None:
            raise invalid_token()
        attempt = self._throttle.admit(client_ip, parsed.public_id)
        found = await member_by_token_id(self._pool, parsed.public_id)
        if found is not None:
            member, token_hash = found
            cached = self._verified.get(parsed.public_id)
            if (
                cached is not None
                and hmac.compare_digest(cached[0], digest)
                and hmac.compare_digest(cached[1], token_hash)
            ):
                self._verified.move_to_end(parsed.public_id)
                return Principal("member", member)
        await attempt.charge()
        verified = False  # until proven: a request that leaves mid-way keeps its charge
        try:
            if found is None:
                # As long as a wrong secret, so the time does not tell which ids exist.
                await self._argon2(await self._dummy(), parsed.secret)
                raise invalid_token()
            if not await self._argon2(token_hash, parsed.secret):
                raise invalid_token()
            verified = True
        finally:
            attempt.settle(failed=not verified)
        self._verified[parsed.public_id] = (digest, token_hash)
        self._verified.move_to_end(parsed.public_id)
        while len(self._verified) > self._max_entries:
            self._verified.popitem(last=False)
        return Principal("member", member)

    async def _argon2(self, token_hash: str, secret: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._hasher.verify, token_hash, secret)

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            loop = asyncio.get_running_loop()
            self._dummy_hash = await loop.run_in_executor(
                self._executor, self._hasher.hash, uuid.uuid4().hex
            )
        return self._dummy_hash


AUTHENTICATOR = web.AppKey("admin_authenticator", AdminAuthenticator)


@web.middleware
async def enforce_policy(request: web.Request, handler: Handler) -> web.StreamResponse:
    match_info = request.match_info
    resource = match_info.route.resource
    if match_info.http_exception is not None or resource is None:
        return await handler(request)  # the router's own 404 / 405
    route = resource.canonical
    if not route.startswith("/v1/"):
        return await handler(request)  # health, metrics, the OpenAPI document
    allowed = POLICY.get((request.method, route))
    if allowed is None:
        log.error("admin route without a policy: %s %s", request.method, route)
        raise forbidden()
    principal = await request.app[AUTHENTICATOR].authenticate(
        request.headers.get("Authorization"), request.remote or ""
    )
    if principal.role not in allowed:
        raise forbidden()
    request[PRINCIPAL] = principal
    return await handler(request)
