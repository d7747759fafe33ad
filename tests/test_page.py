"""The console's sign-in, its security headers and policy, in a real Chromium.

The pages themselves are tested in tests/test_page_keys.py, test_page_usage.py,
test_page_members.py, test_page_audit.py and test_page_webhooks.py; the fixtures are in
tests/page_support.py.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from admin.page import CONTENT_SECURITY_POLICY

from .page_support import (  # noqa: F401 - fixtures
    STATIC_DIR,
    Acme,
    Browser,
    acme_fixture,
    browser_fixture,
    chromium_fixture,
    config_fixture,
    create_key,
)
from .test_admin_support import (  # noqa: F401 - fixtures
    BAD_TOKEN,
    OPERATOR_TOKEN,
    AdminClient,
    admin_server_fixture,
    client_fixture,
)

with contextlib.suppress(ImportError):  # reported by the `chromium` fixture
    from playwright.async_api import expect


# -- tests --------------------------------------------------------------------------------


async def test_sign_in_shows_who_and_role_and_sign_out_forgets_the_token(
    browser: Browser, acme: Acme, client: AdminClient
) -> None:
    page = browser.page
    await browser.open()
    await expect(page.get_by_role("heading", name="Sign in to manage API keys")).to_be_visible()
    # New users of `make run` are told which of its lines to paste.
    await expect(page.locator(".signin-help")).to_contain_text("make run")
    await expect(page.locator(".signin-help")).to_contain_text("owner token")
    await browser.state("sign-in")

    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#signin-error")).to_have_text("Paste your admin token to sign in.")
    await page.locator("#signin-token").fill(BAD_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#signin-error")).to_contain_text("That admin token isn't valid")
    await page.locator("#signin-token").fill(OPERATOR_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#signin-error")).to_contain_text("operator token")
    await browser.state("sign-in-error")

    await page.locator("#signin-token").fill(acme.owner)
    await page.get_by_role("button", name="Sign in").click()
    # Focus moves to the page's heading, not back to <body>.
    heading = page.get_by_role("heading", name="API Keys", exact=True)
    await expect(heading).to_be_focused()
    await expect(page.locator("#session-name")).to_have_text("Dana Whitfield")
    await expect(page.locator("#session-role")).to_have_text("Owner")
    await expect(page.locator("#session-account")).to_have_text("Acme Analytics")
    await expect(page.get_by_role("heading", name="No API keys yet")).to_be_visible()
    await expect(page.locator("#keys-empty")).to_contain_text("Google Sheets or Zapier")
    await browser.state("keys-empty")

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
    own = [
        p.name for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in (".js", ".css", ".svg")
    ]
    vendored = [
        f"vendor/{p.name}" for p in (STATIC_DIR / "vendor").iterdir() if p.suffix in (".js", ".css")
    ]
    return sorted(own + vendored)


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
    # Everything is served from here: no other origin is named anywhere (vendored files
    # name their home page and references in comments only).
    if "/vendor/" not in path:
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", body), path


def test_the_page_needs_no_unsafe_inline() -> None:
    """No inline script, no inline style, no event-handler attributes, no innerHTML."""
    html = (STATIC_DIR / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="/static/main.js">']
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=|javascript:", html, re.IGNORECASE)
    for script in [*STATIC_DIR.glob("*.js"), *STATIC_DIR.glob("vendor/*.js")]:
        source = script.read_text()
        assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", source)
        assert not re.search(r"\beval\(|new Function\(|localStorage\.|document\.cookie", source)


@pytest.mark.parametrize(
    "path",
    [
        "/static/..%2Fpage.py",
        "/static/app.py",
        "/static/missing.js",
        "/static/.hidden",
        "/static/vendor/LICENSE-uplot",
        "/static/vendor/README.md",
        "/static/vendor/..%2F..%2Fpage.py",
    ],
)
async def test_only_the_page_files_are_served(admin_server: TestServer, path: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(admin_server.make_url(path)) as response:
            assert response.status == 404
