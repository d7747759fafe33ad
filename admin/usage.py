"""`GET /v1/keys/{id}/usage?from=&to=`: a key's hourly request counts by outcome.

The gateways write `key_usage_hourly` in batches (gateway/usage.py); this reads it back so
an Owner can spot unexpected use, and `failed_auth` shows attempts with an old or wrong
secret for the key's id. Hours are buckets starting on the hour, in UTC; a bucket is
included from the one that contains `from` to the last that starts before `to`. Only
hours with traffic are listed.

`GET /v1/usage?from=&to=&limit=` is the same across the account: its hourly totals, and
the keys with the most requests and with the most failures (`failed_auth` + `denied`:
wrong secrets, and requests the key was not allowed to make), for the console's overview.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from gateway.usage import OUTCOMES

from . import paging
from . import validation as v
from .auth import PRINCIPAL
from .state import POOL, STORE

DEFAULT_RANGE = dt.timedelta(days=1)
MAX_RANGE = dt.timedelta(days=93)
_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)


async def key_usage(request: web.Request) -> web.Response:
    key_id = v.path_id(request, "key")
    start, end = _range(v.query(request, {"from", "to"}))
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


FAILURES = ("failed_auth", "denied")
_SUMS = ", ".join(  # constant outcome names only: safe to format into SQL
    f"coalesce(sum(u.count) FILTER (WHERE u.outcome = '{o}'), 0)::bigint AS {o}" for o in OUTCOMES
)
_FAILED = " + ".join(
    f"coalesce(sum(u.count) FILTER (WHERE u.outcome = '{o}'), 0)" for o in FAILURES
)


def _range(fields: v.Fields) -> tuple[dt.datetime, dt.datetime]:
    start = fields.get("from", v.timestamp)
    end = fields.get("to", v.timestamp)
    if not fields.errors:
        end = end or dt.datetime.now(dt.UTC)
        if start is None and end >= _EARLIEST + DEFAULT_RANGE:
            start = end - DEFAULT_RANGE
        if start is None:
            fields.fail("to", "is too early for the default range: give 'from' too")
        elif start >= end:
            fields.fail("from", "must be before 'to'")
        elif end - start > MAX_RANGE:
            fields.fail("from", f"the range may span at most {MAX_RANGE.days} days")
    fields.check()
    assert start is not None and end is not None
    return start, end


def _key_row(row: Any) -> dict[str, Any]:
    counts = {o: row[o] for o in OUTCOMES}
    return {
        "key_id": str(row["id"]),
        "name": row["name"],
        "deleted": row["deleted"],
        **counts,
        "total": sum(counts.values()),
        "failures": sum(counts[o] for o in FAILURES),
    }


async def account_usage(request: web.Request) -> web.Response:
    fields = v.query(request, {"from", "to", "limit"})
    limit = paging.page_limit(fields)
    start, end = _range(fields)
    account_id = request[PRINCIPAL].account_id
    window = (account_id, start.replace(minute=0, second=0, microsecond=0), end)
    scope = """FROM key_usage_hourly u JOIN api_keys k ON k.id = u.key_id
              WHERE k.account_id = $1 AND u.hour >= $2 AND u.hour < $3"""
    per_key = f"""SELECT k.id, k.name, k.deleted_at IS NOT NULL AS deleted, {_SUMS},
                        sum(u.count) AS total, {_FAILED} AS failures
                   {scope} GROUP BY k.id, k.name, k.deleted_at"""
    async with request.app[POOL].acquire() as conn:
        hourly = await conn.fetch(
            f"SELECT u.hour, {_SUMS} {scope} GROUP BY u.hour ORDER BY u.hour",
            *window,
        )
        busiest = await conn.fetch(
            f"{per_key} ORDER BY total DESC, k.name, k.id LIMIT $4",
            *window,
            limit,
        )
        failing = await conn.fetch(
            f"""{per_key} HAVING {_FAILED} > 0
                ORDER BY failures DESC, k.name, k.id LIMIT $4""",
            *window,
            limit,
        )
    totals = dict.fromkeys(OUTCOMES, 0)
    items: list[dict[str, Any]] = []
    for row in hourly:
        counts = {o: row[o] for o in OUTCOMES}
        for o in OUTCOMES:
            totals[o] += counts[o]
        items.append({"hour": v.rfc3339(row["hour"]), **counts, "total": sum(counts.values())})
    return web.json_response(
        {
            "from": v.rfc3339(start),
            "to": v.rfc3339(end),
            "totals": {**totals, "total": sum(totals.values())},
            "items": items,
            "top_by_requests": [_key_row(r) for r in busiest],
            "top_by_failures": [_key_row(r) for r in failing],
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/keys/{id}/usage", key_usage, allow_head=False)
    app.router.add_get("/v1/usage", account_usage, allow_head=False)
