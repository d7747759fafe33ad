"""Fixtures and helpers for the admin API tests (imported by the other test_admin_* files).

Fixture functions are named `*_fixture` and registered under the short name, so that a
test module imports them without its test parameters shadowing the import.

`AdminClient` checks every response it receives against `/openapi.json`: status code
documented for the operation, JSON body valid against its schema. So every admin test is
also a test that the OpenAPI document describes what the API really does.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp.test_utils import TestServer

from admin.app import create_admin_app
from admin.openapi import document
from gateway.accounts import ADMIN_TOKEN_FORMAT
from gateway.config import Config

from .conftest import Seed
from .helpers import ServedTestServer

OPERATOR_TOKEN = "op_" + secrets.token_urlsafe(32)
OPERATOR_ENV = {"GATEWAY_OPERATOR_TOKEN": OPERATOR_TOKEN}


# -- checking responses against the OpenAPI document -------------------------------------


def _templates() -> list[tuple[re.Pattern[str], str]]:
    out = []
    for path in document()["paths"]:
        out.append((re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path))
    return out


_TEMPLATES = _templates()


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    spec = document()
    while "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def check_against_openapi(
    method: str, path: str, status: int, content_type: str, body: bytes
) -> None:
    """Fail unless the document describes this response of this operation."""
    spec = document()
    if not path.startswith("/v1/"):
        return  # health, metrics and the document itself are not described in it
    template = next((t for pattern, t in _TEMPLATES if pattern.match(path)), None)
    if template is None or method.lower() not in spec["paths"][template]:
        assert status in (404, 405), f"{method} {path}: undocumented route answered {status}"
        return
    operation = spec["paths"][template][method.lower()]
    assert str(status) in operation["responses"], (
        f"{method} {template}: status {status} is not documented: {body[:300]!r}"
    )
    response = _resolve(operation["responses"][str(status)])
    if "content" not in response:
        assert body == b"", f"{method} {template} {status}: expected no body"
        return
    assert content_type == "application/json", f"{method} {template}: {content_type}"
    schema = response["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator(
        {**schema, "components": spec["components"]},
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )
    validator.validate(json.loads(body))


@dataclasses.dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]
    text: str


class AdminClient:
    """A real HTTP client for the admin listener that checks each answer against OpenAPI."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.bodies: list[str] = []  # every response body, for "shown once" checks

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        json_body: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        check: bool = True,
    ) -> Reply:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        kwargs: dict[str, Any] = {"headers": sent}
        if json_body is not None:
            kwargs["json"] = json_body
        elif data is not None:
            kwargs["data"] = data
        async with self.session.request(method, self.base_url + path, **kwargs) as response:
            raw = await response.read()
            text = raw.decode("utf-8", "replace")
            self.bodies.append(text)
            if check:
                check_against_openapi(
                    method, path.split("?")[0], response.status, response.content_type, raw
                )
            is_json = response.content_type == "application/json" and method != "HEAD"
            body = json.loads(raw) if is_json else None
            return Reply(response.status, body, dict(response.headers), text)


# -- a populated admin listener ---------------------------------------------------------


@dataclasses.dataclass
class World:
    """Account A with an Owner, an Admin and a Read-only member and one key; account B."""

    client: AdminClient
    account_id: uuid.UUID
    owner: str
    owner_id: uuid.UUID
    admin: str
    admin_id: uuid.UUID
    readonly: str
    readonly_id: uuid.UUID
    other: str  # the Owner of account B
    other_account_id: uuid.UUID
    key_id: str

    def token(self, who: str) -> str | None:
        return {
            "none": None,
            "bad": BAD_TOKEN,
            "owner": self.owner,
            "admin": self.admin,
            "readonly": self.readonly,
            "operator": OPERATOR_TOKEN,
            "other": self.other,
        }[who]


# Well-formed (valid checksum), but no member holds it.
BAD_TOKEN = ADMIN_TOKEN_FORMAT.generate()[0]


@pytest.fixture(name="admin_server")
async def admin_server_fixture(config: Config) -> AsyncIterator[TestServer]:
    server = ServedTestServer(create_admin_app(config, environ=OPERATOR_ENV), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture(name="client")
async def client_fixture(admin_server: TestServer) -> AsyncIterator[AdminClient]:
    async with aiohttp.ClientSession() as session:
        yield AdminClient(str(admin_server.make_url("")), session)


async def add_member(client: AdminClient, owner: str, role: str) -> tuple[str, uuid.UUID]:
    reply = await client.call(
        "POST",
        "/v1/members",
        owner,
        json_body={"email": f"{role}-{uuid.uuid4().hex[:6]}@example.com", "role": role},
    )
    assert reply.status == 201, reply.text
    return reply.body["token"], uuid.UUID(reply.body["id"])


@pytest.fixture(name="world")
async def world_fixture(client: AdminClient, seed: Seed) -> World:
    a, b = await seed.account("Account A"), await seed.account("Account B")
    admin, admin_id = await add_member(client, a.token, "admin")
    readonly, readonly_id = await add_member(client, a.token, "readonly")
    key = await client.call("POST", "/v1/keys", a.token, json_body={"name": "Key of A"})
    assert key.status == 201, key.text
    return World(
        client,
        a.account_id,
        a.token,
        a.member_id,
        admin,
        admin_id,
        readonly,
        readonly_id,
        b.token,
        b.account_id,
        key.body["id"],
    )
