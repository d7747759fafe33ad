"""`POST /_gateway/secret-scanning/github`: GitHub's secret-scanning partner alerts.

GitHub finds strings of our key format in public code and POSTs them here, signed with
ECDSA P-256 / SHA-256 over the raw body by a key from its public-keys document. The order
of work bounds what an unsigned or hostile request can cost:

1. both signature headers present, the body no larger than `max_body_bytes` (401 / 413);
2. the signature verified against the named public key (fetched when first needed, again
   for an unknown key id or an hour-old document; at most one fetch per
   `refresh_min_interval_seconds`, failed fetches included): 401 otherwise, 503 while the
   document cannot be read;
3. the body a JSON array of at most `max_tokens` `{token, type, url, source}` (400 / 413);
4. per token: the checksum (no I/O), the live row by public id (one indexed query), one
   argon2 verification; a real key of ours gets `secret_scanning.action` (disable,
   revoke, report), an audit event `key.leaked` and its `leaked_at` / `leak_url`, in one
   transaction, whose notify tells every gateway process at commit.

The answer is GitHub's feedback shape, `[{token_raw, token_type, label}]`, in the order of
the alert: `true_positive` for a live key of ours, `false_positive` for anything else.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import metrics
from .accounts import audit
from .config import SecretScanningConfig
from .db import UNAVAILABLE
from .errors import GatewayError, error_response
from .keys import KeyStore
from .webhooks import emit, key_data

log = logging.getLogger("gateway.secret_scanning")

PATH = "/_gateway/secret-scanning/github"
KEY_ID_HEADER = "Github-Public-Key-Identifier"
SIGNATURE_HEADER = "Github-Public-Key-Signature"
KEYS_MAX_AGE = 3600.0  # a document older than this is fetched again (GitHub rotates keys)
URL_MAX = 2048
TEXT_MAX = 200


def unauthorized(message: str) -> GatewayError:
    return GatewayError(401, "invalid_signature", message)


class PublicKeys:
    """GitHub's public keys by identifier, fetched on demand and cached."""

    def __init__(self, session: aiohttp.ClientSession, config: SecretScanningConfig) -> None:
        self._session = session
        self._config = config
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._fetched_at: float | None = None
        # The last fetch, whether it worked: unsigned requests naming any key id must not
        # make the gateway fetch once each, even while GitHub is unreachable.
        self._attempted_at: float | None = None
        self._failed = False
        self._lock = asyncio.Lock()

    async def get(self, key_id: str) -> ec.EllipticCurvePublicKey | None:
        key = self._keys.get(key_id)
        if key is not None and not self._stale():
            return key
        async with self._lock:  # one fetch at a time; the others find its result
            key = self._keys.get(key_id)
            if key is not None and not self._stale():
                return key
            if not self._may_fetch():
                if key is not None:
                    return key  # stale, and the last refresh failed: still GitHub's key
                if self._failed:
                    raise _unavailable()  # it may be a new key of GitHub's: retry later
                return None
            try:
                await self._fetch()
            except GatewayError:
                if key is not None:
                    return key  # an old document beats none while GitHub is unreachable
                raise
            return self._keys.get(key_id)

    def _stale(self) -> bool:
        return self._fetched_at is None or time.monotonic() - self._fetched_at > KEYS_MAX_AGE

    def _may_fetch(self) -> bool:
        return (
            self._attempted_at is None
            or time.monotonic() - self._attempted_at >= self._config.refresh_min_interval_seconds
        )

    async def _fetch(self) -> None:
        self._attempted_at = time.monotonic()
        self._failed = True  # until it worked
        url = self._config.public_keys_url
        timeout = aiohttp.ClientTimeout(total=self._config.fetch_timeout_seconds)
        try:
            async with self._session.get(
                url, timeout=timeout, allow_redirects=False, headers={"Accept": "application/json"}
            ) as response:
                if response.status != 200:
                    raise ValueError(f"status {response.status}")
                document = json.loads(await read_up_to(response.content, 1024 * 1024))
            keys = _parse_keys(document)
        except (aiohttp.ClientError, TimeoutError, ValueError, UnicodeDecodeError) as exc:
            metrics.SECRET_SCANNING_KEY_FETCHES.labels("failed").inc()
            log.warning("cannot read the secret-scanning public keys from %s: %s", url, exc)
            raise _unavailable() from None
        metrics.SECRET_SCANNING_KEY_FETCHES.labels("ok").inc()
        self._keys = keys
        self._fetched_at = time.monotonic()
        self._failed = False


async def read_up_to(stream: aiohttp.StreamReader, size: int) -> bytes:
    """`size` bytes of `stream`, or all of it if shorter: `read(size)` returns only what
    has arrived, and a body can come in more than one packet."""
    try:
        return await stream.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        return exc.partial


def _unavailable() -> GatewayError:
    return GatewayError(
        503,
        "secret_scanning_unavailable",
        "The signing keys cannot be read right now; retry later.",
        {"Retry-After": "60"},
    )


def _parse_keys(document: Any) -> dict[str, ec.EllipticCurvePublicKey]:
    """`{"public_keys": [{"key_identifier", "key" (PEM), "is_current"}]}`: P-256 keys only."""
    if not isinstance(document, dict) or not isinstance(document.get("public_keys"), list):
        raise ValueError("not a public-keys document")
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for entry in document["public_keys"]:
        if not isinstance(entry, dict):
            continue
        key_id, pem = entry.get("key_identifier"), entry.get("key")
        if not isinstance(key_id, str) or not isinstance(pem, str):
            continue
        try:
            key = serialization.load_pem_public_key(pem.encode())
        except (ValueError, UnsupportedAlgorithm):
            continue
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            keys[key_id] = key
    return keys


def _alerts(body: bytes, max_tokens: int) -> list[dict[str, Any]]:
    """The alert's matches, each with a string `token` and `type`; 400 / 413 otherwise."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise GatewayError(400, "invalid_payload", "The body is not valid UTF-8 JSON.") from None
    if not isinstance(data, list):
        raise GatewayError(400, "invalid_payload", "The body must be a JSON array of matches.")
    if len(data) > max_tokens:
        raise GatewayError(
            413, "too_many_tokens", f"An alert may carry at most {max_tokens} tokens."
        )
    for item in data:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("token"), str)
            and isinstance(item.get("type"), str)
            and isinstance(item.get("url", ""), str | None)
            and isinstance(item.get("source", ""), str | None)
        ):
            raise GatewayError(
                400,
                "invalid_payload",
                "Each match must be an object with string 'token' and 'type'.",
            )
        if not all(_storable(item.get(name) or "") for name in ("token", "type", "url", "source")):
            raise GatewayError(
                400, "invalid_payload", "A string holds a lone surrogate or a NUL character."
            )
    return data


def _storable(text: str) -> bool:
    """JSON's \\ud800 escapes make strings that no UTF-8 column or answer can hold, and
    its \\u0000 strings that Postgres text and jsonb refuse (a 500, the leak unrecorded)."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _clean_url(url: Any, secret: str) -> str | None:
    """Where the leak was found, kept only as an http(s) URL (the page links to it).

    A URL can name the key itself (a wiki page, a file called after it): kept, it would
    put the key in the database, the log, the audit trail and the webhooks."""
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        return None
    if len(url) > URL_MAX or any(ord(c) < 0x20 or c == "\x7f" for c in url):
        return None
    if secret in url or secret in urllib.parse.unquote(url):
        return None
    return url


class SecretScanning:
    def __init__(
        self,
        config: SecretScanningConfig,
        store: KeyStore,
        keys: PublicKeys,
    ) -> None:
        self.config = config
        self.store = store
        self.keys = keys
        self._slots = asyncio.Semaphore(2)  # argon2 threads this endpoint may occupy

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            if request.method != "POST":
                raise GatewayError(405, "method_not_allowed", "Use POST.", {"Allow": "POST"})
            try:
                results = await self._handle(request)
            except (*UNAVAILABLE, asyncpg.PostgresConnectionError):
                raise GatewayError(
                    503,
                    "database_unavailable",
                    "The database cannot be reached right now; retry later.",
                    {"Retry-After": "5"},
                ) from None
        except GatewayError as exc:
            metrics.SECRET_SCANNING_ALERTS.labels(exc.code).inc()
            return error_response(request, exc)
        metrics.SECRET_SCANNING_ALERTS.labels("ok").inc()
        response = web.json_response(results)
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _handle(self, request: web.Request) -> list[dict[str, str]]:
        key_id = request.headers.get(KEY_ID_HEADER, "").strip()
        signature_text = request.headers.get(SIGNATURE_HEADER, "").strip()
        if not key_id or not signature_text:
            raise unauthorized(f"Send {KEY_ID_HEADER} and {SIGNATURE_HEADER}.")
        try:
            signature = base64.b64decode(signature_text, validate=True)
        except (binascii.Error, ValueError):
            raise unauthorized("The signature is not valid base64.") from None
        body = await self._read(request)
        public_key = await self.keys.get(key_id)
        if public_key is None:
            raise unauthorized("Unknown signing key.")
        try:
            public_key.verify(signature, body, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise unauthorized("The signature does not match the body.") from None
        alerts = _alerts(body, self.config.max_tokens)
        labels: dict[str, str] = {}
        for token in dict.fromkeys(a["token"] for a in alerts):  # each token checked once
            labels[token] = await self._check(token, alerts)
        return [
            {"token_raw": a["token"], "token_type": a["type"], "label": labels[a["token"]]}
            for a in alerts
        ]

    async def _read(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        too_large = GatewayError(413, "request_too_large", f"The body exceeds {limit} bytes.")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        body = await read_up_to(request.content, limit + 1)
        if len(body) > limit:
            raise too_large
        return body

    async def _check(self, token: str, alerts: list[dict[str, Any]]) -> str:
        parsed = self.store.format.parse(token)
        if parsed is None:
            metrics.SECRET_SCANNING_TOKENS.labels("malformed").inc()
            return "false_positive"
        metrics.SECRET_SCANNING_LOOKUPS.inc()
        record = await self.store.lookup(parsed.public_id)
        if record is None:
            metrics.SECRET_SCANNING_TOKENS.labels("unknown").inc()
            return "false_positive"
        # One argon2 verification: the current secret (a previous one still in its grace
        # period is tried too, since it works just as well for whoever found it).
        matched: str | None = None
        for secret_hash in record.candidate_hashes(_now()):
            async with self._slots:
                metrics.ARGON2_VERIFICATIONS.inc()
                if await asyncio.to_thread(self.store.hasher.verify, secret_hash, parsed.secret):
                    matched = secret_hash
            if matched:
                break
        if matched is None:
            metrics.SECRET_SCANNING_TOKENS.labels("wrong_secret").inc()
            return "false_positive"
        match = next(a for a in alerts if a["token"] == token)
        partial = self.store.format.partial(token)
        url = _clean_url(match.get("url"), parsed.secret)
        if not await self._leaked(record.id, record.account_id, match, url, partial, matched):
            metrics.SECRET_SCANNING_TOKENS.labels("wrong_secret").inc()
            return "false_positive"  # deleted or regenerated since it was verified
        metrics.SECRET_SCANNING_TOKENS.labels("leaked").inc()
        return "true_positive"

    async def _leaked(
        self,
        key_id: uuid.UUID,
        account_id: uuid.UUID,
        match: dict[str, Any],
        url: str | None,
        partial: str,
        secret_hash: str,
    ) -> bool:
        """Record the leak and apply the action; False if the key, or the secret verified
        against `secret_hash`, is gone meanwhile."""
        action = self.config.action
        details = {
            "partial_key": partial,
            "url": url,
            "source": str(match.get("source") or "")[:TEXT_MAX] or None,
            "token_type": match["type"][:TEXT_MAX],
            "action": {"disable": "disabled", "revoke": "revoked", "report": "reported"}[action],
        }
        async with self.store.pool.acquire() as conn, conn.transaction():
            if not await self.store.mark_leaked(conn, key_id, url, action, secret_hash=secret_hash):
                return False  # deleted, or its secret replaced, meanwhile
            await audit(
                conn, account_id, "system", None, "key.leaked", "key", key_id, details=details
            )
            data: dict[str, Any] = {k: details[k] for k in ("url", "source", "action")}
            info = await self.store.get(account_id, key_id, conn=conn)
            if info is not None:  # revoked keys are described by id alone
                data["key"] = key_data(info)
            else:
                data["key"] = {"id": str(key_id), "partial_key": partial}
            await emit(conn, account_id, "key.leaked", f"key:{key_id}", data)
        log.warning(
            "leaked API key reported by GitHub secret scanning",
            extra={"key_id": str(key_id), "action": details["action"], "leak_url": url},
        )
        return True


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


SCANNING = web.AppKey("secret_scanning", SecretScanning)


def add_routes(app: web.Application) -> None:
    """The route (before the proxy's catch-all) and its set-up, after the key store's."""
    from .app import CONFIG, STORE  # the app module imports this one

    config = app[CONFIG].secret_scanning
    if not config.enabled:
        # Turned off, the path is still reserved: never forwarded, never a key check.
        async def off(request: web.Request) -> web.StreamResponse:
            return error_response(request, GatewayError(404, "not_found", "Not found."))

        app.router.add_route("*", PATH, off)
        return

    async def context(app: web.Application) -> AsyncIterator[None]:
        session = aiohttp.ClientSession()
        app[SCANNING] = SecretScanning(config, app[STORE], PublicKeys(session, config))
        yield
        await session.close()

    async def handle(request: web.Request) -> web.StreamResponse:
        scanning = request.app.get(SCANNING)
        if scanning is None:  # pragma: no cover - set up before the listener opens
            return error_response(request, GatewayError(503, "unavailable", "Starting up."))
        return await scanning.handle(request)

    app.cleanup_ctx.append(context)
    app.router.add_route("*", PATH, handle)
