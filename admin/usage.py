"""`GET /v1/keys/{id}/usage?from=&to=`: a key's hourly request counts by outcome.

The gateways write `key_usage_hourly` in batches (gateway/usage.py); this reads it back so
an Owner can spot unexpected use, and `failed_auth` shows attempts with an old or wrong
secret for the key's id. Hours are buckets starting on the hour, in UTC; a bucket is
included when its start lies in [from, to). Only hours with traffic are listed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from gateway.usage import OUTCOMES

from . import validation as v
from .auth import PRINCIPAL
from .state import POOL, STORE

DEFAULT_RANGE = dt.timedelta(days=1)
MAX_RANGE = dt.timedelta(days=93)


async def key_usage(request: web.Request) -> web.Response:
    key_id = v.path_id(request, "key")
    fields = v.query(request, {"from", "to"})
    start = fields.get("from", v.timestamp)
    end = fields.get("to", v.timestamp)
    if not fields.errors:
        end = end or dt.datetime.now(dt.UTC)
        start = start or end - DEFAULT_RANGE
        if start >= end:
            fields.fail("from", "must be before 'to'")
        elif end - start > MAX_RANGE:
            fields.fail("from", f"the range may span at most {MAX_RANGE.days} days")
    fields.check()
    assert start is not None and end is not None
    account_id = request[PRINCIPAL].account_id
    async with request.app[POOL].acquire() as conn:
        if await request.app[STORE].get(account_id, key_id, conn=conn) is None:
            raise v.not_found("key")
        rows = await conn.fetch(
            """
            SELECT hour, outcome, count FROM key_usage_hourly
             WHERE key_id = $1 AND hour >= $2 AND hour < $3
             ORDER BY hour
            """,
            key_id,
            start.replace(minute=0, second=0, microsecond=0),  # start is UTC: the hour's start
            end,
        )
    hours: dict[dt.datetime, dict[str, int]] = {}
    totals = dict.fromkeys(OUTCOMES, 0)
    for row in rows:
        counts = hours.setdefault(row["hour"], dict.fromkeys(OUTCOMES, 0))
        counts[row["outcome"]] += row["count"]
        totals[row["outcome"]] += row["count"]
    items: list[dict[str, Any]] = [
        {"hour": v.rfc3339(hour), **counts, "total": sum(counts.values())}
        for hour, counts in hours.items()
    ]
    return web.json_response(
        {
            "key_id": str(key_id),
            "from": v.rfc3339(start),
            "to": v.rfc3339(end),
            "totals": {**totals, "total": sum(totals.values())},
            "items": items,
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/keys/{id}/usage", key_usage, allow_head=False)
