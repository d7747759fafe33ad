"""The "Account → API Keys" web page: `/` and its files under `/static/`.

Plain HTML, CSS and JavaScript modules from `admin/static/`, served as they are (no build
step, nothing from another origin). The page is a client of the JSON API under `/v1` on
the same origin, with the admin token the person pastes in; this module only serves files.

Every response from here carries a strict Content-Security-Policy: scripts and styles from
this origin only (no inline script, no inline style), no frames, no form submission, and
Trusted Types required, so a string can never be assigned to `innerHTML` and friends —
names a person typed reach the page as text nodes only.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from aiohttp import web

log = logging.getLogger("admin.page")

STATIC_DIR = Path(__file__).resolve().parent / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # Revalidate every time (ETag / Last-Modified): a new release is picked up at once.
    "Cache-Control": "no-cache",
}

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*\.(?:css|js|svg)$")


def _static_files(folder: Path = STATIC_DIR) -> dict[str, Path]:
    """The files `/static/{name}` may serve, fixed at start-up: no path ever reaches disk."""
    if not folder.is_dir():
        return {}
    return {
        path.name: path
        for path in folder.iterdir()
        if path.is_file() and _NAME.fullmatch(path.name)
    }


def _file(path: Path) -> web.FileResponse:
    return web.FileResponse(
        path, headers={**SECURITY_HEADERS, "Content-Type": _CONTENT_TYPES[path.suffix]}
    )


def add_routes(app: web.Application) -> None:
    index = STATIC_DIR / "index.html"
    if not index.is_file():
        # An install without the package data: the API matters more than its page.
        log.warning("the web page's files are missing from %s: / is not served", STATIC_DIR)
        return
    files = _static_files()
    # Third-party files copied from npm at a pinned version (uPlot for the usage charts),
    # with their licences beside them: see admin/static/vendor/README.md.
    vendored = _static_files(STATIC_DIR / "vendor")

    async def page(request: web.Request) -> web.FileResponse:
        return _file(index)

    async def static(request: web.Request) -> web.FileResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return _file(path)

    async def vendor(request: web.Request) -> web.FileResponse:
        path = vendored.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return _file(path)

    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/static/vendor/{name}", vendor)
