"""The usage page in a real Chromium: a key's hourly counts by outcome for 24 hours and
7 days (a uPlot chart under the page's CSP), totals with failed attempts in red, and the
account-wide view with the top keys by requests and by failures."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid

import asyncpg
from aiohttp.test_utils import TestServer

from .helpers import key_status, wait_for
from .page_support import (  # noqa: F401 - fixtures
    Acme,
    Browser,
    acme_fixture,
    browser_fixture,
    chromium_fixture,
    config_fixture,
    create_key,
)
from .test_admin_support import (  # noqa: F401 - fixtures
    AdminClient,
    admin_server_fixture,
    client_fixture,
)

with contextlib.suppress(ImportError):  # reported by the `chromium` fixture
    from playwright.async_api import expect


async def counts(db: asyncpg.Connection, key_id: str, rows: list[tuple[int, str, int]]) -> None:
    """Hourly counters `hours_ago` before the current hour, as the gateways write them."""
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    await db.executemany(
        "INSERT INTO key_usage_hourly (key_id, hour, outcome, count) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (key_id, hour, outcome) DO UPDATE SET count = key_usage_hourly.count"
        " + EXCLUDED.count",
        [(uuid.UUID(key_id), hour - dt.timedelta(hours=h), o, n) for h, o, n in rows],
    )


async def test_a_keys_usage_24_hours_and_7_days_with_failed_attempts_in_red(
    browser: Browser, acme: Acme, client: AdminClient, db: asyncpg.Connection, gateway: TestServer
) -> None:
    page = browser.page
    zapier = await create_key(client, acme.owner, "Zapier automation")
    await counts(
        db,
        zapier["id"],
        [(1, "ok", 40), (3, "ok", 25), (3, "upstream_4xx", 2), (5, "failed_auth", 6)],
    )
    await counts(db, zapier["id"], [(3 * 24, "ok", 500), (3 * 24, "rate_limited", 9)])
    # And one real request through the proxy, counted by the gateway itself.
    assert await key_status(gateway, zapier["key"], "/v1/reports/mrr") == 200

    async def flushed() -> bool:
        reply = await client.call("GET", f"/v1/keys/{zapier['id']}/usage", acme.owner)
        return bool(reply.body["totals"]["total"] == 74)

    await wait_for(flushed)

    await browser.sign_in(acme.admin)  # Admins see usage too
    await browser.row("Zapier automation").get_by_role("button", name="Usage").click()
    await expect(page.locator("#console-nav").get_by_role("link", name="Usage")).to_have_attribute(
        "aria-current", "page"
    )
    await expect(page.locator("#usage-key")).to_have_value(zapier["id"])
    totals = page.locator("#usage-totals")
    await expect(totals.locator("[data-outcome=total]")).to_have_text("74")
    await expect(totals.locator("[data-outcome=ok] .stat-value")).to_have_text("66")
    await expect(totals.locator("[data-outcome=failed_auth] .stat-value")).to_have_text("6")
    await expect(totals.locator("[data-outcome=failed_auth]")).to_have_class("stat stat-alarm")
    await expect(totals.locator("[data-outcome=denied]")).to_have_class("stat")
    await expect(page.locator("#usage-caption")).to_contain_text(
        "“Zapier automation” over the last 24 hours: 74 in all, 6 failed attempts"
    )
    # uPlot drew on a canvas, with a legend naming every outcome.
    await expect(page.locator("#usage-chart canvas")).to_have_count(1)
    await expect(page.locator("#usage-chart .u-legend")).to_contain_text("Failed auth")
    await expect(page.locator("#usage-top")).to_be_hidden()
    await browser.state("usage-key-24h")

    await page.locator("#view-usage").get_by_label("7 days").check()
    await expect(totals.locator("[data-outcome=total]")).to_have_text("583")
    await expect(totals.locator("[data-outcome=rate_limited] .stat-value")).to_have_text("9")
    await expect(page.locator("#usage-caption")).to_contain_text("over the last 7 days")
    await browser.state("usage-key-7d")


async def test_the_account_view_ranks_keys_by_requests_and_by_failures(
    browser: Browser, acme: Acme, client: AdminClient, db: asyncpg.Connection
) -> None:
    page = browser.page
    busy = await create_key(client, acme.owner, "Production integration")
    probed = await create_key(client, acme.owner, "Google Sheets extension")
    await create_key(client, acme.owner, "Unused")
    await counts(db, busy["id"], [(h, "ok", 40 + (7 * h) % 30) for h in range(20)])  # 1,080
    await counts(db, busy["id"], [(4, "upstream_5xx", 3)])
    await counts(db, probed["id"], [(2, "ok", 12), (2, "failed_auth", 30), (6, "denied", 4)])

    await browser.sign_in(acme.owner)
    await browser.go("Usage")
    await expect(page.get_by_role("heading", name="Usage", exact=True)).to_be_focused()
    await expect(page.locator("#usage-key")).to_have_value("")
    await expect(page.locator("#usage-caption")).to_contain_text("all keys")
    await expect(page.locator("#usage-totals [data-outcome=total]")).to_have_text("1,129")
    await expect(page.locator("#top-requests li")).to_have_count(2)
    await expect(page.locator("#top-requests li").first).to_contain_text(
        "Production integration1,083 requests"
    )
    await expect(page.locator("#top-failures li")).to_have_count(1)
    await expect(page.locator("#top-failures li")).to_contain_text(
        "Google Sheets extension34 failed attempts"
    )
    await browser.state("usage-account")

    await (
        page.locator("#top-failures").get_by_role("button", name="Google Sheets extension").click()
    )
    await expect(page.locator("#usage-key")).to_have_value(probed["id"])
    await expect(page.locator("#usage-totals [data-outcome=total]")).to_have_text("46")
    await expect(page.locator("#usage-totals [data-outcome=denied]")).to_have_class(
        "stat stat-alarm"
    )
