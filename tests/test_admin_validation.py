"""Bad input gets a clear 4xx naming what is wrong, never a 500 (SPEC §6, §8)."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest

from .test_admin_support import (  # noqa: F401 - fixtures
    World,
    admin_server_fixture,
    client_fixture,
    world_fixture,
)

FUTURE = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()
PAST = "2020-01-01T00:00:00Z"


def fields_of(body: Any) -> set[str]:
    assert body["error"]["code"] == "validation_error", body
    return {item["field"] for item in body["error"]["fields"]}


KEY_BODIES: list[tuple[str, Any, set[str]]] = [
    ("empty object", {}, {"name"}),
    ("empty name", {"name": ""}, {"name"}),
    ("blank name", {"name": " \t "}, {"name"}),
    ("long name", {"name": "x" * 101}, {"name"}),
    ("name not a string", {"name": 5}, {"name"}),
    ("name null", {"name": None}, {"name"}),
    ("NUL in name", {"name": "a\x00b"}, {"name"}),
    ("newline inside name", {"name": "a\nb"}, {"name"}),
    ("lone surrogate", {"name": "a\ud800"}, {"name"}),
    ("unknown field", {"name": "k", "owner": "me"}, {"owner"}),
    ("permissions not a list", {"name": "k", "permissions": "reports:read"}, {"permissions"}),
    ("unknown permission", {"name": "k", "permissions": ["admin:all"]}, {"permissions"}),
    ("permission not a string", {"name": "k", "permissions": [1]}, {"permissions"}),
    ("repeated permission", {"name": "k", "permissions": ["data:read"] * 2}, {"permissions"}),
    ("scopes not a list", {"name": "k", "scopes": "reports"}, {"scopes"}),
    ("unknown scope", {"name": "k", "scopes": ["admin"]}, {"scopes"}),
    ("both scopes and permissions", {"name": "k", "scopes": [], "permissions": []}, {"scopes"}),
    ("limit zero", {"name": "k", "rate_limit": {"per_minute": 0}}, {"rate_limit.per_minute"}),
    ("limit negative", {"name": "k", "rate_limit": {"per_day": -1}}, {"rate_limit.per_day"}),
    ("limit fraction", {"name": "k", "rate_limit": {"per_day": 1.5}}, {"rate_limit.per_day"}),
    ("limit string", {"name": "k", "rate_limit": {"per_day": "10"}}, {"rate_limit.per_day"}),
    ("limit boolean", {"name": "k", "rate_limit": {"per_day": True}}, {"rate_limit.per_day"}),
    ("limit too big", {"name": "k", "rate_limit": {"per_day": 2**31}}, {"rate_limit.per_day"}),
    ("limit unknown", {"name": "k", "rate_limit": {"per_hour": 5}}, {"rate_limit.per_hour"}),
    ("limits not object", {"name": "k", "rate_limit": 5}, {"rate_limit"}),
    ("allowlist string", {"name": "k", "ip_allowlist": "10.0.0.0/8"}, {"ip_allowlist"}),
    ("allowlist garbage", {"name": "k", "ip_allowlist": ["nope"]}, {"ip_allowlist"}),
    ("host bits set", {"name": "k", "ip_allowlist": ["10.0.0.1/8"]}, {"ip_allowlist"}),
    ("prefix too long", {"name": "k", "ip_allowlist": ["10.0.0.0/33"]}, {"ip_allowlist"}),
    (
        "too many",
        {"name": "k", "ip_allowlist": [f"10.0.0.{i}" for i in range(101)]},
        {"ip_allowlist"},
    ),
    ("expiry past", {"name": "k", "expires_at": PAST}, {"expires_at"}),
    ("expiry date only", {"name": "k", "expires_at": "2099-01-01"}, {"expires_at"}),
    ("expiry no zone", {"name": "k", "expires_at": "2099-01-01T00:00:00"}, {"expires_at"}),
    ("expiry impossible", {"name": "k", "expires_at": "2099-02-30T00:00:00Z"}, {"expires_at"}),
    ("expiry number", {"name": "k", "expires_at": 4102444800}, {"expires_at"}),
    (
        "every field at once",
        {
            "name": "",
            "permissions": ["x"],
            "rate_limit": {"per_minute": 0, "per_day": 0},
            "ip_allowlist": ["x"],
            "expires_at": PAST,
            "color": "red",
        },
        {
            "name",
            "permissions",
            "rate_limit.per_minute",
            "rate_limit.per_day",
            "ip_allowlist",
            "expires_at",
            "color",
        },
    ),
]


@pytest.mark.parametrize(("body", "fields"), [pytest.param(b, f, id=i) for i, b, f in KEY_BODIES])
async def test_create_key_names_every_offending_field(
    world: World, body: Any, fields: set[str]
) -> None:
    reply = await world.client.call("POST", "/v1/keys", world.owner, json_body=body)
    assert reply.status == 400, reply.text
    assert fields_of(reply.body) == fields


ACCEPTED: list[tuple[str, Any, dict[str, Any]]] = [
    ("unicode name, trimmed", {"name": "  Ключ 🔑 für Zapier "}, {"name": "Ключ 🔑 für Zapier"}),
    ("100 characters", {"name": "é" * 100}, {"name": "é" * 100}),
    ("100 after trimming", {"name": " " + "x" * 100 + " "}, {"name": "x" * 100}),
    ("no permissions", {"name": "k", "permissions": []}, {"permissions": []}),
    (
        "permissions sorted",
        {"name": "k", "permissions": ["data:write", "account:read"]},
        {"permissions": ["account:read", "data:write"]},
    ),
    (
        "deprecated scopes answered as permissions",
        {"name": "k", "scopes": ["data", "reports"]},
        {"permissions": ["data:read", "data:write", "reports:read"]},
    ),
    ("no scopes", {"name": "k", "scopes": []}, {"permissions": []}),
    (
        "one override",
        {"name": "k", "rate_limit": {"per_minute": 5}},
        {"rate_limit": {"per_minute": 5, "per_day": 50_000}},
    ),
    (
        "integral float",
        {"name": "k", "rate_limit": {"per_day": 7.0}},
        {"rate_limit": {"per_minute": 600, "per_day": 7}},
    ),
    (
        "null limits",
        {"name": "k", "rate_limit": None},
        {"rate_limit": {"per_minute": 600, "per_day": 50_000}},
    ),
    (
        "addresses and networks",
        {"name": "k", "ip_allowlist": ["192.0.2.7", "2001:db8::/32"]},
        {"ip_allowlist": ["192.0.2.7/32", "2001:db8::/32"]},
    ),
    (
        "expiry with offset",
        {"name": "k", "expires_at": "2099-01-01T01:30:00+01:30"},
        {"expires_at": "2099-01-01T00:00:00.000000Z"},
    ),
    ("no expiry", {"name": "k", "expires_at": None}, {"expires_at": None}),
]


@pytest.mark.parametrize(("body", "expected"), [pytest.param(b, e, id=i) for i, b, e in ACCEPTED])
async def test_create_key_accepts_and_normalises(
    world: World, body: Any, expected: dict[str, Any]
) -> None:
    reply = await world.client.call("POST", "/v1/keys", world.owner, json_body=body)
    assert reply.status == 201, reply.text
    for field, value in expected.items():
        assert reply.body[field] == value


RAW_BODIES: list[tuple[str, bytes, str | None, int, str]] = [
    ("malformed JSON", b'{"name": ', "application/json", 400, "invalid_json"),
    ("not UTF-8", b'{"name": "\xff\xfe"}', "application/json", 400, "invalid_json"),
    (
        "NaN",
        b'{"name": "k", "rate_limit": {"per_day": NaN}}',
        "application/json",
        400,
        "invalid_json",
    ),
    (
        "huge integer",
        b'{"name": "k", "rate_limit": {"per_day": 1' + b"0" * 5000 + b"}}",
        "application/json",
        400,
        "invalid_json",
    ),
    ("deep nesting", b"[" * 50_000 + b"]" * 50_000, "application/json", 413, "request_too_large"),
    (
        "deep but small",
        b'{"name": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        "application/json",
        400,
        "invalid_json",  # deeper than the parser goes: refused as JSON it cannot read
    ),
    ("array body", b'["name"]', "application/json", 400, "validation_error"),
    ("string body", b'"k"', "application/json", 400, "validation_error"),
    ("empty body", b"", "application/json", 400, "validation_error"),
    ("text content type", b'{"name": "k"}', "text/plain", 415, "unsupported_media_type"),
    (
        "form content type",
        b"name=k",
        "application/x-www-form-urlencoded",
        415,
        "unsupported_media_type",
    ),
    (
        "latin-1 charset",
        b'{"name": "k"}',
        "application/json; charset=latin-1",
        415,
        "unsupported_media_type",
    ),
    ("no content type", b'{"name": "k"}', None, 415, "unsupported_media_type"),
    (
        "oversized",
        b'{"name": "' + b"x" * 70_000 + b'"}',
        "application/json",
        413,
        "request_too_large",
    ),
]


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [pytest.param(d, c, s, e, id=i) for i, d, c, s, e in RAW_BODIES],
)
async def test_request_shape_errors_are_4xx_json(
    world: World, data: bytes, content_type: str | None, status: int, code: str
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    reply = await world.client.call("POST", "/v1/keys", world.owner, data=data, headers=headers)
    assert (reply.status, reply.body["error"]["code"]) == (status, code), reply.text


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        ("deflate", b"\xff\xfe"),
        ("gzip", b"\x1f\x8b\x08\x00not gzip after its magic"),
        ("gzip", b"not gzip at all"),
    ],
)
async def test_a_body_that_does_not_decode_is_a_400(
    world: World, encoding: str, data: bytes
) -> None:
    """aiohttp decodes the body while it is read; a corrupt one is the client's error."""
    reply = await world.client.call(
        "POST",
        "/v1/keys",
        world.owner,
        data=data,
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    )
    assert (reply.status, reply.body["error"]["code"]) == (400, "invalid_json"), reply.text
    assert "Content-Encoding" in reply.body["error"]["message"]
    # The rest of the body cannot be read either: the connection ends, and says so, so
    # the client's next request goes on a new one.
    assert reply.headers["Connection"] == "close"
    assert (await world.client.call("GET", "/v1/me", world.owner)).status == 200


async def test_an_encoding_without_a_decoder_is_a_json_400(world: World) -> None:
    """Without the optional brotli package aiohttp's parser refuses `br` before any
    handler runs; the listener's connection handler still answers in JSON."""
    reply = await world.client.call(
        "POST",
        "/v1/keys",
        world.owner,
        data=b"{}",
        headers={"Content-Type": "application/json", "Content-Encoding": "br"},
    )
    assert reply.status == 400, reply.text
    assert reply.body["error"]["code"] in ("invalid_request", "invalid_json"), reply.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/keys/not-a-uuid"),
        ("GET", "/v1/keys/12345"),
        ("GET", "/v1/keys/{00000000-0000-4000-8000-000000000000}"),
        ("GET", "/v1/keys/urn:uuid:00000000-0000-4000-8000-000000000000"),
        ("GET", "/v1/keys/000000000000400080000000000000000"),
        ("PATCH", "/v1/keys/%00"),
        ("DELETE", "/v1/keys/..%2F..%2Faccounts"),
        ("POST", "/v1/keys/xyz/regenerate"),
        ("GET", "/v1/keys/xyz/usage"),
        ("PATCH", "/v1/members/xyz"),
        ("DELETE", "/v1/members/💥"),
        ("POST", "/v1/members/xyz/regenerate-token"),
        ("GET", "/v1/nothing-here"),
    ],
)
async def test_non_uuid_ids_and_unknown_paths_are_404(world: World, method: str, path: str) -> None:
    body = {"name": "x"} if method == "PATCH" else None
    reply = await world.client.call(method, path, world.owner, json_body=body)
    assert reply.status == 404, reply.text
    assert reply.body["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON; charset=UTF-8"],
)
async def test_json_content_types_are_accepted(world: World, content_type: str) -> None:
    reply = await world.client.call(
        "POST",
        "/v1/keys",
        world.owner,
        data=b'{"name": "k"}',
        headers={"Content-Type": content_type},
    )
    assert reply.status == 201, reply.text


async def test_uppercase_uuid_names_the_same_key(world: World) -> None:
    reply = await world.client.call("GET", f"/v1/keys/{world.key_id.upper()}", world.owner)
    assert (reply.status, reply.body["id"]) == (200, world.key_id)


@pytest.mark.parametrize(
    ("method", "path"), [("PUT", "/v1/keys"), ("DELETE", "/v1/keys"), ("HEAD", "/v1/keys")]
)
async def test_wrong_method_is_405_with_allow(world: World, method: str, path: str) -> None:
    reply = await world.client.call(method, path, world.owner)
    assert reply.status == 405
    assert "GET" in reply.headers["Allow"]


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("limit=0", {"limit"}),
        ("limit=101", {"limit"}),
        ("limit=ten", {"limit"}),
        ("limit=-1", {"limit"}),
        ("limit=99999999999999999999", {"limit"}),
        ("limit=1&limit=2", {"limit"}),
        ("cursor=garbage", {"cursor"}),
        ("cursor=", {"cursor"}),
        ("cursor=YXVkaXR8MQ", {"cursor"}),  # an audit-log cursor on the key list
        ("limit=0&cursor=x", {"limit", "cursor"}),
        ("colour=red", {"colour"}),
    ],
)
async def test_list_query_errors(world: World, query: str, fields: set[str]) -> None:
    reply = await world.client.call("GET", f"/v1/keys?{query}", world.owner)
    assert reply.status == 400
    assert fields_of(reply.body) == fields


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"body"}),
        ({"rate_limit": {}}, {"rate_limit"}),
        ({"name": "k", "rate_limit": {}}, {"rate_limit"}),
        ({"enabled": "yes"}, {"enabled"}),
        ({"enabled": None}, {"enabled"}),
        ({"name": None}, {"name"}),
        ({"scopes": None}, {"scopes"}),
        ({"permissions": None}, {"permissions"}),
        ({"permissions": ["reports:write"]}, {"permissions"}),
        ({"expires_at": PAST}, {"expires_at"}),
        ({"id": "00000000-0000-4000-8000-000000000000"}, {"id"}),
        ({"key": "gp_x"}, {"key"}),
    ],
)
async def test_patch_key_errors(world: World, body: Any, fields: set[str]) -> None:
    reply = await world.client.call(
        "PATCH", f"/v1/keys/{world.key_id}", world.owner, json_body=body
    )
    assert reply.status == 400
    assert fields_of(reply.body) == fields


async def test_patch_clears_overrides_and_expiry(world: World) -> None:
    path = f"/v1/keys/{world.key_id}"
    set_ = await world.client.call(
        "PATCH",
        path,
        world.owner,
        json_body={"rate_limit": {"per_minute": 3, "per_day": 4}, "expires_at": FUTURE},
    )
    assert set_.body["rate_limit"] == {"per_minute": 3, "per_day": 4}
    assert set_.body["expires_at"] is not None
    one = await world.client.call(
        "PATCH", path, world.owner, json_body={"rate_limit": {"per_minute": None}}
    )
    assert one.body["rate_limit"] == {"per_minute": 600, "per_day": 4}
    both = await world.client.call(
        "PATCH", path, world.owner, json_body={"rate_limit": None, "expires_at": None}
    )
    assert both.body["rate_limit"] == {"per_minute": 600, "per_day": 50_000}
    assert both.body["expires_at"] is None


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"grace_seconds": -1}, {"grace_seconds"}),
        ({"grace_seconds": 7 * 86400 + 1}, {"grace_seconds"}),
        ({"grace_seconds": "60"}, {"grace_seconds"}),
        ({"grace": 60}, {"grace"}),
    ],
)
async def test_regenerate_errors(world: World, body: Any, fields: set[str]) -> None:
    reply = await world.client.call(
        "POST", f"/v1/keys/{world.key_id}/regenerate", world.owner, json_body=body
    )
    assert reply.status == 400
    assert fields_of(reply.body) == fields


@pytest.mark.parametrize(
    ("data", "content_type"), [(None, None), (b"", "application/json"), (b"{}", "application/json")]
)
async def test_regenerate_body_is_optional(
    world: World, data: bytes | None, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    reply = await world.client.call(
        "POST", f"/v1/keys/{world.key_id}/regenerate", world.owner, data=data, headers=headers
    )
    assert reply.status == 200, reply.text


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"email", "role"}),
        ({"email": "not-an-email", "role": "admin"}, {"email"}),
        ({"email": " a@b.example", "role": "admin"}, {"email"}),
        ({"email": "a@b.example", "role": "root"}, {"role"}),
        ({"email": "a@b.example", "role": "Owner"}, {"role"}),
        ({"email": "a@b.example", "role": "admin", "name": ""}, {"name"}),
        ({"email": "a@b.example", "role": "admin", "token": "gpa_x"}, {"token"}),
    ],
)
async def test_add_member_errors(world: World, body: Any, fields: set[str]) -> None:
    reply = await world.client.call("POST", "/v1/members", world.owner, json_body=body)
    assert reply.status == 400
    assert fields_of(reply.body) == fields


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("from=yesterday", {"from"}),
        ("to=2030-01-01", {"to"}),
        ("from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z", {"from"}),
        ("from=2030-01-01T00:00:00Z&to=2030-01-01T00:00:00Z", {"from"}),
        ("from=2020-01-01T00:00:00Z&to=2030-01-01T00:00:00Z", {"from"}),
        ("from=0001-01-01T00:00:00%2B01:00", {"from"}),
    ],
)
async def test_usage_query_errors(world: World, query: str, fields: set[str]) -> None:
    reply = await world.client.call("GET", f"/v1/keys/{world.key_id}/usage?{query}", world.owner)
    assert reply.status == 400
    assert fields_of(reply.body) == fields


async def test_validation_runs_after_the_role_check(world: World) -> None:
    """A Read-only member learns nothing about what a valid body would be."""
    reply = await world.client.call("POST", "/v1/keys", world.readonly, json_body={})
    assert reply.status == 403


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def test_numbers_in_cursors_and_ids_are_ascii_digits(world: World) -> None:
    """'²' is a digit to str.isdigit, not to int(): a 400 or a 404, never a 500."""
    client = world.client
    reply = await client.call("GET", f"/v1/audit-log?cursor={_cursor('audit|²')}", world.owner)
    assert reply.status == 400 and fields_of(reply.body) == {"cursor"}
    hook = await client.call(
        "POST", "/v1/webhooks", world.owner,
        json_body={"url": "http://127.0.0.1:9/hook", "events": ["key.created"]},
    )  # fmt: skip
    assert hook.status == 201
    deliveries = f"/v1/webhooks/{hook.body['id']}/deliveries"
    reply = await client.call("GET", f"{deliveries}?cursor={_cursor('delivery|²')}", world.owner)
    assert reply.status == 400 and fields_of(reply.body) == {"cursor"}
    reply = await client.call("POST", f"{deliveries}/%C2%B2/resend", world.owner)
    assert reply.status == 404


@pytest.mark.parametrize("path", ["/v1/usage", "/v1/keys/{key}/usage"])
async def test_usage_ending_at_the_first_instant_is_a_400(world: World, path: str) -> None:
    """The default range (a day before 'to') would start before year 1."""
    key = await world.client.call(
        "POST", "/v1/keys", world.owner, json_body={"name": "k"}
    )  # fmt: skip
    url = path.format(key=key.body["id"]) + "?to=0001-01-01T00:00:00Z"
    reply = await world.client.call("GET", url, world.owner)
    assert reply.status == 400 and fields_of(reply.body) == {"to"}
