"""The route table: default deny, permissions per route, and one canonical path.

Three layers: the table's decision against a small reference matcher written here
(property-based, over a hostile alphabet), the configuration mistakes that stop start-up,
and the real gateway refusing each known bypass with nothing reaching the upstream.
"""

from __future__ import annotations

import json
import logging
import re
import string
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from gateway.config import DEFAULT_PERMISSIONS, DEFAULT_ROUTES, Config, load_config
from gateway.routes import RouteConfig, RouteTable
from gateway.settings import ConfigError

from .conftest import GatewayFactory, Seed
from .helpers import DEFAULT_ROUTE_DATA, make_config, raw_request, wait_for
from .reliability import raw_upstream

# -- the reference matcher ---------------------------------------------------------------

TABLE = [
    (["GET", "HEAD"], "/v1/reports/**", "reports:read"),
    (["GET"], "/v1/customers/{id}/invoices", "invoices:read"),
    (["GET", "HEAD"], "/v1/customers/**", "customers:read"),
    (["POST", "PUT"], "/v1/data/**", "data:write"),
    (["*"], "/v1/{thing}/public", "public:read"),
    (["GET"], "/v1/account", "account:read"),
    (["GET"], "/v1/export.csv", "export:read"),
]
DESCRIPTIONS = {permission: permission for _, _, permission in TABLE}


def reference(method: str, raw_path: str, unmatched_allowed: bool = False) -> int | str | None:
    """What the gateway must decide, written independently of gateway/routes.py: 400,
    404, the permission needed, or None (unmatched, allowed)."""
    if not raw_path.startswith("/") or any(not 0x21 <= ord(c) <= 0x7E for c in raw_path):
        return 400
    if "\\" in raw_path or ";" in raw_path or "#" in raw_path:
        return 400
    out, i = [], 0
    while i < len(raw_path):
        if raw_path[i] != "%":
            out.append(raw_path[i])
            i += 1
            continue
        digits = raw_path[i + 1 : i + 3]
        if len(digits) != 2 or not all(d in string.hexdigits for d in digits):
            return 400
        char = chr(int(digits, 16))
        if char in string.ascii_letters + string.digits + "-._~":
            out.append(char)
        elif char in "/\\%" or ord(char) < 32 or ord(char) == 127:
            return 400
        else:
            out.append("%" + digits.upper())
        i += 3
    segments = "".join(out).split("/")[1:]
    if segments and segments[-1] == "":
        segments = segments[:-1]
    for segment in segments:
        if segment in ("", ".", "..") or segment.startswith("%20") or segment.endswith("%20"):
            return 400
    path = "".join("/" + s for s in segments)
    for methods, template, permission in TABLE:
        if methods != ["*"] and method not in methods:
            continue
        subtree = template.endswith("/**")
        parts = (template[:-3] if subtree else template).split("/")[1:]
        pattern = "".join(
            "/[^/]+" if part.startswith("{") else "/" + re.escape(part) + r"(?:\.[^/]*)?"
            for part in parts
        )
        if re.fullmatch(pattern + ("(?:/.*)?" if subtree else ""), path, re.IGNORECASE):
            return permission
    return None if unmatched_allowed else 404


def decide(table: RouteTable, method: str, raw_path: str) -> int | str | None:
    try:
        return table.permission_for(method, raw_path)
    except Exception as exc:  # a GatewayError: its status is the decision
        return getattr(exc, "status", None) or pytest.fail(f"unexpected {exc!r}")


def make_table(unmatched_allowed: bool = False) -> RouteTable:
    routes = [RouteConfig(path=p, permission=perm, methods=tuple(m)) for m, p, perm in TABLE]
    return RouteTable(routes, DESCRIPTIONS, unmatched_allowed=unmatched_allowed)


# Pieces a hostile path is made of: real segments in other cases, dots, suffixes, and
# every encoding trick (double encoding, encoded separators, controls, padding).
PIECES = [
    "v1", "V1", "reports", "REPORTS", "customers", "Customers", "data", "account",
    "public", "invoices", "export", "mrr", "x", "cus_1", ".", "..", ".json", ".csv", ";x=1",
    "%2e", "%2E", "%2f", "%2F", "%5c", "\\", "%252e", "%25", "%", "%4", "%41", "%61",
    "%63ustomers", "%20", "%09", "%00", "%7f", "%7e", "~", "-", "_", "%3b", "%3B", "%C3%A9",
    "é", " ", "\t", "//", "/", "?",
]  # fmt: skip
paths = st.lists(st.sampled_from(PIECES) | st.text(max_size=3), max_size=7).map(
    lambda parts: "/" + "/".join(parts)
) | st.lists(st.sampled_from(PIECES), min_size=1, max_size=9).map("".join)
methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=methods, raw_path=paths, unmatched_allowed=st.booleans())
@example(method="GET", raw_path="/v1/customers.json", unmatched_allowed=False)
@example(method="GET", raw_path="/v1/reports/..%252fcustomers", unmatched_allowed=False)
@example(method="GET", raw_path="/V1/CUSTOMERS/", unmatched_allowed=False)
@example(method="GET", raw_path="/v1/export.csv.gz", unmatched_allowed=False)
@example(method="GET", raw_path="/v1/customers/%2e%2e/account", unmatched_allowed=False)
def test_table_decides_as_the_reference_matcher(
    method: str, raw_path: str, unmatched_allowed: bool
) -> None:
    table = make_table(unmatched_allowed)
    assert decide(table, method, raw_path) == reference(method, raw_path, unmatched_allowed)


@pytest.mark.parametrize(
    ("method", "raw_path", "expected"),
    [
        ("GET", "/v1/reports/mrr", "reports:read"),
        ("GET", "/v1/reports", "reports:read"),  # `/**` covers the path itself
        ("HEAD", "/v1/reports/mrr/", "reports:read"),
        ("POST", "/v1/reports/mrr", 404),  # no route for the method
        ("GET", "/v1/customers.json", "customers:read"),  # format suffix
        ("GET", "/V1/Customers", "customers:read"),  # case
        ("GET", "/v1/%63ustomers", "customers:read"),  # encoded unreserved
        ("GET", "/v1/customers/cus_1/invoices", "invoices:read"),  # first match wins
        ("GET", "/v1/customers/cus_1/invoices.json", "invoices:read"),
        ("GET", "/v1/customers%20", 400),  # padded segment
        ("GET", "/v1/customers%09", 400),  # encoded control
        ("GET", "/v1/reportsX", 404),
        ("GET", "/v1/reports%2fx", 400),
        ("GET", "/v1/reports/..%252fcustomers", 400),  # double encoding
        ("GET", "/v1/reports/%2e%2e/customers", 400),
        ("GET", "/v1/reports;x=1/mrr", 400),
        ("GET", "/v1//reports", 400),
        ("GET", "/v1/reports/mrr#top", 400),  # a fragment, which upstreams cut off
        ("GET", "/v1/anything/public", "public:read"),
        ("DELETE", "/v1/anything/public", "public:read"),  # '*': every method
        ("GET", "/v1/export.csv", "export:read"),
        ("GET", "/v1/export", 404),  # a literal with a dot is matched whole
        ("GET", "/", 404),
    ],
)
def test_table_examples(method: str, raw_path: str, expected: int | str) -> None:
    assert decide(make_table(), method, raw_path) == expected
    assert reference(method, raw_path) == expected


# -- configuration mistakes ----------------------------------------------------------------


def config_with(database_url: str, routes: list[dict[str, Any]], **extra: Any) -> Config:
    permissions = extra.pop("permissions", None) or {
        r["permission"]: "d" for r in routes if "permission" in r
    }
    return make_config(database_url, routes=routes, permissions=permissions, **extra)


def r(path: str, permission: str | None = "a:read", methods: Any = ("GET",), **extra: Any) -> Any:
    route = {"methods": list(methods), "path": path, **extra}
    if permission is not None:
        route["permission"] = permission
    return route


@pytest.mark.parametrize(
    ("routes", "permissions", "message"),
    [
        ([r("v1/x")], None, "routes[0].path"),
        ([r("/v1/**/x")], None, "routes[0].path"),
        ([r("/v1/{}")], None, "routes[0].path"),
        ([r("/v1/{id}/{id}")], None, "routes[0].path"),
        ([r("/v1/a%2fb")], None, "routes[0].path"),
        ([r("/v1/../x")], None, "routes[0].path"),
        ([r("/v1/x", methods=["FETCH"])], None, "routes[0].methods"),
        ([r("/v1/x", methods=[])], None, "routes[0].methods"),
        ([r("/v1/x", methods=["*", "GET"])], None, "routes[0].methods"),
        ([r("/v1/x", permission=None)], {"a:read": "d"}, "routes[0].permission"),
        ([r("/v1/x", permission="b:read")], {"a:read": "d"}, "routes[0].permission"),
        ([r("/v1/x")], {"a:read": "d", "b:read": "unused"}, "permissions.b:read"),
        ([r("/v1/x", permission="Reports")], None, "permissions.Reports"),
        (
            [r("/v1/**", methods=["GET", "HEAD"]), r("/v1/customers")],
            None,
            "routes[1]: never matches, routes[0]",
        ),
        (
            [r("/v1/{thing}", methods=["*"]), r("/v1/customers.json", methods=["POST"])],
            None,
            "routes[1]: never matches",
        ),
        ([r("/v1/x", verbs=1)], None, "routes[0].verbs"),
    ],
)
def test_route_table_mistakes_stop_start_up_naming_the_setting(
    routes: list[dict[str, Any]], permissions: dict[str, str] | None, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        config_with("postgresql://unused/db", routes, permissions=permissions)
    assert str(raised.value).startswith(message), str(raised.value)
    assert "\n" not in str(raised.value)


def test_routes_that_only_overlap_are_not_shadowed() -> None:
    config_with(
        "postgresql://unused/db",
        [
            {"methods": ["GET", "HEAD"], "path": "/v1/data/**", "permission": "data:read"},
            {"methods": ["POST"], "path": "/v1/data/**", "permission": "data:write"},
            {"methods": ["GET"], "path": "/v1/customers/{id}", "permission": "a:read"},
            {"methods": ["GET"], "path": "/v1/{thing}/x", "permission": "a:read"},
        ],
    )


def test_default_table_models_the_demo_upstream() -> None:
    table = RouteTable(DEFAULT_ROUTES, DEFAULT_PERMISSIONS)
    assert table.permission_for("GET", "/v1/reports/mrr") == "reports:read"
    assert table.permission_for("GET", "/v1/customers") == "customers:read"
    assert table.permission_for("GET", "/v1/customers/cus_1001") == "customers:read"
    assert table.permission_for("GET", "/v1/data/exports/2026") == "data:read"
    assert table.permission_for("POST", "/v1/data/events") == "data:write"
    assert table.permission_for("GET", "/v1/account") == "account:read"
    assert set(table.permissions) == {r.permission for r in DEFAULT_ROUTES}


# -- the real gateway ----------------------------------------------------------------------

# Each of these reached the customers handler of a forgiving upstream with a key that may
# only read reports, before the route table.
BYPASSES = [
    ("GET", "/v1/customers", 403),
    ("GET", "/v1/customers.json", 403),
    ("GET", "/v1/customers/", 403),
    ("GET", "/V1/CUSTOMERS", 403),
    ("GET", "/v1/%63ustomers", 403),
    ("GET", "/v1/customers%20", 400),
    ("GET", "/v1/customers%09", 400),
    ("GET", "/v1/reportsX", 404),
    ("GET", "/v1/reports/..%252fcustomers", 400),
    ("GET", "/v1/reports/%2e%2e/customers", 400),
    ("GET", "/v1/reports;/../customers", 400),
    ("GET", "/v1/reports%2f..%2fcustomers", 400),
    ("POST", "/v1/reports/mrr", 404),
    ("GET", "/v1/nothing-here", 404),
]


async def _get(
    gateway: TestServer, method: str, path: str, key: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    # encoded=True: the path goes out byte for byte, with no normalisation by yarl.
    url = URL(f"http://127.0.0.1:{gateway.port}{path}", encoded=True)
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            url,
            headers={"Authorization": f"Bearer {key}"},
            skip_auto_headers=["Content-Type"],
        ) as response,
    ):
        body = await response.read()
        is_json = response.content_type == "application/json"
        return response.status, json.loads(body) if is_json else {}, dict(response.headers)


@pytest.mark.parametrize("permissions", [["reports:read"], []])
async def test_each_known_bypass_is_refused_and_never_forwarded(
    database_url: str,
    start_gateway: GatewayFactory,
    seed: Seed,
    permissions: list[str],
) -> None:
    async with raw_upstream() as upstream:
        config = make_config(database_url, upstream.url, routes=list(DEFAULT_ROUTE_DATA))
        gateway = await start_gateway(config=config)
        key = await seed.key(permissions=permissions)
        for method, path, status in BYPASSES:
            got, body, _ = await _get(gateway, method, path, key.key)
            assert got == status, (method, path, got, body)
            code = {400: "invalid_path", 403: "insufficient_permission", 404: "route_not_found"}
            assert body["error"]["code"] == code[status], (path, body)
            if status == 403:
                assert body["error"]["permission"] == "customers:read"
                assert "customers:read" in body["error"]["message"]
        assert upstream.received == []


async def test_a_fragment_cannot_pick_a_route_the_upstream_does_not_serve(
    database_url: str, start_gateway: GatewayFactory, seed: Seed
) -> None:
    """aiohttp keeps `#x` in the path when a '?' follows (`/export#?` has the path
    `/export#`), which matched `{id}` here; the upstream cuts the fragment off and serves
    `/export`, a route the key may not use. Every '#' is a 400, and nothing is sent."""
    routes = [
        {"methods": ["GET"], "path": "/v1/customers/export", "permission": "customers:export"},
        {"methods": ["GET"], "path": "/v1/customers/{id}", "permission": "customers:read"},
    ]
    async with raw_upstream() as upstream:
        config = make_config(database_url, upstream.url, routes=routes)
        gateway = await start_gateway(config=config)
        key = await seed.key(permissions=["customers:read"])
        status, body, _ = await _get(gateway, "GET", "/v1/customers/export", key.key)
        assert (status, body["error"]["code"]) == (403, "insufficient_permission")
        for path in ("/v1/customers/export#?", "/v1/customers/export#x?y=1"):
            # Sent as written: an HTTP client would not send the fragment.
            auth = {"Authorization": f"Bearer {key.key}"}
            status, raw = await raw_request(gateway.port, f"GET {path} HTTP/1.1", auth)
            assert (status, json.loads(raw)["error"]["code"]) == (400, "invalid_path"), path
        assert upstream.received == []


async def test_allowed_request_carries_the_permissions_header_upstream(
    database_url: str, start_gateway: GatewayFactory, seed: Seed
) -> None:
    async with raw_upstream() as upstream:
        config = make_config(database_url, upstream.url, routes=list(DEFAULT_ROUTE_DATA))
        gateway = await start_gateway(config=config)
        key = await seed.key(permissions=["reports:read", "data:write"])
        status, _, _ = await _get(gateway, "GET", "/v1/reports/mrr", key.key)
        assert status == 200
        (request,) = upstream.received
        assert request.header("X-GrowPanel-Key-Permissions") == ["data:write,reports:read"]


async def test_unmatched_request_is_counted_and_logged_as_denied(
    database_url: str,
    start_gateway: GatewayFactory,
    seed: Seed,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")  # the access log is on
    async with raw_upstream() as upstream:
        config = make_config(database_url, upstream.url, routes=list(DEFAULT_ROUTE_DATA))
        gateway = await start_gateway(config=config)
        key = await seed.key()
        status, body, _ = await _get(gateway, "GET", "/v1/unknown", key.key)
        assert status == 404 and body["error"]["code"] == "route_not_found"
        assert upstream.received == []
        output: list[str] = []

        def logged() -> bool:  # the access log goes out once per loop pass
            output.append(capsys.readouterr().out)
            lines = [json.loads(line) for line in "".join(output).splitlines() if line]
            return any(
                line.get("logger") == "gateway.access"
                and (line["status"], line["outcome"], line["path"])
                == (404, "denied", "/v1/unknown")
                for line in lines
            )

        await wait_for(logged)

        async def counted() -> bool:
            rows = await seed.pool.fetch(
                "SELECT outcome, count FROM key_usage_hourly WHERE key_id = $1", key.id
            )
            return [(r["outcome"], r["count"]) for r in rows] == [("denied", 1)]

        await wait_for(counted)


async def test_routes_unmatched_allow_forwards_and_warns_at_start_up(
    database_url: str,
    start_gateway: GatewayFactory,
    seed: Seed,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with raw_upstream() as upstream:
        config = make_config(
            database_url, upstream.url, routes=list(DEFAULT_ROUTE_DATA), routes_unmatched="allow"
        )
        with caplog.at_level(logging.WARNING):
            gateway = await start_gateway(config=config)
        assert any("routes_unmatched" in r.getMessage() for r in caplog.records)
        key = await seed.key(permissions=["reports:read"])
        status, _, _ = await _get(gateway, "GET", "/v1/unknown", key.key)
        assert status == 200
        status, body, _ = await _get(gateway, "GET", "/v1/customers", key.key)
        assert status == 403 and body["error"]["code"] == "insufficient_permission"
        status, body, _ = await _get(gateway, "GET", "/v1/reports/%2e%2e/customers", key.key)
        assert status == 400
        assert [r.target for r in upstream.received] == ["/v1/unknown"]


def test_routes_unmatched_can_be_set_from_the_environment() -> None:
    assert load_config(None, {"GATEWAY__ROUTES_UNMATCHED": "allow"}).routes_unmatched == "allow"
    with pytest.raises(ConfigError, match=r"^routes_unmatched: expected one of deny, allow"):
        load_config(None, {"GATEWAY__ROUTES_UNMATCHED": "sometimes"})


def test_the_route_table_can_be_set_from_the_environment() -> None:
    """Any setting, the top-level ones too; values are YAML."""
    config = load_config(
        None,
        {
            "GATEWAY__PERMISSIONS": "{'widgets:read': Read widgets.}",
            "GATEWAY__ROUTES": "[{methods: [GET], path: /v1/widgets/**, permission: widgets:read}]",
        },
    )
    assert dict(config.permissions) == {"widgets:read": "Read widgets."}
    assert [route.path for route in config.routes] == ["/v1/widgets/**"]
    with pytest.raises(ConfigError, match=r"^routes\[0\]"):
        load_config(None, {"GATEWAY__ROUTES": "[{path: /v1/x}]"})
