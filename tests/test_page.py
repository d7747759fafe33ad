"""The "Account → API Keys" page in a real Chromium, against the real admin API and proxy.

Playwright for Python drives Debian's Chromium (`/usr/bin/chromium`; Playwright's own
browser downloads are not used). One headless Chromium serves the whole module; each test
connects to it over the DevTools protocol and gets a fresh browser context (no shared
cookies, storage or permissions). Without Chromium or Playwright the browser tests skip,
saying why, except under `CI=true`, where that is a failure.

The tests save PNGs of the page's main states in `tests/artifacts/screenshots/`;
with `UPDATE_SCREENSHOTS=1` they refresh the committed ones in `docs/screenshots/`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from admin.page import CONTENT_SECURITY_POLICY

from .conftest import Seed
from .helpers import REPO_ROOT, key_status, wait_for
from .test_admin_support import (  # noqa: F401 - fixtures
    BAD_TOKEN,
    OPERATOR_TOKEN,
    AdminClient,
    admin_server_fixture,
    client_fixture,
)

try:
    from playwright.async_api import Page, async_playwright, expect
except ImportError:  # reported by the `chromium` fixture
    async_playwright = None

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# What a closed network needs: nothing that phones home, no QUIC, no sandbox (root).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STATIC_DIR = REPO_ROOT / "admin" / "static"
SCREENSHOTS = (
    REPO_ROOT / "docs" / "screenshots"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1"
    else REPO_ROOT / "tests" / "artifacts" / "screenshots"
)
KEY_PATTERN = re.compile(r"^gp_[A-Za-z0-9]{46}$")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so the page's browser tests must run")
    pytest.skip(f"{reason}: the page's browser tests need Debian's chromium (`make test` adds it)")


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One headless Chromium for the module; yields its DevTools endpoint."""
    if async_playwright is None:
        _unavailable("Playwright for Python is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no Chromium at {CHROMIUM}")
    profile = tmp_path_factory.mktemp("chromium-profile")
    log_path = profile.parent / "chromium.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(CHROMIUM),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        active_port = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not active_port.exists() or not active_port.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                _unavailable(f"Chromium at {CHROMIUM} did not start: {tail}")
            time.sleep(0.05)
        port = active_port.read_text().split()[0]
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclasses.dataclass
class Browser:
    page: Page
    base_url: str
    dialogs: list[str]  # window.alert / confirm / prompt: none may ever open
    problems: list[str]  # uncaught errors and CSP violations

    async def open(self) -> None:
        await self.page.goto(self.base_url + "/")

    async def sign_in(self, token: str) -> None:
        await self.open()
        await self.page.locator("#signin-token").fill(token)
        await self.page.get_by_role("button", name="Sign in").click()
        await expect(self.page.locator("#session")).to_be_visible()

    async def clipboard(self) -> str:
        text: str = await self.page.evaluate("navigator.clipboard.readText()")
        return text

    async def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), animations="disabled")

    def row(self, name: str) -> Any:
        return self.page.locator("#keys-body tr").filter(
            has=self.page.locator(".key-name", has_text=re.compile("^" + re.escape(name) + "$"))
        )


@pytest.fixture
async def browser(chromium: str, admin_server: TestServer) -> AsyncIterator[Browser]:
    base_url = str(admin_server.make_url("")).rstrip("/")
    assert async_playwright is not None
    async with async_playwright() as playwright:
        connected = await playwright.chromium.connect_over_cdp(chromium)
        context = await connected.new_context(
            viewport={"width": 1280, "height": 800}, locale="en-US", timezone_id="UTC"
        )
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
        context.set_default_timeout(10_000)
        page = await context.new_page()
        seen = Browser(page, base_url, [], [])

        async def on_dialog(dialog: Any) -> None:
            seen.dialogs.append(dialog.message)
            await dialog.dismiss()

        def on_console(message: Any) -> None:
            # "Failed to load resource: … 401" is Chromium logging an API answer the page
            # expected (a wrong token); anything else at error level is a problem.
            if message.type == "error" and not message.text.startswith("Failed to load resource"):
                seen.problems.append(message.text)

        page.on("dialog", on_dialog)
        page.on("console", on_console)
        page.on("pageerror", lambda error: seen.problems.append(str(error)))
        yield seen
        await context.close()
        await connected.close()
    assert seen.dialogs == [], "the page opened a JavaScript dialog"
    assert seen.problems == [], "errors or CSP violations in the page"


# -- data ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Acme:
    account_id: str
    owner: str
    owner_id: str
    readonly: str


@pytest.fixture
async def acme(client: AdminClient) -> Acme:
    """An account as a person would see it: named members, an Owner and a Read-only one."""
    created = await client.call(
        "POST",
        "/v1/accounts",
        OPERATOR_TOKEN,
        json_body={"name": "Acme Analytics", "owner_email": "dana@acme.example"},
    )
    assert created.status == 201, created.text
    owner = created.body["token"]
    renamed = await client.call(
        "PATCH",
        f"/v1/members/{created.body['owner']['id']}",
        owner,
        json_body={"name": "Dana Whitfield"},
    )
    assert renamed.status == 200, renamed.text
    readonly = await client.call(
        "POST",
        "/v1/members",
        owner,
        json_body={"email": "sam@acme.example", "name": "Sam Rivera", "role": "readonly"},
    )
    assert readonly.status == 201, readonly.text
    return Acme(
        created.body["account"]["id"], owner, created.body["owner"]["id"], readonly.body["token"]
    )


async def create_key(client: AdminClient, token: str, name: str, **fields: Any) -> dict[str, Any]:
    reply = await client.call("POST", "/v1/keys", token, json_body={"name": name, **fields})
    assert reply.status == 201, reply.text
    body: dict[str, Any] = reply.body
    return body


async def answers(gateway: TestServer, key: str, status: int) -> None:
    """SPEC §2: a regenerated or deleted key is refused within a second."""

    async def answered() -> bool:
        return await key_status(gateway, key, "/v1/reports/mrr") == status

    await wait_for(answered, timeout=1.0)


# -- tests --------------------------------------------------------------------------------


async def test_sign_in_shows_who_and_role_and_sign_out_forgets_the_token(
    browser: Browser, acme: Acme, client: AdminClient
) -> None:
    page = browser.page
    await browser.open()
    await expect(page.get_by_role("heading", name="Sign in to manage API keys")).to_be_visible()
    await browser.shot("sign-in")

    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#signin-error")).to_have_text("Paste your admin token to sign in.")
    await page.locator("#signin-token").fill(BAD_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#signin-error")).to_contain_text("That admin token isn't valid")
    await page.locator("#signin-token").fill(OPERATOR_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#signin-error")).to_contain_text("operator token")

    await page.locator("#signin-token").fill(acme.owner)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#session-name")).to_have_text("Dana Whitfield")
    await expect(page.locator("#session-role")).to_have_text("Owner")
    await expect(page.locator("#session-account")).to_have_text("Acme Analytics")
    await expect(page.get_by_role("heading", name="No API keys yet")).to_be_visible()
    await expect(page.locator("#keys-empty")).to_contain_text("Google Sheets or Zapier")
    await browser.shot("empty-state")

    # The token lives in this tab's sessionStorage only: no cookie, nothing in localStorage.
    assert await page.context.cookies() == []
    assert await page.evaluate("localStorage.length") == 0
    assert await page.evaluate("Object.values(sessionStorage)") == [acme.owner]
    await page.reload()
    await expect(page.locator("#session-role")).to_have_text("Owner")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.locator("#signin-notice")).to_contain_text("You have signed out")
    await expect(page.locator("#session")).to_be_hidden()
    assert await page.evaluate("sessionStorage.length") == 0
    await page.reload()
    await expect(page.get_by_role("heading", name="Sign in to manage API keys")).to_be_visible()

    # A token regenerated elsewhere ends the session with a sentence, not a broken page.
    await browser.sign_in(acme.owner)
    rolled = await client.call("POST", f"/v1/members/{acme.owner_id}/regenerate-token", acme.owner)
    assert rolled.status == 200
    await page.reload()
    await expect(page.locator("#signin-notice")).to_contain_text(
        "Your admin token is no longer accepted"
    )
    assert await page.evaluate("sessionStorage.length") == 0


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
    await browser.shot("create-dialog")

    # Advanced: a bad allowlist entry comes back from the API as words naming the entry.
    await dialog.locator("summary").click()
    await dialog.get_by_label("Account").uncheck()
    await page.locator("#create-per-minute").fill("120")
    await page.locator("#create-allowlist").fill("10.0.0.1/8")
    await page.set_viewport_size({"width": 1280, "height": 1100})
    await browser.shot("create-dialog-advanced")
    await dialog.get_by_role("button", name="Create key").click()
    await expect(page.locator("#create-error")).to_contain_text(
        "IP allowlist: “10.0.0.1/8”: host bits set; did you mean 10.0.0.0/8?"
    )
    await browser.shot("create-dialog-error")
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.locator("#create-allowlist").fill("127.0.0.1\n::1")
    await dialog.get_by_role("button", name="Create key").click()

    # The full key, once, with Copy and the warning.
    secret = page.locator("#secret-dialog")
    await expect(secret).to_be_visible()
    await expect(secret).to_contain_text("This key can't be shown again.")
    first = await page.locator("#secret-value").inner_text()
    assert KEY_PATTERN.match(first), first
    await browser.shot("key-created")
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
    assert (key["scopes"], key["rate_limit"]["per_minute"]) == (
        ["customers", "data", "reports"],
        120,
    )
    await expect(row.locator(".partial-key")).to_have_text(key["partial_key"])

    # Usable through the proxy; "Last used" follows after the flush and a refresh.
    assert await key_status(gateway, first, "/v1/reports/mrr") == 200

    async def used() -> bool:
        reply = await client.call("GET", f"/v1/keys/{key['id']}", acme.owner)
        return reply.body["last_used_at"] is not None

    await wait_for(used)
    await page.reload()
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
    await expect(confirm).to_contain_text("The current key stops working immediately")
    await expect(page.locator("#confirm-title")).to_have_text(
        "Regenerate “Production integration”?"
    )
    await browser.shot("regenerate-confirm")
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
    await browser.shot("delete-confirm")
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
            ("Google Sheets extension", {"scopes": ["reports"]}),
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
    await expect(browser.row("Google Sheets extension")).to_contain_text("Scope: reports")
    await expect(page.locator("#keys-range")).to_have_text("4 keys")
    await expect(page.locator("#page-next")).to_be_hidden()
    await expect(browser.row("Staging dashboard")).to_contain_text(
        f"Expires on {expiry:%b} {expiry.day}, {expiry.year}"
    )
    await page.mouse.move(0, 0)
    await browser.shot("keys-table")

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
    await browser.shot("read-only")


async def test_a_leaked_key_shows_a_red_badge_linking_to_the_leak(
    browser: Browser, acme: Acme, client: AdminClient, seed: Seed
) -> None:
    page = browser.page
    leaked = await create_key(client, acme.owner, "Pasted in a gist")
    reported = await create_key(client, acme.owner, "Reported only")
    await create_key(client, acme.owner, "Fine")
    async with seed.pool.acquire() as conn, conn.transaction():
        url = "https://gist.github.com/someone/abc123"
        assert await seed.store.mark_leaked(conn, uuid.UUID(leaked["id"]), url, "disable")
        assert await seed.store.mark_leaked(conn, uuid.UUID(reported["id"]), None, "report")
    await browser.sign_in(acme.owner)
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
    await page.mouse.move(0, 0)
    await browser.shot("keys-leaked")


async def test_an_owner_adds_a_webhook_sees_its_deliveries_and_resends_one(
    browser: Browser, acme: Acme, client: AdminClient, start_upstream: Any
) -> None:
    from aiohttp import web

    received: list[dict[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        received.append(dict(request.headers))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        page = browser.page
        await browser.sign_in(acme.owner)
        await expect(page.locator("#webhooks")).to_be_visible()
        await expect(page.locator("#webhooks-empty")).to_be_visible()
        await page.locator("#webhook-url").fill("ftp://nowhere")
        await page.get_by_role("button", name="Add endpoint").click()
        await expect(page.locator("#webhook-error")).to_contain_text("URL:")
        url = str(server.make_url("/hook"))
        await page.locator("#webhook-url").fill(url)
        await page.get_by_role("button", name="Add endpoint").click()
        await expect(page.locator("#webhook-secret")).to_have_text(re.compile(r"^whsec_\S{20,}$"))
        row = page.locator("#webhooks-body tr", has_text=url)
        await expect(row).to_contain_text("All events")
        await create_key(client, acme.owner, "Announced")
        await wait_for(lambda: len(received) == 1)
        await row.get_by_role("button", name="Deliveries").click()
        deliveries = page.locator(".deliveries-table tr")
        await expect(deliveries).to_have_count(1)
        await expect(deliveries.first).to_contain_text("key.created")
        await expect(deliveries.first).to_contain_text("succeeded")
        await page.mouse.move(0, 0)
        await browser.shot("webhooks")
        await deliveries.first.get_by_role("button", name="Resend").click()
        await wait_for(lambda: len(received) == 2)
        assert received[0]["webhook-id"] == received[1]["webhook-id"]
        await page.reload()  # the secret was shown once: not again
        await expect(page.locator("#webhooks-body tr", has_text=url)).to_be_visible()
        await expect(page.locator("#webhook-secret-box")).to_be_hidden()
        await (
            page.locator("#webhooks-body tr", has_text=url)
            .get_by_role("button", name="Delete")
            .click()
        )
        await page.locator("#confirm-ok").click()
        await expect(page.locator("#webhooks-empty")).to_be_visible()
    finally:
        await server.close()


async def test_a_key_name_is_text_never_markup(
    browser: Browser, acme: Acme, client: AdminClient
) -> None:
    """A key named `<img src=x onerror=alert(1)>` shows literally; no script ever runs."""
    page = browser.page
    await create_key(client, acme.owner, '"><script>alert(2)</script>')
    await browser.sign_in(acme.owner)
    xss = "<img src=x onerror=alert(1)>"
    await page.get_by_role("button", name="Create API key").click()
    await page.locator("#create-name").fill(xss)
    await page.locator("#create-dialog").get_by_role("button", name="Create key").click()
    await expect(page.locator("#secret-subtitle")).to_have_text(f"“{xss}” is ready to use.")
    await page.get_by_role("button", name="Done").click()

    await expect(page.locator("#keys-body .key-name")).to_have_text(
        [xss, '"><script>alert(2)</script>']
    )
    await expect(page.locator("#keys-body img, #keys-body script")).to_have_count(0)
    await browser.row(xss).get_by_role("button", name="Delete").click()
    await expect(page.locator("#confirm-title")).to_have_text(f"Delete “{xss}”?")
    await expect(page.locator("#confirm-dialog img")).to_have_count(0)
    await page.get_by_role("button", name="Cancel").click()
    await page.wait_for_timeout(200)  # time for an onerror handler, were there an <img>
    assert browser.dialogs == []

    # The policy is in force: Trusted Types refuse a string assigned to innerHTML.
    refused = await page.evaluate(
        "() => { try { document.body.innerHTML = '<b>x</b>'; return 'assigned'; }"
        " catch (e) { return e.name; } }"
    )
    assert refused == "TypeError"
    browser.problems.clear()  # that refusal is reported on the console, as it should be


# -- served files (no browser needed) -----------------------------------------------------


def _static_names() -> list[str]:
    return sorted(p.name for p in STATIC_DIR.iterdir() if p.name != "index.html")


@pytest.mark.parametrize("path", ["/", *(f"/static/{name}" for name in _static_names())])
async def test_page_and_files_carry_the_security_headers(
    admin_server: TestServer, path: str
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(admin_server.make_url(path)) as response:
            body = await response.text()
            assert response.status == 200
            headers = response.headers
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    expected = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    assert headers["Content-Type"].split(";")[0] == expected.get(Path(path).suffix, "text/html")
    # Everything is served from here: no other origin is named anywhere.
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", body), path


def test_the_page_needs_no_unsafe_inline() -> None:
    """No inline script, no inline style, no event-handler attributes, no innerHTML."""
    html = (STATIC_DIR / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="/static/main.js">']
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=|javascript:", html, re.IGNORECASE)
    for script in STATIC_DIR.glob("*.js"):
        source = script.read_text()
        assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", source)
        assert not re.search(r"\beval\(|new Function\(|localStorage\.|document\.cookie", source)


@pytest.mark.parametrize(
    "path", ["/static/..%2Fpage.py", "/static/app.py", "/static/missing.js", "/static/.hidden"]
)
async def test_only_the_page_files_are_served(admin_server: TestServer, path: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(admin_server.make_url(path)) as response:
            assert response.status == 404
