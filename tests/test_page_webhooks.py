"""The webhooks page in a real Chromium: add an endpoint with its events (the signing
secret shown once), see deliveries and resend one, edit URL and events, disable and
enable, rotate the secret, delete."""

from __future__ import annotations

import contextlib
import re

from aiohttp import web
from aiohttp.test_utils import TestServer

from .helpers import wait_for
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

SECRET = re.compile(r"^whsec_\S{20,}$")


async def test_an_owner_manages_a_webhook_endpoint_from_add_to_delete(
    browser: Browser, acme: Acme, client: AdminClient
) -> None:
    received: list[dict[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        received.append({"path": request.path, **request.headers})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/other", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        page = browser.page
        await browser.sign_in(acme.owner)
        await browser.go("Webhooks")
        await expect(page.get_by_role("heading", name="Webhooks", exact=True)).to_be_focused()
        await expect(page.locator("#webhooks-empty")).to_be_visible()
        await expect(page.locator("#webhook-events input:checked")).to_have_count(11)
        await browser.state("webhooks-empty")
        await page.locator("#webhook-url").fill("ftp://nowhere")
        await page.get_by_role("button", name="Add endpoint").click()
        await expect(page.locator("#webhook-error")).to_contain_text("URL:")
        await browser.state("webhooks-error")

        url = str(server.make_url("/hook"))
        await page.locator("#webhook-url").fill(url)
        await page.get_by_role("button", name="Add endpoint").click()
        await expect(page.locator("#webhook-secret")).to_have_text(SECRET)
        first_secret = await page.locator("#webhook-secret").inner_text()
        row = page.locator("#webhooks-body tr", has_text=url)
        await expect(row).to_contain_text("All events")
        await expect(row).to_contain_text("Enabled")
        await browser.state("webhooks-secret")
        await page.get_by_role("button", name="I've stored it").click()
        await expect(page.locator("#webhook-secret-box")).to_be_hidden()

        await create_key(client, acme.owner, "Announced")
        await wait_for(lambda: len(received) == 1)
        await row.get_by_role("button", name=f"Deliveries to {url}").click()
        deliveries = page.locator(".deliveries-table tbody tr")
        await expect(deliveries).to_have_count(1)
        await expect(deliveries.first).to_contain_text("key.created")
        await expect(deliveries.first).to_contain_text("succeeded")
        await browser.state("webhooks-deliveries")
        await deliveries.first.get_by_role("button", name="Resend key.created").click()
        await wait_for(lambda: len(received) == 2)
        assert received[0]["webhook-id"] == received[1]["webhook-id"]

        # Edit: another URL, one event only.
        await row.get_by_role("button", name=f"Edit {url}").click()
        other = str(server.make_url("/other"))
        await page.locator("#webhook-edit-url").fill(other)
        boxes = page.locator("#webhook-edit-events input")
        for i in range(await boxes.count()):
            box = boxes.nth(i)
            if await box.get_attribute("value") != "key.deleted":
                await box.uncheck()
        await browser.state("webhooks-edit")
        await page.locator("#webhook-dialog").get_by_role("button", name="Save changes").click()
        row = page.locator("#webhooks-body tr", has_text=other)
        await expect(row).to_contain_text("key.deleted")
        hooks = (await client.call("GET", "/v1/webhooks", acme.owner)).body["items"]
        assert [(h["url"], h["events"]) for h in hooks] == [(other, ["key.deleted"])]

        # Disable and enable.
        await row.get_by_role("button", name=f"Disable {other}").click()
        await expect(row).to_contain_text("Disabled")
        hooks = (await client.call("GET", "/v1/webhooks", acme.owner)).body["items"]
        assert hooks[0]["enabled"] is False
        await row.get_by_role("button", name=f"Enable {other}").click()
        await expect(row.locator(".badge")).to_have_text("Enabled")

        # Rotate: a new secret, shown once.
        await row.get_by_role("button", name=f"Rotate secret of {other}").click()
        await expect(page.locator("#confirm-title")).to_have_text("Rotate the signing secret?")
        await page.locator("#confirm-dialog").get_by_role("button", name="Rotate secret").click()
        await expect(page.locator("#webhook-secret")).to_have_text(SECRET)
        assert await page.locator("#webhook-secret").inner_text() != first_secret
        await page.reload()  # shown once: not again
        await expect(page.locator("#webhooks-body tr", has_text=other)).to_be_visible()
        await expect(page.locator("#webhook-secret-box")).to_be_hidden()

        await (
            page.locator("#webhooks-body tr", has_text=other)
            .get_by_role("button", name=f"Delete {other}")
            .click()
        )
        await page.locator("#confirm-ok").click()
        await expect(page.locator("#webhooks-empty")).to_be_visible()
        assert (await client.call("GET", "/v1/webhooks", acme.owner)).body["items"] == []
    finally:
        await server.close()


async def test_a_rotated_secret_is_offered_to_copy_afresh(browser: Browser, acme: Acme) -> None:
    """After a rotation the Copy button says Copy again, and copies the new secret."""
    page = browser.page
    await browser.sign_in(acme.owner)
    await browser.go("Webhooks")
    url = "http://127.0.0.1:9/hook"
    await page.locator("#webhook-url").fill(url)
    await page.get_by_role("button", name="Add endpoint").click()
    secret, copy = page.locator("#webhook-secret"), page.locator("#webhook-secret-copy")
    await expect(secret).to_have_text(SECRET)
    first = await secret.inner_text()
    await copy.click()
    await expect(copy).to_have_text("Copied")
    assert await browser.clipboard() == first
    await page.get_by_role("button", name="I've stored it").click()
    await expect(page.locator("#webhook-secret-box")).to_be_hidden()

    row = page.locator("#webhooks-body tr", has_text=url)
    await row.get_by_role("button", name=f"Rotate secret of {url}").click()
    await page.locator("#confirm-dialog").get_by_role("button", name="Rotate secret").click()
    await expect(secret).to_have_text(SECRET)
    await expect(secret).not_to_have_text(first)
    await expect(copy).to_have_text("Copy")
    await expect(copy).not_to_have_class(re.compile(r"\bis-copied\b"))
    await copy.click()
    await expect(copy).to_have_text("Copied")
    assert await browser.clipboard() == await secret.inner_text()
