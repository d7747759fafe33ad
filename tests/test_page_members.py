"""The members page in a real Chromium: an Owner lists, adds (token shown once), changes
roles, removes and regenerates their own token, with the last Owner protected; an Admin
sees the list without a single write control, and the API refuses what the page hides."""

from __future__ import annotations

import contextlib
import re

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

TOKEN = re.compile(r"^gpa_[A-Za-z0-9]{20,}$")


def member_row(browser: Browser, name: str):  # type: ignore[no-untyped-def]
    return browser.page.locator("#members-body tr").filter(has_text=name)


async def test_an_owner_adds_changes_and_removes_members_and_keeps_the_last_owner(
    browser: Browser, acme: Acme, client: AdminClient
) -> None:
    page = browser.page
    await browser.sign_in(acme.owner)
    await browser.go("Members")
    await expect(page.get_by_role("heading", name="Members", exact=True)).to_be_focused()
    rows = page.locator("#members-body tr")
    await expect(rows).to_have_count(3)
    dana = member_row(browser, "Dana Whitfield")
    await expect(dana).to_contain_text("You")
    # Last activity: the member's newest audited change (Dana added Sam and Ana just now).
    await expect(dana.locator(".col-used")).to_have_text("just now")
    await expect(member_row(browser, "Sam Rivera").locator(".col-used")).to_have_text(
        "No changes yet"
    )
    # Dana is the only Owner: her role and her removal are locked, and the page says why.
    await expect(dana.get_by_role("combobox")).to_be_disabled()
    await expect(dana.get_by_role("button", name="Remove Dana Whitfield")).to_be_disabled()
    assert "last Owner" in (
        await dana.get_by_role("button", name="Remove Dana Whitfield").get_attribute("title") or ""
    )
    await expect(page.locator("#last-owner-note")).to_contain_text(
        "always keeps at least one Owner"
    )
    await browser.state("members")

    # Add: the token once, in the dialog, with words for a token (not a key).
    await page.get_by_role("button", name="Add member").click()
    await page.locator("#member-email").fill("not-an-email")
    await page.locator("#member-dialog").get_by_role("button", name="Add member").click()
    await expect(page.locator("#member-error")).to_contain_text("Email:")
    await page.locator("#member-email").fill("lee@acme.example")
    await page.locator("#member-name").fill("Lee Chen")
    await page.locator("#member-role").select_option("admin")
    await browser.state("member-add")
    await page.locator("#member-dialog").get_by_role("button", name="Add member").click()
    secret = page.locator("#secret-dialog")
    await expect(secret).to_be_visible()
    await expect(page.locator("#secret-title")).to_have_text("Lee Chen's admin token")
    await expect(secret).to_contain_text("This token can't be shown again.")
    token = await page.locator("#secret-value").inner_text()
    assert TOKEN.match(token), token
    await browser.state("member-token")
    await secret.get_by_role("button", name="Done").click()
    me = await client.call("GET", "/v1/me", token)
    assert (me.status, me.body["role"]) == (200, "admin")
    await expect(rows).to_have_count(4)

    # Change a role: Ana becomes an Owner; now Dana could be demoted, so her lock lifts.
    ana = member_row(browser, "Ana Lopes")
    await ana.get_by_role("combobox").select_option("owner")
    await expect(page.locator("#toasts")).to_contain_text("Ana Lopes is now Owner.")
    await expect(dana.get_by_role("combobox")).to_be_enabled()
    members = await client.call("GET", "/v1/members", acme.owner)
    assert {m["name"]: m["role"] for m in members.body["items"]}["Ana Lopes"] == "owner"

    # Remove, confirmed.
    await member_row(browser, "Sam Rivera").get_by_role("button", name="Remove Sam Rivera").click()
    await expect(page.locator("#confirm-title")).to_have_text("Remove Sam Rivera?")
    await browser.state("member-remove-confirm")
    await page.get_by_role("button", name="Remove member").click()
    await expect(rows).to_have_count(3)
    assert (await client.call("GET", "/v1/me", acme.readonly)).status == 401


async def test_an_owner_regenerates_their_own_token_and_the_page_keeps_working(
    browser: Browser, acme: Acme, client: AdminClient
) -> None:
    page = browser.page
    await create_key(client, acme.owner, "Warehouse sync")
    await browser.sign_in(acme.owner)
    await browser.go("Members")
    dana = member_row(browser, "Dana Whitfield")
    await dana.get_by_role("button", name="Regenerate my token").click()
    await page.get_by_role("button", name="Regenerate token").click()
    await expect(page.locator("#secret-title")).to_have_text("Your new admin token")
    token = await page.locator("#secret-value").inner_text()
    assert TOKEN.match(token) and token != acme.owner
    await page.get_by_role("button", name="Done").click()
    assert (await client.call("GET", "/v1/me", acme.owner)).status == 401
    assert await page.evaluate("Object.values(sessionStorage)") == [token]
    await browser.go("API keys")
    await expect(browser.row("Warehouse sync")).to_be_visible()
    await page.reload()
    await expect(page.locator("#session-role")).to_have_text("Owner")


async def test_an_admin_sees_members_without_write_controls_and_the_api_agrees(
    browser: Browser, acme: Acme, client: AdminClient
) -> None:
    page = browser.page
    await browser.sign_in(acme.admin)
    await expect(page.locator("#session-role")).to_have_text("Admin")
    nav = page.locator("#console-nav")
    await expect(nav.get_by_role("link", name="Webhooks")).to_be_hidden()  # Owners only
    await browser.go("Members")
    await expect(page.locator("#members-body tr")).to_have_count(3)
    await expect(page.locator("#members-readonly")).to_be_visible()
    await expect(page.get_by_role("button", name="Add member")).to_be_hidden()
    await expect(page.locator("#view-members select, #view-members td button")).to_have_count(0)
    await expect(member_row(browser, "Sam Rivera")).to_contain_text("Read-only")
    await browser.state("members-admin")
    # The page hides these; the API refuses them too.
    added = await client.call(
        "POST", "/v1/members", acme.admin, json_body={"email": "x@acme.example", "role": "owner"}
    )
    assert added.status == 403
    promoted = await client.call(
        "PATCH", f"/v1/members/{acme.admin_id}", acme.admin, json_body={"role": "owner"}
    )
    assert promoted.status == 403
    removed = await client.call("DELETE", f"/v1/members/{acme.owner_id}", acme.admin)
    assert removed.status == 403
    assert (await client.call("GET", "/v1/webhooks", acme.admin)).status == 403
    # A hand-typed #webhooks lands on the keys page instead.
    await browser.open("#webhooks")
    await expect(page.get_by_role("heading", name="API Keys", exact=True)).to_be_visible()
