"""Input checking for the admin API: bodies, fields, path ids, cursors and times.

Every problem with a request's fields is collected and answered at once as
400 `validation_error`, listing each offending field, so a client fixes them in one go.
The shape of the request itself is checked first: wrong content type → 415, body over
the listener's `client_max_size` → 413 (raised by aiohttp while reading), bytes that do
not decode under their Content-Encoding or are not UTF-8 JSON → 400 `invalid_json`, a
path id that is not a UUID → 404 (no such thing).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import unicodedata
import uuid
from collections.abc import Callable, Collection, Iterable
from typing import Any, NoReturn, TypeVar

from aiohttp import web

from gateway.accounts import ROLES
from gateway.errors import GatewayError

T = TypeVar("T")

NAME_MAX = 100
EMAIL_MAX = 254
MAX_ALLOWLIST = 100
MAX_INT = 2**31 - 1  # the integer columns' bound
MAX_GRACE_SECONDS = 7 * 24 * 3600

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
# Shared with the OpenAPI document, so what it promises is what the handlers check.
_CONTROL = r"\u0000-\u001f\u007f-\u009f"
NAME_PATTERN = rf"^[^{_CONTROL}]*[^\s{_CONTROL}][^{_CONTROL}]*$"
EMAIL_PATTERN = rf"^[^@\s{_CONTROL}]+@[^@\s{_CONTROL}]+\.[^@\s{_CONTROL}]+$"
_NAME = re.compile(NAME_PATTERN)
_EMAIL = re.compile(EMAIL_PATTERN)


class ValidationError(GatewayError):
    """400 `validation_error` naming every offending field in `fields`."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        fields = [{"field": field, "message": message} for field, message in errors]
        super().__init__(
            400, "validation_error", "The request has invalid fields.", details={"fields": fields}
        )
        self.errors = errors


class FieldError(Exception):
    """One field's problem; `Fields` collects them."""


def not_found(what: str = "resource") -> GatewayError:
    return GatewayError(404, "not_found", f"No such {what}.")


# -- the request's shape --------------------------------------------------------------


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


async def json_body(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The body as a JSON object; an absent body is `{}` when `required` is False."""
    if not request.body_exists:
        if required:
            raise ValidationError([("body", "a JSON object is required")])
        return {}
    if request.content_type != "application/json":
        raise GatewayError(
            415, "unsupported_media_type", "Send the body as 'Content-Type: application/json'."
        )
    if (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
        raise GatewayError(415, "unsupported_media_type", "JSON bodies must be UTF-8.")
    try:
        raw = await request.read()  # 413 past client_max_size
    except web.RequestPayloadError:
        # aiohttp decodes Content-Encoding (gzip, deflate) as it reads: bytes that do not
        # decode end up here (and a body cut short, whose client no longer listens). The
        # rest cannot be read either, so aiohttp closes the connection after the answer:
        # say so, or the client sends its next request on a connection being closed.
        raise GatewayError(
            400,
            "invalid_json",
            "The body could not be decoded (Content-Encoding).",
            headers={"Connection": "close"},
        ) from None
    if not raw.strip() and not required:
        return {}
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise GatewayError(400, "invalid_json", "The body is not valid UTF-8 JSON.") from None
    if not isinstance(data, dict):
        raise ValidationError([("body", "must be a JSON object")])
    return data


def path_id(request: web.Request, what: str) -> uuid.UUID:
    """The `{id}` of the path; anything but a UUID names nothing, hence 404."""
    raw = request.match_info["id"]
    try:
        parsed = uuid.UUID(raw)
    except ValueError:
        raise not_found(what) from None
    # uuid.UUID also takes braces, urn: prefixes and no hyphens; only the canonical form names.
    if str(parsed) != raw.lower():
        raise not_found(what)
    return parsed


# -- fields ---------------------------------------------------------------------------


class Fields:
    """Reads the fields of one JSON object or query string, collecting every problem.

    `data` is checked for unknown fields up front; each getter returns the checked value
    (or None when absent and optional) and records a problem instead of raising, so one
    answer lists them all. `check()` raises the `ValidationError` if there were any.
    """

    def __init__(
        self,
        data: dict[str, Any],
        allowed: Iterable[str],
        prefix: str = "",
        errors: list[tuple[str, str]] | None = None,
    ) -> None:
        self.data = data
        self.prefix = prefix
        self.errors = [] if errors is None else errors
        allowed = set(allowed)
        for name in data:
            if name not in allowed:
                self.errors.append((prefix + str(name), "unknown field"))

    def has(self, name: str) -> bool:
        return name in self.data

    def get(
        self,
        name: str,
        check: Callable[[Any], T],
        *,
        required: bool = False,
        nullable: bool = False,
    ) -> T | None:
        if name not in self.data:
            if required:
                self.errors.append((self.prefix + name, "required"))
            return None
        value = self.data[name]
        if value is None:
            if not nullable:
                self.errors.append((self.prefix + name, "must not be null"))
            return None
        try:
            return check(value)
        except FieldError as exc:
            self.errors.append((self.prefix + name, str(exc)))
            return None

    def nested(self, name: str, allowed: Iterable[str]) -> Fields | None:
        """The fields of a nested object, sharing this collector's problems."""
        value = self.data.get(name)
        if not isinstance(value, dict):
            if name in self.data and value is not None:
                self.errors.append((self.prefix + name, "must be an object"))
            return None
        return Fields(value, allowed, prefix=f"{self.prefix}{name}.", errors=self.errors)

    def fail(self, name: str, message: str) -> None:
        self.errors.append((self.prefix + name, message))

    def check(self) -> None:
        if self.errors:
            raise ValidationError(self.errors)


def name(value: Any) -> str:
    """Any Unicode text with something but white space in it, 1–100 characters trimmed."""
    if not isinstance(value, str):
        raise FieldError("must be a string")
    # No control characters (nor NUL, nor lone surrogates, which Postgres cannot store).
    if not _NAME.search(value) or _has_surrogate(value):
        raise FieldError(
            "must not be empty or contain control characters"
            if value.strip()
            else "must not be empty"
        )
    trimmed: str = value.strip()
    if len(trimmed) > NAME_MAX:
        raise FieldError(f"must be at most {NAME_MAX} characters")
    return trimmed


def email(value: Any) -> str:
    if not isinstance(value, str):
        raise FieldError("must be a string")
    if len(value) > EMAIL_MAX or not _EMAIL.fullmatch(value) or _has_surrogate(value):
        raise FieldError("must be an email address")
    return value


def _has_surrogate(value: str) -> bool:
    return any(unicodedata.category(c) == "Cs" for c in value)


def role(value: Any) -> str:
    if value not in ROLES:
        raise FieldError(f"must be one of {', '.join(ROLES)}")
    return str(value)


def integer(value: Any, *, minimum: int, maximum: int) -> int:
    # JSON has one number type: 5.0 is the integer 5 (as JSON Schema's "integer" says).
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FieldError("must be an integer")
    if not minimum <= value <= maximum:
        raise FieldError(f"must be between {minimum} and {maximum}")
    return value


def positive_limit(value: Any) -> int:
    return integer(value, minimum=1, maximum=MAX_INT)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise FieldError("must be true or false")
    return value


def permissions(defined: Collection[str]) -> Callable[[Any], list[str]]:
    """A list of permission names from the route table (`GET /v1/permissions`)."""

    def check(value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise FieldError("must be a list of permission names")
        unknown = [p for p in value if p not in defined]
        if unknown:
            raise FieldError(f"unknown permission {unknown[0]!r} (one of {', '.join(defined)})")
        if len(set(value)) != len(value):
            raise FieldError("must not repeat a permission")
        return sorted(value)

    return check


# `scopes`, deprecated: each of the four former scopes is the permissions of the default
# route table that cover what it used to (as migration 0007 mapped the stored keys).
LEGACY_SCOPES = {
    "reports": ("reports:read",),
    "customers": ("customers:read",),
    "data": ("data:read", "data:write"),
    "account": ("account:read",),
}


def legacy_scopes(defined: Collection[str]) -> Callable[[Any], list[str]]:
    """`scopes` as the permissions it stands for; deprecated in favour of `permissions`."""

    def check(value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise FieldError("must be a list of scopes (deprecated: use permissions)")
        unknown = [s for s in value if s not in LEGACY_SCOPES]
        if unknown:
            raise FieldError(
                f"unknown scope {unknown[0]!r} (one of {', '.join(LEGACY_SCOPES)}); "
                "scopes is deprecated: use permissions"
            )
        if len(set(value)) != len(value):
            raise FieldError("must not repeat a scope")
        mapped = sorted({p for s in value for p in LEGACY_SCOPES[s]})
        missing = [p for p in mapped if p not in defined]
        if missing:
            raise FieldError(
                f"this gateway's route table has no {missing[0]!r}: use permissions "
                f"(one of {', '.join(defined)})"
            )
        return mapped

    return check


def cidrs(value: Any) -> list[str]:
    """IP networks in CIDR notation (a bare address means that one address)."""
    if not isinstance(value, list):
        raise FieldError("must be a list of CIDRs")
    if len(value) > MAX_ALLOWLIST:
        raise FieldError(f"at most {MAX_ALLOWLIST} entries")
    networks: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise FieldError(f"entry {i}: must be a string")
        try:
            network = ipaddress.ip_network(item, strict=True)
        except ValueError as exc:
            loose = _loose_network(item)
            hint = f"; did you mean {loose}?" if loose else ""
            message = "host bits set" if loose else "not an IP address or CIDR"
            raise FieldError(f"entry {i}: {message}{hint}") from exc
        if "%" in str(network):
            raise FieldError(f"entry {i}: zone ids are not allowed")
        networks.append(str(network))
    if len(set(networks)) != len(networks):
        raise FieldError("must not repeat a network")
    return networks


def _loose_network(item: str) -> str | None:
    try:
        return str(ipaddress.ip_network(item, strict=False))
    except ValueError:
        return None


def timestamp(value: Any) -> dt.datetime:
    """An RFC 3339 date-time with a time zone, as an aware UTC datetime."""
    if not isinstance(value, str):
        raise FieldError("must be an RFC 3339 date-time string")
    match = _RFC3339.match(value)
    if not match:
        raise FieldError("must be an RFC 3339 date-time, e.g. 2030-01-31T12:00:00Z")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int(((fraction or ".")[1:] + "000000")[:6])
    try:
        offset = dt.timedelta(0)
        if zone not in ("Z", "z"):
            sign = -1 if zone[0] == "-" else 1
            hours, minutes = int(zone[1:3]), int(zone[4:6])
            if hours > 23 or minutes > 59:
                raise ValueError("offset out of range")
            offset = sign * dt.timedelta(hours=hours, minutes=minutes)
        moment = dt.datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            micro,
            tzinfo=dt.timezone(offset),
        )
        return moment.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise FieldError("not a valid date-time") from None


def future_timestamp(value: Any) -> dt.datetime:
    moment = timestamp(value)
    if moment <= dt.datetime.now(dt.UTC):
        raise FieldError("must be in the future")
    return moment


def rfc3339(moment: dt.datetime | None) -> str | None:
    """Times go out as RFC 3339 UTC strings: `2030-01-31T12:00:00.123456Z`."""
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def query(request: web.Request, allowed: Iterable[str]) -> Fields:
    """The query string as fields; a repeated parameter is a problem, not a guess."""
    data: dict[str, Any] = {}
    repeated: list[str] = []
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            repeated.append(key)
        data[key] = values[0]
    fields = Fields(data, allowed)
    for key in repeated:
        fields.fail(key, "given more than once")
    return fields
