"""The audit log page in a real Chromium: readable entries newest first, filters by who,
what and which key, and cursor paging."""

from __future__ import annotations

import contextlib

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


async def test_the_audit_log_reads_as_sentences_and_filters_by_actor_event_and_key(
    browser: Browser, acme: Acme, client: AdminClient
) -> None:
    page = browser.page
    zapier = await create_key(client, acme.admin, "Zapier automation")
    sheets = await create_key(client, acme.owner, "Sheets")
    rolled = await client.call(
        "POST",
        f"/v1/keys/{zapier['id']}/regenerate",
        acme.admin,
        json_body={"grace_seconds": 86400},
    )
    assert rolled.status == 200
    changed = await client.call(
        "PATCH", f"/v1/keys/{sheets['id']}", acme.owner, json_body={"enabled": False}
    )
    assert changed.status == 200

    await browser.sign_in(acme.admin)  # Admins read the log too
    await browser.go("Audit log")
    entries = page.locator("#audit-list .audit-sentence")
    await expect(entries.first).to_have_text("Dana Whitfield changed ‘Sheets’: disabled it")
    await expect(entries.nth(1)).to_have_text(
        "Ana Lopes regenerated ‘Zapier automation’ with a 24 h grace"
    )
    await expect(entries.nth(2)).to_have_text("Dana Whitfield created ‘Sheets’")
    await expect(entries.nth(3)).to_have_text("Ana Lopes created ‘Zapier automation’")
    await expect(page.locator("#audit-list")).to_contain_text(
        "Dana Whitfield added ana@acme.example as Admin"
    )
    await expect(page.locator("#audit-list .audit-meta").first).to_contain_text("from 127.0.0.1")
    await browser.state("audit-log")

    await page.locator("#audit-actor").select_option(label="Ana Lopes")
    await expect(entries).to_have_text(
        [
            "Ana Lopes regenerated ‘Zapier automation’ with a 24 h grace",
            "Ana Lopes created ‘Zapier automation’",
        ]
    )
    await page.locator("#audit-actor").select_option("")
    await page.locator("#audit-action").select_option(label="Key regenerated")
    await expect(entries).to_have_count(1)
    await page.locator("#audit-action").select_option("")
    await page.locator("#audit-key").select_option(label="Sheets")
    await expect(entries).to_have_text(
        ["Dana Whitfield changed ‘Sheets’: disabled it", "Dana Whitfield created ‘Sheets’"]
    )
    await browser.state("audit-log-filtered")
    await page.locator("#audit-action").select_option(label="Member removed")
    await expect(page.locator("#audit-empty")).to_be_visible()


async def test_the_audit_log_pages_with_its_cursor(
    browser: Browser, acme: Acme, client: AdminClient
) -> None:
    page = browser.page
    for i in range(30):
        await create_key(client, acme.owner, f"Batch {i + 1}")
    await browser.sign_in(acme.owner)
    await browser.go("Audit log")
    entries = page.locator("#audit-list .audit-sentence")
    await expect(entries).to_have_count(25)
    await expect(entries.first).to_have_text("Dana Whitfield created ‘Batch 30’")
    await expect(page.locator("#audit-prev")).to_be_disabled()
    await page.get_by_role("button", name="Older").click()
    # 30 keys, Dana's name, 2 members and the account itself: 34 events, 9 on page two.
    await expect(entries).to_have_count(9)
    await expect(entries.first).to_have_text("Dana Whitfield created ‘Batch 5’")
    await expect(entries.last).to_have_text("The operator created the account")
    await expect(page.locator("#audit-range")).to_have_text("Events 26–34")
    await expect(page.locator("#audit-next")).to_be_disabled()
    await page.get_by_role("button", name="Newer").click()
    await expect(entries.first).to_have_text("Dana Whitfield created ‘Batch 30’")


async def test_names_added_since_the_log_was_last_open_are_shown_and_filterable(
    browser: Browser, acme: Acme, client: AdminClient
) -> None:
    """The log reads member and key names afresh each time the page is entered."""
    page = browser.page
    await browser.sign_in(acme.owner)
    await browser.go("Audit log")
    entries = page.locator("#audit-list .audit-sentence")
    await expect(entries.first).to_have_text("Dana Whitfield added ana@acme.example as Admin")

    zapier = await create_key(client, acme.owner, "Zapier automation")
    rolled = await client.call("POST", f"/v1/keys/{zapier['id']}/regenerate", acme.owner)
    assert rolled.status == 200, rolled.text
    added = await client.call(
        "POST",
        "/v1/members",
        acme.owner,
        json_body={"email": "lee@acme.example", "name": "Lee Chen", "role": "admin"},
    )
    assert added.status == 201, added.text
    await create_key(client, added.body["token"], "Sheets")

    await browser.go("API keys")
    await browser.go("Audit log")
    await expect(entries.first).to_have_text("Lee Chen created ‘Sheets’")
    await expect(entries.nth(1)).to_have_text("Dana Whitfield added lee@acme.example as Admin")
    await expect(entries.nth(2)).to_have_text(
        "Dana Whitfield regenerated ‘Zapier automation’; the old secret stopped at once"
    )
    await page.locator("#audit-actor").select_option(label="Lee Chen")
    await expect(entries).to_have_text(["Lee Chen created ‘Sheets’"])
    await page.locator("#audit-actor").select_option("")
    await page.locator("#audit-key").select_option(label="Zapier automation")
    await expect(entries).to_have_text(
        [
            "Dana Whitfield regenerated ‘Zapier automation’; the old secret stopped at once",
            "Dana Whitfield created ‘Zapier automation’",
        ]
    )
