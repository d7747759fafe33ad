"""Fixtures and helpers for the console's browser tests (tests/test_page*.py).

Playwright for Python drives Debian's Chromium (`/usr/bin/chromium`; Playwright's own
browser downloads are not used). One headless Chromium serves each test module; each test
connects to it over the DevTools protocol and gets a fresh browser context (no shared
cookies, storage or permissions). Without Chromium or Playwright the browser tests skip,
saying why, except under `CI=true`, where that is a failure.

`Browser.state(name)` is called at every state of every page a test reaches: at 1280 px
and at 390 px wide it runs axe-core (vendored in tests/vendor/, injected through the
DevTools protocol, never served by the gateway), failing on any serious or critical
violation, and saves a PNG of the state in `tests/artifacts/screenshots/` — or, with
`UPDATE_SCREENSHOTS=1` (`make screenshots`), in `docs/screenshots/`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from gateway.config import Config

from .helpers import DEFAULT_PERMISSIONS, DEFAULT_ROUTE_DATA, REPO_ROOT, make_config
from .test_admin_support import OPERATOR_TOKEN, AdminClient

try:
    from playwright.async_api import Locator, Page, async_playwright, expect
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
UPDATING = os.environ.get("UPDATE_SCREENSHOTS") == "1"
SCREENSHOTS = (
    REPO_ROOT / "docs" / "screenshots"
    if UPDATING
    else REPO_ROOT / "tests" / "artifacts" / "screenshots"
)
AXE_REPORTS = REPO_ROOT / "tests" / "artifacts" / "axe"
AXE_SOURCE = REPO_ROOT / "tests" / "vendor" / "axe.min.js"
KEY_PATTERN = re.compile(r"^gp_[A-Za-z0-9]{46}$")
WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so the page's browser tests must run")
    pytest.skip(f"{reason}: the page's browser tests need Debian's chromium (`make test` adds it)")


@pytest.fixture(name="chromium", scope="module")
def chromium_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One headless Chromium for the module; yields its DevTools endpoint."""
    if async_playwright is None:
        _unavailable("Playwright for Python is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no Chromium at {CHROMIUM}")
    profile = tmp_path_factory.mktemp("chromium-profile")
    log_path = profile.parent / f"{profile.name}.log"
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


@pytest.fixture(name="config")
def config_fixture(database_url: str, upstream: TestServer) -> Config:
    """The route table and permissions as config.yaml ships them, without the other tests'
    catch-all route: the console shows (and pictures) what an operator would see."""
    return make_config(
        database_url,
        str(upstream.make_url("")).rstrip("/"),
        routes=DEFAULT_ROUTE_DATA,
        permissions=dict(DEFAULT_PERMISSIONS),
    )


@dataclasses.dataclass
class Browser:
    page: Page
    base_url: str
    dialogs: list[str]  # window.alert / confirm / prompt: none may ever open
    problems: list[str]  # uncaught errors and CSP violations
    states: list[str] = dataclasses.field(default_factory=list)

    async def open(self, fragment: str = "") -> None:
        await self.page.goto(self.base_url + "/" + fragment)

    async def sign_in(self, token: str, fragment: str = "") -> None:
        await self.open(fragment)
        await self.page.locator("#signin-token").fill(token)
        await self.page.get_by_role("button", name="Sign in").click()
        await expect(self.page.locator("#session")).to_be_visible()
        # ... and the page's first requests answered: a token changed before then ends the
        # session from one of them, not from the test's next step.
        await expect(self.page.locator("[aria-busy]")).to_have_count(0)

    async def go(self, tab: str) -> None:
        """Follow a tab of the console's navigation, as a person would."""
        await self.page.locator("#console-nav").get_by_role("link", name=tab).click()
        await expect(
            self.page.locator("#console-nav").get_by_role("link", name=tab)
        ).to_have_attribute("aria-current", "page")

    async def clipboard(self) -> str:
        text: str = await self.page.evaluate("navigator.clipboard.readText()")
        return text

    async def axe(self, name: str) -> list[dict[str, Any]]:
        """Run axe-core on the page as it is; fail on serious or critical violations."""
        if not await self.page.evaluate("typeof window.axe === 'object'"):
            await self.page.evaluate(AXE_SOURCE.read_text())
        result: dict[str, Any] = await self.page.evaluate(
            """async () => {
                const r = await axe.run(document, { resultTypes: ['violations'] });
                return { violations: r.violations.map((v) => ({
                    id: v.id, impact: v.impact, help: v.help,
                    nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5) })) };
            }"""
        )
        violations: list[dict[str, Any]] = result["violations"]
        AXE_REPORTS.mkdir(parents=True, exist_ok=True)
        (AXE_REPORTS / f"{name}.json").write_text(json.dumps(violations, indent=1))
        grave = [v for v in violations if v["impact"] in ("serious", "critical")]
        assert grave == [], f"axe-core: serious or critical violations in {name}: {grave}"
        return violations

    async def shot(self, name: str, *, check: bool = False) -> None:
        """PNGs of the page as it is now, 1280 px and 390 px wide (with `check`, axe-core
        at each width too)."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        modal = await self.page.evaluate("Boolean(document.querySelector('dialog[open]'))")
        await self.page.mouse.move(0, 0)  # no hover effects in the pictures
        if not modal:  # a whole page from its top (the sticky top bar stays at the top)
            await self.page.evaluate("window.scrollTo(0, 0)")
        for suffix, size in (("1280", WIDE), ("390", NARROW)):
            await self.page.set_viewport_size(size)
            await self.page.evaluate(
                "new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))"
            )
            if check:
                await self.axe(f"{name}-{suffix}")
            await self.page.screenshot(
                path=str(SCREENSHOTS / f"{name}-{suffix}.png"),
                animations="disabled",
                full_page=not modal,
            )
        await self.page.set_viewport_size(WIDE)

    async def state(self, name: str) -> None:
        """A state of a page worth checking and showing: axe-core, then the screenshots."""
        self.states.append(name)
        await self.shot(name, check=True)

    def row(self, name: str) -> Locator:
        return self.page.locator("#keys-body tr").filter(
            has=self.page.locator(".key-name", has_text=re.compile("^" + re.escape(name) + "$"))
        )

    async def tab_to(self, target: Locator, limit: int = 60) -> None:
        """Press Tab until `target` has the focus (keyboard-only runs); fail after `limit`."""
        for _ in range(limit):
            if await target.evaluate("el => el === document.activeElement"):
                return
            await self.page.keyboard.press("Tab")
        raise AssertionError(f"Tab never reached {target}")


@pytest.fixture(name="browser")
async def browser_fixture(chromium: str, admin_server: TestServer) -> AsyncIterator[Browser]:
    base_url = str(admin_server.make_url("")).rstrip("/")
    assert async_playwright is not None
    async with async_playwright() as playwright:
        connected = await playwright.chromium.connect_over_cdp(chromium)
        context = await connected.new_context(viewport=WIDE, locale="en-US", timezone_id="UTC")
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
    admin: str
    admin_id: str


@pytest.fixture(name="acme")
async def acme_fixture(client: AdminClient) -> Acme:
    """An account as a person would see it: named members, an Owner, an Admin, a Read-only."""
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
    tokens = {}
    for email, name, role in [
        ("sam@acme.example", "Sam Rivera", "readonly"),
        ("ana@acme.example", "Ana Lopes", "admin"),
    ]:
        member = await client.call(
            "POST", "/v1/members", owner, json_body={"email": email, "name": name, "role": role}
        )
        assert member.status == 201, member.text
        tokens[role] = (member.body["token"], member.body["id"])
    return Acme(
        created.body["account"]["id"],
        owner,
        created.body["owner"]["id"],
        tokens["readonly"][0],
        tokens["admin"][0],
        tokens["admin"][1],
    )


async def create_key(client: AdminClient, token: str, name: str, **fields: Any) -> dict[str, Any]:
    reply = await client.call("POST", "/v1/keys", token, json_body={"name": name, **fields})
    assert reply.status == 201, reply.text
    body: dict[str, Any] = reply.body
    return body
