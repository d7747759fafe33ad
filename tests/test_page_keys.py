"""The API keys page in a real Chromium, against the real admin API and proxy: create,
copy, edit in place, disable and enable, regenerate with a grace period, delete, badges,
paging, "Last used" kept fresh, the read-only role, keyboard-only runs and the polish
found by a new user (no reflow on Copy, labelled icon buttons, a visible focus ring)."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
import uuid

import asyncpg
from aiohttp.test_utils import TestServer

from .conftest import Seed
from .helpers import key_status, wait_for
from .page_support import (  # noqa: F401 - fixtures
    KEY_PATTERN,
    NARROW,
    WIDE,
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


async def answers(gateway: TestServer, key: str, status: int) -> None:
    """SPEC §2: a regenerated, disabled or deleted key is refused within a second."""

    async def answered() -> bool:
        return await key_status(gateway, key, "/v1/reports/mrr") == status

    await wait_for(answered, timeout=1.0)


async def test_create_use_copy_last_used_regenerate_delete_through_the_proxy(
    browser: Browser, acme: Acme, client: AdminClient, gateway: TestServer
) -> None:
    """The whole life of a key, with the proxy refusing each old secret within a second."""
    page = browser.page
    await browser.sign_in(acme.owner)

    await page.get_by_role("button", name="Create API key").click()
    dialog = page.locator("#create-dialog")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#create-name")).to_have_attribute(
        "placeholder", "e.g. Production integration"
    )
    await expect(dialog.get_by_role("button", name="Google Sheets extension")).to_be_visible()
    await dialog.get_by_role("button", name="Production integration").click()
    await expect(page.locator("#create-name")).to_have_value("Production integration")
    await browser.state("create-dialog")

    # Advanced: a bad allowlist entry comes back from the API as words naming the entry.
    await dialog.locator("summary").click()
    await dialog.get_by_role("group", name="Account").get_by_label("Read").uncheck()
    await page.locator("#create-per-minute").fill("120")
    await page.locator("#create-allowlist").fill("10.0.0.1/8")
    await browser.state("create-dialog-advanced")
    await dialog.get_by_role("button", name="Create key").click()
    await expect(page.locator("#create-error")).to_contain_text(
        "IP allowlist: “10.0.0.1/8”: host bits set; did you mean 10.0.0.0/8?"
    )
    await browser.state("create-dialog-error")
    await page.locator("#create-allowlist").fill("127.0.0.1\n::1")
    await dialog.get_by_role("button", name="Create key").click()

    # The full key, once, with Copy and the warning.
    secret = page.locator("#secret-dialog")
    await expect(secret).to_be_visible()
    await expect(secret).to_contain_text("This key can't be shown again.")
    first = await page.locator("#secret-value").inner_text()
    assert KEY_PATTERN.match(first), first
    await browser.state("key-created")
    await secret.get_by_role("button", name="Copy").click()
    await expect(secret.get_by_role("button", name="Copied")).to_be_visible()
    assert await browser.clipboard() == first
    await secret.get_by_role("button", name="Done").click()
    await expect(secret).to_be_hidden()
    assert first not in await page.content()
    assert first not in await page.evaluate(
        "JSON.stringify([Object.values(sessionStorage), Object.values(localStorage)])"
    )

    row = browser.row("Production integration")
    await expect(row.locator(".col-used")).to_have_text("Never")
    listed = await client.call("GET", "/v1/keys", acme.owner)
    key = next(k for k in listed.body["items"] if k["name"] == "Production integration")
    # Everything the route table defines except the one unchecked, and the limit.
    assert "account:read" not in key["permissions"]
    assert {"reports:read", "customers:read", "data:read", "data:write"} <= set(key["permissions"])
    assert key["rate_limit"]["per_minute"] == 120
    await expect(row.locator(".partial-key")).to_have_text(key["partial_key"])

    # Usable through the proxy; "Last used" follows after the flush and a refresh.
    assert await key_status(gateway, first, "/v1/reports/mrr") == 200

    async def used() -> bool:
        reply = await client.call("GET", f"/v1/keys/{key['id']}", acme.owner)
        return reply.body["last_used_at"] is not None

    await wait_for(used)
    # The tab regaining focus refreshes "Last used" in place (no reload).
    await page.evaluate("window.dispatchEvent(new Event('focus'))")
    used_cell = browser.row("Production integration").locator(".col-used time")
    await expect(used_cell).to_have_text("just now")
    assert str(time.gmtime().tm_year) in (await used_cell.get_attribute("title") or "")

    # Copy copies the partial key, and says so.
    row = browser.row("Production integration")
    await row.get_by_role("button", name="Copy").click()
    await expect(page.locator("#toasts")).to_contain_text(
        f"Copied the partial key {key['partial_key']} to the clipboard."
    )
    assert await browser.clipboard() == key["partial_key"]

    # Regenerate: confirmed, the old key refused at once, the new one shown once.
    await row.get_by_role("button", name="Regenerate").click()
    confirm = page.locator("#confirm-dialog")
    await expect(confirm).to_contain_text("the current key stops working immediately")
    await expect(page.locator("#confirm-title")).to_have_text(
        "Regenerate “Production integration”?"
    )
    await browser.state("regenerate-confirm")
    await confirm.get_by_role("button", name="Regenerate key").click()
    await expect(secret).to_be_visible()
    second = await page.locator("#secret-value").inner_text()
    assert KEY_PATTERN.match(second) and second != first
    await secret.get_by_role("button", name="Done").click()
    await expect(secret).to_be_hidden()
    assert second not in await page.content()
    await answers(gateway, first, 401)
    assert await key_status(gateway, second, "/v1/reports/mrr") == 200

    # Delete: confirmed, gone from the table, refused by the proxy at once.
    await browser.row("Production integration").get_by_role("button", name="Delete").click()
    await expect(confirm).to_contain_text("The key stops working immediately")
    await expect(confirm).to_contain_text("cannot be restored")
    await browser.state("delete-confirm")
    await confirm.get_by_role("button", name="Delete key").click()
    await expect(confirm).to_be_hidden()
    await expect(page.locator("#toasts")).to_contain_text("Deleted “Production integration”")
    await expect(page.get_by_role("heading", name="No API keys yet")).to_be_visible()
    await answers(gateway, second, 401)


async def test_table_shows_rotation_due_relative_times_and_pages(
    browser: Browser, acme: Acme, client: AdminClient, db: asyncpg.Connection, seed: Seed
) -> None:
    page = browser.page
    expiry = dt.datetime.now(dt.UTC) + dt.timedelta(days=45)
    made = {
        name: await create_key(client, acme.owner, name, **fields)
        for name, fields in [
            ("Zapier – CRM sync", {}),
            ("Google Sheets extension", {"permissions": ["reports:read"]}),
            ("Production integration", {}),
            ("Staging dashboard", {"expires_at": expiry.isoformat()}),
        ]
    }
    # Histories a real account would have: used minutes and days ago, a secret past rotation.
    day, now = dt.timedelta(days=1), dt.datetime.now(dt.UTC)
    history = {  # name: (age, last used, age of the secret)
        "Production integration": (12 * day, dt.timedelta(minutes=3), 12 * day),
        "Google Sheets extension": (40 * day, 2 * day, 40 * day),
        "Zapier – CRM sync": (140 * day, dt.timedelta(hours=5), 140 * day),
        "Staging dashboard": (day, None, day),
    }
    for name, (age, used, secret_age) in history.items():
        key_id = uuid.UUID(made[name]["id"])
        await db.execute(
            "UPDATE api_keys SET created_at = $2, secret_created_at = $3 WHERE id = $1",
            key_id,
            now - age,
            now - secret_age,
        )
        if used is not None:
            await seed.store.record_last_used({key_id: (now - used).timestamp()})

    await browser.sign_in(acme.owner)
    rows = page.locator("#keys-body tr")
    await expect(rows).to_have_count(4)
    await expect(rows.locator(".key-name")).to_have_text(
        [
            "Staging dashboard",
            "Production integration",
            "Google Sheets extension",
            "Zapier – CRM sync",
        ]
    )
    await expect(browser.row("Production integration").locator(".col-used")).to_have_text(
        "3 minutes ago"
    )
    await expect(browser.row("Google Sheets extension").locator(".col-used")).to_have_text(
        "2 days ago"
    )
    await expect(browser.row("Staging dashboard").locator(".col-used")).to_have_text("Never")
    title = await browser.row("Zapier – CRM sync").locator(".col-used time").get_attribute("title")
    assert title and re.search(r"\d{1,2}:\d{2}:\d{2}", title), title
    await expect(page.locator("#keys-body .badge", has_text="Rotation due")).to_have_count(1)
    await expect(browser.row("Zapier – CRM sync")).to_contain_text("Rotation due")
    await expect(browser.row("Google Sheets extension")).to_contain_text("Permission: reports:read")
    await expect(page.locator("#keys-range")).to_have_text("4 keys")
    await expect(page.locator("#page-next")).to_be_hidden()
    await expect(browser.row("Staging dashboard")).to_contain_text(
        f"Expires on {expiry:%b} {expiry.day}, {expiry.year}"
    )
    await browser.state("keys-table")

    for i in range(19):
        await create_key(client, acme.owner, f"Nightly export {i + 1}")
    await page.reload()
    await expect(rows).to_have_count(20)
    await expect(page.locator("#keys-range")).to_have_text("Keys 1–20")
    await expect(page.locator("#page-prev")).to_be_disabled()
    await page.locator("#page-next").click()
    await expect(rows).to_have_count(3)
    await expect(page.locator("#keys-range")).to_have_text("Keys 21–23")
    await expect(page.locator("#page-next")).to_be_disabled()
    await expect(rows.locator(".key-name")).to_have_text(
        ["Production integration", "Google Sheets extension", "Zapier – CRM sync"]
    )
    await page.locator("#page-prev").click()
    await expect(rows).to_have_count(20)
    await expect(rows.first.locator(".key-name")).to_have_text("Nightly export 19")


async def test_a_readonly_member_is_told_plainly_that_keys_are_not_theirs(
    browser: Browser, acme: Acme, client: AdminClient
) -> None:
    await create_key(client, acme.owner, "Warehouse sync")
    page = browser.page
    await browser.sign_in(acme.readonly)
    await expect(page.locator("#session-name")).to_have_text("Sam Rivera")
    await expect(page.locator("#session-role")).to_have_text("Read-only")
    await expect(
        page.get_by_role("heading", name="Read-only members can't view or manage API keys")
    ).to_be_visible()
    await expect(page.locator("#readonly-text")).to_contain_text(
        "Your role in Acme Analytics is Read-only"
    )
    await expect(page.locator("#keys-table")).to_be_hidden()
    await expect(page.get_by_role("button", name="Create API key")).to_be_hidden()
    assert "Warehouse sync" not in await page.content()
    await expect(page.locator("#console-nav")).to_be_hidden()
    await expect(
        page.locator("button:visible", has_text=re.compile("Edit|Delete|Add"))
    ).to_have_count(0)
    await browser.state("read-only")
    # What the page hides, the API refuses.
    for method, path, body in [
        ("GET", "/v1/keys", None),
        ("POST", "/v1/keys", {"name": "Sneaky"}),
        ("GET", "/v1/usage", None),
        ("GET", "/v1/members", None),
        ("GET", "/v1/audit-log", None),
    ]:
        reply = await client.call(method, path, acme.readonly, json_body=body)
        assert reply.status == 403, (method, path, reply.status)


async def test_leaked_and_expired_keys_show_red_badges_the_leak_linked(
    browser: Browser, acme: Acme, client: AdminClient, seed: Seed
) -> None:
    leaked = await create_key(client, acme.owner, "Pasted in a gist")
    reported = await create_key(client, acme.owner, "Reported only")
    await create_key(client, acme.owner, "Fine")
    expired = await create_key(client, acme.owner, "Old contractor")
    async with seed.pool.acquire() as conn, conn.transaction():
        url = "https://gist.github.com/someone/abc123"
        assert await seed.store.mark_leaked(conn, uuid.UUID(leaked["id"]), url, "disable")
        assert await seed.store.mark_leaked(conn, uuid.UUID(reported["id"]), None, "report")
        await conn.execute(
            "UPDATE api_keys SET expires_at = now() - interval '1 day' WHERE id = $1",
            uuid.UUID(expired["id"]),
        )
    await browser.sign_in(acme.owner)
    await expect(browser.row("Old contractor").locator(".badge-danger")).to_have_text("Expired")
    await expect(browser.row("Fine").locator(".badge")).to_have_count(0)
    badge = browser.row("Pasted in a gist").locator(".badge-leaked")
    await expect(badge).to_have_text("Leaked · disabled")
    await expect(badge).to_have_attribute("href", url)
    await expect(badge).to_have_attribute("rel", "noopener noreferrer")
    await expect(badge).to_have_css(
        "color", re.compile(r"rgb\((1[5-9]\d|2\d\d), \d{1,2}, \d{1,2}\)")
    )
    await expect(browser.row("Pasted in a gist")).not_to_contain_text("Disabled ")
    other = browser.row("Reported only").locator(".badge-leaked")
    await expect(other).to_have_text("Leaked")
    assert await other.evaluate("el => el.tagName") == "SPAN"  # no URL: nothing to link
    await expect(browser.row("Fine").locator(".badge-leaked")).to_have_count(0)
    await browser.state("keys-leaked")


async def test_edit_in_place_with_the_apis_messages_then_disable_and_enable(
    browser: Browser, acme: Acme, client: AdminClient, gateway: TestServer
) -> None:
    page = browser.page
    made = await create_key(client, acme.owner, "Zapier automation")
    await browser.sign_in(acme.owner)
    await browser.row("Zapier automation").get_by_role("button", name="Edit").click()
    dialog = page.locator("#edit-dialog")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#edit-title")).to_have_text("Edit “Zapier automation”")
    await expect(page.locator("#edit-name")).to_have_value("Zapier automation")
    await expect(page.locator("#edit-per-minute")).to_have_value("600")
    await browser.state("key-edit")

    # Permissions come from GET /v1/permissions, grouped by resource with read/write.
    data = dialog.get_by_role("group", name="Data")
    await expect(data.get_by_role("checkbox")).to_have_count(2)
    await expect(data.get_by_label("Read")).to_be_checked()
    await expect(data.get_by_label("Write")).to_be_checked()
    await expect(data).to_contain_text("Push data (imports)")
    await expect(dialog.get_by_role("group", name="Reports").get_by_role("checkbox")).to_have_count(
        1
    )
    await page.locator("#edit-name").fill("Zapier – CRM sync")
    await dialog.get_by_role("group", name="Data").get_by_label("Read").uncheck()
    await page.locator("#edit-per-minute").fill("0")
    await page.locator("#edit-allowlist").fill("10.0.0.1/8")
    await dialog.get_by_role("button", name="Save changes").click()
    errors = page.locator("#edit-error")
    await expect(errors).to_contain_text("Requests per minute: must be between 1 and")
    await expect(errors).to_contain_text("IP allowlist: “10.0.0.1/8”: host bits set")
    await browser.state("key-edit-error")
    unchanged = await client.call("GET", f"/v1/keys/{made['id']}", acme.owner)
    assert unchanged.body["name"] == "Zapier automation"

    await page.locator("#edit-per-minute").fill("60")
    await page.locator("#edit-allowlist").fill("127.0.0.1")
    await dialog.get_by_role("button", name="Save changes").click()
    await expect(dialog).to_be_hidden()
    await expect(page.locator("#toasts")).to_contain_text("Saved “Zapier – CRM sync”")
    row = browser.row("Zapier – CRM sync")
    await expect(row.locator(".badge-outline")).to_contain_text("data:write")
    await expect(row.locator(".badge-outline")).not_to_contain_text("data:read")
    saved = (await client.call("GET", f"/v1/keys/{made['id']}", acme.owner)).body
    assert "data:read" not in saved["permissions"] and "data:write" in saved["permissions"]
    assert saved["rate_limit"]["per_minute"] == 60
    assert saved["ip_allowlist"] == ["127.0.0.1/32"]
    assert await key_status(gateway, made["key"], "/v1/reports/mrr") == 200

    # Disable: refused by the proxy at once, badge in the table; enable: back.
    await row.get_by_role("button", name="Edit").click()
    await expect(page.locator("#edit-status")).to_contain_text("This key is enabled")
    await dialog.get_by_role("button", name="Disable key").click()
    await expect(page.locator("#edit-status")).to_contain_text("This key is disabled")
    await browser.state("key-edit-disabled")
    await answers(gateway, made["key"], 401)
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(row.locator(".badge", has_text="Disabled")).to_be_visible()
    await row.get_by_role("button", name="Edit").click()
    await dialog.get_by_role("button", name="Enable key").click()
    await expect(page.locator("#edit-status")).to_contain_text("This key is enabled")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(row.locator(".badge", has_text="Disabled")).to_have_count(0)
    await answers(gateway, made["key"], 200)


async def test_regenerate_with_a_grace_keeps_the_old_secret_until_the_time_shown(
    browser: Browser, acme: Acme, client: AdminClient, gateway: TestServer
) -> None:
    page = browser.page
    made = await create_key(client, acme.owner, "Google Sheets extension")
    await browser.sign_in(acme.owner)
    await browser.row("Google Sheets extension").get_by_role("button", name="Regenerate").click()
    confirm = page.locator("#confirm-dialog")
    grace = confirm.get_by_role("group", name="Keep the old key working for")
    await expect(grace.get_by_role("radio")).to_have_count(4)
    await expect(grace.get_by_label("None: the old key stops working now")).to_be_checked()
    await grace.get_by_label("24 hours").check()
    await browser.state("regenerate-grace")
    await confirm.get_by_role("button", name="Regenerate key").click()
    secret = page.locator("#secret-dialog")
    await expect(secret).to_be_visible()
    until = dt.datetime.now(dt.UTC) + dt.timedelta(hours=24)
    subtitle = page.locator("#secret-subtitle")
    await expect(subtitle).to_contain_text("old secret accepted until")
    await expect(subtitle).to_contain_text(f"{until:%B} {until.day}, {until.year}")
    await expect(subtitle).to_contain_text("(24 h grace)")
    new = await page.locator("#secret-value").inner_text()
    await secret.get_by_role("button", name="Done").click()
    # Both secrets work during the grace period.
    assert await key_status(gateway, made["key"], "/v1/reports/mrr") == 200
    assert await key_status(gateway, new, "/v1/reports/mrr") == 200


async def test_last_used_is_polled_every_15_seconds_in_place_keeping_focus_and_scroll(
    browser: Browser, acme: Acme, client: AdminClient, seed: Seed
) -> None:
    page = browser.page
    await page.clock.install()  # the page's timers run when the test says so
    for i in range(12):
        await create_key(client, acme.owner, f"Report {i + 1}")
    await browser.sign_in(acme.owner)
    await page.set_viewport_size({"width": 1280, "height": 500})
    target = browser.row("Report 1")
    await expect(target.locator(".col-used")).to_have_text("Never")
    await target.get_by_role("button", name="Copy").focus()
    await page.evaluate("window.scrollTo(0, 400)")
    scrolled = await page.evaluate("window.scrollY")
    assert scrolled > 0
    await page.evaluate(
        "document.querySelector('#keys-body tr:last-child').dataset.marker = 'same'"
    )
    listed = await client.call("GET", "/v1/keys?limit=100", acme.owner)
    key_id = next(k["id"] for k in listed.body["items"] if k["name"] == "Report 1")
    await seed.store.record_last_used({uuid.UUID(key_id): time.time()})

    await page.clock.run_for(14_000)
    await expect(target.locator(".col-used")).to_have_text("Never")  # not yet
    await page.clock.run_for(1_500)
    await expect(target.locator(".col-used")).to_have_text("just now")
    # The same rows (nothing rebuilt, so no flash), the same focus, the same scroll.
    assert (
        await page.evaluate("document.querySelector('#keys-body tr:last-child').dataset.marker")
        == "same"
    )
    await expect(target.get_by_role("button", name="Copy")).to_be_focused()
    assert await page.evaluate("window.scrollY") == scrolled
    await page.set_viewport_size(WIDE)


async def test_a_refresh_brings_another_members_changes_to_the_row_and_its_dialogs(
    browser: Browser, acme: Acme, client: AdminClient
) -> None:
    """Regenerated, renamed, disabled and limited elsewhere: after the tab's refresh the row
    shows and copies the new partial key, its buttons are named for the new name, and Edit
    starts from the key as it is now, so a Save back to the old limit is sent."""
    page = browser.page
    made = await create_key(client, acme.owner, "Sheets", rate_limit={"per_minute": 50})
    await browser.sign_in(acme.owner)
    await expect(browser.row("Sheets")).to_have_count(1)
    rolled = await client.call("POST", f"/v1/keys/{made['id']}/regenerate", acme.admin)
    assert rolled.status == 200, rolled.text
    partial = rolled.body["partial_key"]
    assert partial != made["partial_key"]
    changed = await client.call(
        "PATCH",
        f"/v1/keys/{made['id']}",
        acme.admin,
        json_body={"enabled": False, "name": "Sheets (old)", "rate_limit": {"per_minute": 7}},
    )
    assert changed.status == 200, changed.text

    await page.evaluate("window.dispatchEvent(new Event('focus'))")
    row = browser.row("Sheets (old)")
    await expect(row.locator(".badge", has_text="Disabled")).to_have_count(1)
    await expect(row.locator(".partial-key")).to_have_text(partial)
    for label in ("Copy the partial key of", "Edit", "Usage of", "Regenerate", "Delete"):
        name = f"{label} Sheets (old)"
        await expect(row.get_by_role("button", name=name, exact=True)).to_have_count(1)
    await row.get_by_role("button", name="Copy the partial key of Sheets (old)").click()
    await expect(page.locator("#toasts")).to_contain_text(f"Copied the partial key {partial}")
    assert await browser.clipboard() == partial

    await row.get_by_role("button", name="Edit Sheets (old)").click()
    dialog = page.locator("#edit-dialog")
    await expect(page.locator("#edit-title")).to_have_text("Edit “Sheets (old)”")
    await expect(page.locator("#edit-name")).to_have_value("Sheets (old)")
    await expect(page.locator("#edit-status")).to_contain_text("This key is disabled")
    await expect(dialog.get_by_role("button", name="Enable key")).to_be_visible()
    await expect(page.locator("#edit-per-minute")).to_have_value("7")
    await page.locator("#edit-per-minute").fill("50")
    await dialog.get_by_role("button", name="Save changes").click()
    await expect(dialog).to_be_hidden()
    saved = (await client.call("GET", f"/v1/keys/{made['id']}", acme.owner)).body
    assert saved["rate_limit"]["per_minute"] == 50
    assert saved["name"] == "Sheets (old)" and saved["enabled"] is False

    await browser.row("Sheets (old)").get_by_role("button", name="Regenerate Sheets (old)").click()
    await expect(page.locator("#confirm-title")).to_have_text("Regenerate “Sheets (old)”?")
    await page.locator("#confirm-cancel").click()


async def test_keyboard_only_create_edit_regenerate_delete(
    browser: Browser, acme: Acme, client: AdminClient
) -> None:
    page = browser.page
    keys = page.keyboard
    await browser.sign_in(acme.owner)
    await expect(page.get_by_role("heading", name="API Keys", exact=True)).to_be_focused()

    await browser.tab_to(page.get_by_role("button", name="Create API key"))
    await keys.press("Enter")
    await expect(page.locator("#create-name")).to_be_focused()
    await keys.type("Keyboard key")
    await keys.press("Enter")  # submits the form
    secret = page.locator("#secret-dialog")
    await expect(secret).to_be_visible()
    await expect(page.locator("#secret-copy")).to_be_focused()
    await browser.tab_to(secret.get_by_role("button", name="Done"))
    await keys.press("Enter")
    await expect(secret).to_be_hidden()

    row = browser.row("Keyboard key")
    await browser.tab_to(row.get_by_role("button", name="Edit"))
    await keys.press("Enter")
    await expect(page.locator("#edit-name")).to_be_focused()
    await keys.press("Control+A")
    await keys.type("Keyboard key, renamed")
    await keys.press("Enter")
    await expect(page.locator("#edit-dialog")).to_be_hidden()
    row = browser.row("Keyboard key, renamed")
    await expect(row).to_be_visible()

    await browser.tab_to(row.get_by_role("button", name="Regenerate"))
    await keys.press("Enter")
    confirm = page.locator("#confirm-dialog")
    await expect(page.locator("#confirm-cancel")).to_be_focused()
    await browser.tab_to(confirm.get_by_label("None: the old key stops working now"))
    await keys.press("ArrowDown")  # radio group: to "1 hour"
    await expect(confirm.get_by_label("1 hour")).to_be_checked()
    await browser.tab_to(confirm.get_by_role("button", name="Regenerate key"))
    await keys.press("Enter")
    await expect(secret).to_be_visible()
    await expect(page.locator("#secret-subtitle")).to_contain_text("(1 h grace)")
    await browser.tab_to(secret.get_by_role("button", name="Done"))
    await keys.press("Enter")

    await browser.tab_to(row.get_by_role("button", name="Delete"))
    await keys.press("Enter")
    await browser.tab_to(confirm.get_by_role("button", name="Delete key"))
    await keys.press("Enter")
    await expect(page.get_by_role("heading", name="No API keys yet")).to_be_visible()
    listed = await client.call("GET", "/v1/keys", acme.owner)
    assert listed.body["items"] == []


async def test_polish_copy_does_not_reflow_icon_buttons_are_named_focus_ring_is_strong(
    browser: Browser, acme: Acme, client: AdminClient
) -> None:
    page = browser.page
    await create_key(client, acme.owner, "Internal dashboard")
    await browser.sign_in(acme.owner)

    # Copy -> Copied leaves the new key where it was, wide and narrow.
    for size in (WIDE, NARROW):
        await page.set_viewport_size(size)
        await page.get_by_role("button", name="Create API key").click()
        await page.locator("#create-name").fill(f"Copy test {size['width']}")
        await page.locator("#create-dialog").get_by_role("button", name="Create key").click()
        value = page.locator("#secret-value")
        await expect(value).to_be_visible()
        before = await value.bounding_box()
        await page.locator("#secret-copy").click()
        await expect(page.locator("#secret-copy")).to_have_text("Copied")
        assert await value.bounding_box() == before, size
        await page.get_by_role("button", name="Done").click()

    # At 390 px the row buttons are icons: each says what it does (tooltip and name).
    await page.set_viewport_size(NARROW)
    buttons = browser.row("Internal dashboard").locator(".actions button")
    await expect(buttons).to_have_count(5)
    for i in range(5):
        button = buttons.nth(i)
        await expect(button.locator(".label")).to_be_hidden()
        title = await button.get_attribute("title")
        label = await button.get_attribute("aria-label")
        assert title in ("Copy", "Edit", "Usage", "Regenerate", "Delete"), title
        assert label and label.endswith("Internal dashboard"), label
    await browser.state("keys-narrow-buttons")
    await page.set_viewport_size(WIDE)

    # The focus ring: a solid outline of at least 2 px when reached by keyboard.
    await browser.tab_to(browser.row("Internal dashboard").get_by_role("button", name="Edit"))
    ring = await page.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, parseFloat(s.outlineWidth)]; })()"
    )
    assert ring[0] == "solid" and ring[1] >= 2, ring
