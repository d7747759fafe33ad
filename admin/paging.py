"""Paging of the admin API's lists: `limit` and opaque cursors.

A cursor is the base64 of its kind and the position after the last item returned, so a
cursor from one list is refused by another; over (created_at, id) it is exact to the
microsecond.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from .validation import FieldError, Fields, integer

PAGE_DEFAULT = 50
PAGE_MAX = 100


def page_limit(fields: Fields) -> int:
    limit = fields.get("limit", _query_int(1, PAGE_MAX))
    return PAGE_DEFAULT if limit is None else limit


def _query_int(minimum: int, maximum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,10}", value):
            raise FieldError(f"must be an integer between {minimum} and {maximum}")
        return integer(int(value), minimum=minimum, maximum=maximum)

    return check


def encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode().rstrip("=")


def decode_cursor(value: str, kind: str, size: int) -> list[str]:
    """The parts of a cursor made by `encode_cursor(kind, ...)`; FieldError otherwise."""
    try:
        padded = value + "=" * (-len(value) % 4)
        parts = base64.urlsafe_b64decode(padded.encode("ascii")).decode().split("|")
    except (ValueError, binascii.Error, UnicodeError):
        raise FieldError("not a cursor from this API") from None
    if len(parts) != size or parts[0] != kind:
        raise FieldError("not a cursor from this API")
    return parts[1:]


def time_cursor(kind: str) -> Callable[[Any], tuple[dt.datetime, uuid.UUID]]:
    """Cursors over (created_at, id): exact to the microsecond."""

    def check(value: Any) -> tuple[dt.datetime, uuid.UUID]:
        micros, ident = decode_cursor(str(value), kind, 3)
        try:
            moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(micros))
            return moment, uuid.UUID(ident)
        except (ValueError, OverflowError):
            raise FieldError("not a cursor from this API") from None

    return check


class _Dated(Protocol):
    @property
    def created_at(self) -> dt.datetime: ...

    @property
    def id(self) -> uuid.UUID: ...


D = TypeVar("D", bound=_Dated)


def time_page(kind: str, found: Sequence[D], limit: int) -> tuple[Sequence[D], str | None]:
    """A page from `limit + 1` rows fetched in (created_at, id) order, and the cursor to
    the next page when there is one."""
    page = found[:limit]
    more = len(found) > limit
    return page, make_time_cursor(kind, page[-1].created_at, page[-1].id) if more else None


def make_time_cursor(kind: str, created_at: dt.datetime, ident: uuid.UUID) -> str:
    delta = created_at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    return encode_cursor(kind, str(micros), str(ident))
