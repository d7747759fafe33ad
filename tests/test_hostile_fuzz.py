"""Property-based fuzzing (hypothesis) of a real `gateway serve` and a real demo upstream
process (SPEC §8 "bad input anywhere"): `Authorization` values on the proxy, JSON bodies
and query strings on the admin API, query strings through the proxy. Never a 5xx, never
a crash, always the right family of answer: 401 with the right code for any key that is
not the key, 200 for the key however `Bearer` is spelt, 2xx or 400 `validation_error` /
`invalid_json` (or 409, 415 where they apply) for admin input, and query strings that
reach the upstream byte for byte.

Each property gets FUZZ_EXAMPLES examples (default 150), the same ones every run unless
FUZZ_RANDOM=1. The last test checks the processes logged no error and exit cleanly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import os
import signal
import string
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import DEFAULT_PERMISSIONS
from gateway.embedded_pg import free_port
from gateway.keyformat import KeyFormat

from . import secret_scan
from .conftest import Cluster
from .helpers import FAST_ARGON2, gateway_command, served_config_file
from .reliability import NO_LIMITS
from .test_admin_support import OPERATOR_TOKEN

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
BASE62 = string.ascii_letters + string.digits
Headers = list[tuple[bytes, bytes]]


@dataclasses.dataclass
class Reply:
    status: int
    content_type: str
    body: bytes

    @property
    def code(self) -> str | None:
        if self.content_type.startswith("application/json") and self.status >= 400:
            return str(json.loads(self.body)["error"]["code"])
        return None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclasses.dataclass
class Live:
    proxy_port: int
    admin_port: int
    gateway: subprocess.Popen[bytes]
    demo: subprocess.Popen[bytes]
    log_path: Path
    owner: str = ""
    key: str = ""
    key_id: str = ""
    member_id: str = ""
    changed_id: str = ""  # a key only the admin-body tests change (the proxy's stays valid)

    def request(
        self, port: int, method: str, target: str, headers: Headers, body: bytes | None = None
    ) -> Reply:
        """One request on its own connection, header bytes exactly as given."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader(b"Content-Length", str(len(body)).encode())
            conn.endheaders(body)
            response = conn.getresponse()
            return Reply(response.status, response.getheader("Content-Type") or "", response.read())
        finally:
            conn.close()

    def admin(self, method: str, target: str, token: str, body: Any = None, **kw: Any) -> Reply:
        headers: Headers = [(b"Authorization", f"Bearer {token}".encode())]
        raw = kw.get("raw")
        if body is not None or raw is not None:
            headers.append((b"Content-Type", kw.get("content_type", b"application/json")))
            raw = raw if raw is not None else json.dumps(body).encode()
        return self.request(self.admin_port, method, target, headers, raw)

    def proxy(self, target: str, authorization: bytes | None = None) -> Reply:
        key = f"Bearer {self.key}".encode() if authorization is None else authorization
        return self.request(self.proxy_port, "GET", target, [(b"Authorization", key)])


def wait_until(check: Any, timeout: float = 30) -> None:
    """Poll `check` (bounded) until it returns true."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("not ready in time")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def live(
    cluster: Cluster, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    name = f"gw_fuzz_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def admin_sql(sql: str) -> None:
        conn = await asyncpg.connect(cluster.admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    directory = tmp_path_factory.mktemp("fuzz")
    demo_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        **NO_LIMITS,
        "DATABASE_URL": cluster.url(name),
        "GATEWAY_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "GATEWAY__PROXY__UPSTREAM": f"http://127.0.0.1:{demo_port}",
        "GATEWAY__PROXY__PORT": str(proxy_port),
        "GATEWAY__ADMIN__PORT": str(admin_port),
        "GATEWAY__KEYS__ARGON2__TIME_COST": str(FAST_ARGON2["time_cost"]),
        "GATEWAY__KEYS__ARGON2__MEMORY_KIB": str(FAST_ARGON2["memory_kib"]),
        # Well-formed unknown keys are part of the input: keep the throttle out of the way.
        "GATEWAY__RATE_LIMITS__FAILED_AUTH__PER_IP_PER_MINUTE": "1000000",
        "GATEWAY__RATE_LIMITS__FAILED_AUTH__PER_KEY_PER_MINUTE": "1000000",
    }
    log_path = directory / "gateway.log"
    with open(directory / "demo.log", "wb") as demo_log, open(log_path, "wb") as log:
        demo = subprocess.Popen(
            gateway_command("demo-upstream", "--port", str(demo_port)),
            stdout=demo_log,
            stderr=subprocess.STDOUT,
        )
        gateway = subprocess.Popen(
            gateway_command("--config", str(served_config_file()), "serve"),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    served = Live(proxy_port, admin_port, gateway, demo, log_path)
    try:

        def ready() -> bool:
            assert gateway.poll() is None, log_path.read_text()
            healthy = served.request(admin_port, "GET", "/readyz", []).status == 200
            return healthy and served.request(demo_port, "GET", "/v1/customers", []).status == 200

        wait_until(ready)
        account = served.admin(
            "POST", "/v1/accounts", OPERATOR_TOKEN, {"name": "Fuzz", "owner_email": "f@z.io"}
        )
        served.owner = account.json()["token"]
        secret_scan.register(served.owner)
        member = served.admin(
            "POST", "/v1/members", served.owner, {"email": "m@z.io", "role": "admin"}
        )
        served.member_id = member.json()["id"]
        key = served.admin("POST", "/v1/keys", served.owner, {"name": "fuzzed"}).json()
        served.key, served.key_id = key["key"], key["id"]
        secret_scan.register(served.key)
        changed = served.admin("POST", "/v1/keys", served.owner, {"name": "changed"}).json()
        served.changed_id = changed["id"]
        yield served
    finally:
        for process in (gateway, demo):
            if process.poll() is None:
                process.kill()
                process.wait()
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- Authorization -------------------------------------------------------------------------

no_line_breaks = st.binary(max_size=120).filter(lambda b: b"\r" not in b and b"\n" not in b)
any_text = (
    st.text(max_size=120)
    .map(lambda t: t.encode("utf-8", "surrogatepass"))
    .filter(lambda b: b"\r" not in b and b"\n" not in b)
)
schemes = st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR", "Basic", "Token", "", "Bearer:"])
well_formed_unknown = st.builds(lambda _: KeyFormat("gp_").generate()[0], st.none())
prefixed_noise = st.text(BASE62 + "_", max_size=60).map(lambda t: "gp_" + t)


def control_bytes(value: bytes) -> bool:
    return any((b < 0x20 and b != 0x09) or b == 0x7F for b in value)


@FUZZ
@given(value=st.one_of(no_line_breaks, any_text))
def test_any_authorization_value_gets_a_4xx_never_a_5xx(live: Live, value: bytes) -> None:
    reply = live.proxy("/v1/customers", value)
    if control_bytes(value):
        assert reply.status == 400  # the HTTP parser's refusal
    elif not value.strip(b" \t"):
        assert (reply.status, reply.code) == (401, "missing_api_key")
    else:
        assert (reply.status, reply.code) == (401, "invalid_api_key")


@FUZZ
@given(
    scheme=schemes,
    gap=st.text(" \t", max_size=3),
    token=st.one_of(well_formed_unknown, prefixed_noise, st.text(BASE62, max_size=60)),
)
def test_keys_that_are_not_the_key_get_401_invalid_api_key(
    live: Live, scheme: str, gap: str, token: str
) -> None:
    reply = live.proxy("/v1/customers", f"{scheme} {gap}{token}".encode())
    assert (reply.status, reply.code) in {(401, "invalid_api_key"), (401, "missing_api_key")}


@FUZZ
@given(
    position=st.integers(0, 45),
    replacement=st.sampled_from(BASE62 + "_-.~+/="),
    cut=st.integers(1, 46),
    extra=st.text(BASE62, min_size=1, max_size=4),
    how=st.sampled_from(["replace", "truncate", "extend", "swapcase", "prefix"]),
)
def test_a_key_changed_in_any_way_gets_401(
    live: Live, position: int, replacement: str, cut: int, extra: str, how: str
) -> None:
    key = live.key
    changed = {
        "replace": key[:position] + replacement + key[position + 1 :],
        "truncate": key[:-cut],
        "extend": key + extra,
        "swapcase": key.swapcase(),
        "prefix": "gpa_" + key[3:],
    }[how]
    if changed == key:
        return
    reply = live.proxy("/v1/customers", f"Bearer {changed}".encode())
    assert (reply.status, reply.code) == (401, "invalid_api_key")


@FUZZ
@given(
    scheme=st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]),
    before=st.text(" \t", max_size=3),
    between=st.text(" ", min_size=1, max_size=3),
    after=st.text(" \t", max_size=3),
)
def test_the_key_is_accepted_however_bearer_is_spelt(
    live: Live, scheme: str, before: str, between: str, after: str
) -> None:
    reply = live.proxy("/v1/customers", f"{before}{scheme}{between}{live.key}{after}".encode())
    assert reply.status == 200


# -- admin JSON bodies ---------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
names = st.one_of(st.text(max_size=120), json_values)
key_fields = st.fixed_dictionaries(
    {},
    optional={
        "name": names,
        "permissions": st.one_of(
            st.lists(st.sampled_from([*DEFAULT_PERMISSIONS, "admin:all", ""]), max_size=5),
            json_values,
        ),
        "scopes": st.one_of(
            st.lists(st.sampled_from(["reports", "data", "admin", ""]), max_size=5), json_values
        ),
        "rate_limit": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "per_minute": st.one_of(st.integers(-5, 2**40), json_values),
                    "per_day": st.one_of(st.integers(-5, 2**40), json_values),
                },
            ),
            json_values,
        ),
        "ip_allowlist": st.one_of(
            st.lists(st.sampled_from(["10.0.0.0/8", "::1", "10.0.0.1/8", "1.2.3.4/33", "x"])),
            json_values,
        ),
        "expires_at": st.one_of(
            st.sampled_from(
                ["2099-01-01T00:00:00Z", "2000-01-01T00:00:00Z", "2099-13-01T00:00:00Z"]
            ),
            json_values,
        ),
        "enabled": st.one_of(st.booleans(), json_values),
        "grace_seconds": st.one_of(st.integers(-5, 10**7), json_values),
    },
)


def admin_family(reply: Reply, ok: int, *others: int) -> None:
    """The right family for an admin answer: success, or a 4xx that says why."""
    assert reply.status < 500, reply.body[:300]
    if reply.status == ok:
        return
    assert reply.status in (400, 415, *others), reply.body[:300]
    assert reply.content_type.startswith("application/json")
    if reply.status == 400:
        error = json.loads(reply.body)["error"]
        assert error["code"] in ("validation_error", "invalid_json")
        if error["code"] == "validation_error":
            assert error["fields"] and all(
                {"field", "message"} <= f.keys() for f in error["fields"]
            )


@FUZZ
@given(body=st.one_of(key_fields, json_values))
def test_key_bodies_get_201_or_a_clear_400(live: Live, body: Any) -> None:
    reply = live.admin("POST", "/v1/keys", live.owner, body)
    admin_family(reply, 201)
    if reply.status == 201:
        assert KeyFormat("gp_").parse(reply.json()["key"]) is not None
        secret_scan.register(reply.json()["key"])


@FUZZ
@given(body=st.one_of(key_fields, json_values))
def test_key_changes_get_200_or_a_clear_400(live: Live, body: Any) -> None:
    patched = live.admin("PATCH", f"/v1/keys/{live.changed_id}", live.owner, body)
    admin_family(patched, 200)
    regenerated = live.admin("POST", f"/v1/keys/{live.changed_id}/regenerate", live.owner, body)
    admin_family(regenerated, 200)


@FUZZ
@given(
    body=st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "email": st.one_of(st.emails(), st.text(max_size=60), json_values),
                "name": names,
                "role": st.one_of(
                    st.sampled_from(["owner", "admin", "readonly", "root", ""]), json_values
                ),
            },
        ),
        json_values,
    )
)
def test_member_bodies_get_a_success_or_a_clear_4xx(live: Live, body: Any) -> None:
    added = live.admin("POST", "/v1/members", live.owner, body)
    admin_family(added, 201, 409)
    if isinstance(body, dict):
        body.pop("email", None)
    changed = live.admin("PATCH", f"/v1/members/{live.member_id}", live.owner, body)
    admin_family(changed, 200, 409)
    account = live.admin("POST", "/v1/accounts", OPERATOR_TOKEN, body)
    admin_family(account, 201, 409)


@FUZZ
@given(
    raw=st.binary(max_size=200),
    content_type=st.sampled_from(
        [
            b"application/json",
            b"application/json; charset=UTF-8",
            b"text/plain",
            b"application/json; charset=latin-1",
            b"",
            b"multipart/form-data; boundary=x",
        ]
    ),
)
def test_raw_bodies_get_a_clear_4xx(live: Live, raw: bytes, content_type: bytes) -> None:
    reply = live.admin("POST", "/v1/keys", live.owner, raw=raw, content_type=content_type)
    admin_family(reply, 201)


# -- query strings and path ids --------------------------------------------------------------

query_names = st.one_of(st.sampled_from(["limit", "cursor", "from", "to", ""]), st.text(max_size=8))
queries = st.one_of(
    st.lists(st.tuples(query_names, st.text(max_size=40)), max_size=4).map(urlencode),
    st.text(max_size=60).map(lambda t: quote(t, safe="=&%+;,/?:@")),
    st.binary(max_size=30).map(lambda b: "".join(f"%{x:02X}" for x in b)),
)


@FUZZ
@given(query=queries)
def test_admin_query_strings_get_200_or_400(live: Live, query: str) -> None:
    for path, token in [
        ("/v1/keys", live.owner),
        ("/v1/audit-log", live.owner),
        ("/v1/members", live.owner),
        (f"/v1/keys/{live.key_id}/usage", live.owner),
        ("/v1/accounts", OPERATOR_TOKEN),
    ]:
        admin_family(live.admin("GET", f"{path}?{query}", token), 200)


@FUZZ
@given(query=queries)
def test_query_strings_reach_the_upstream_byte_for_byte(live: Live, query: str) -> None:
    reply = live.proxy(f"/v1/echo?{query}")
    assert reply.status == 200
    assert reply.json()["query"] == query


@FUZZ
@given(segment=st.text(max_size=50))
def test_path_ids_that_name_nothing_get_404(live: Live, segment: str) -> None:
    target = f"/v1/keys/{quote(segment, safe='')}"
    reply = live.admin("GET", target, live.owner)
    assert reply.status in (404, 405), (target, reply.status, reply.body[:200])


def test_the_fuzzed_processes_logged_no_error_and_exit_cleanly(live: Live) -> None:
    live.gateway.send_signal(signal.SIGTERM)
    assert live.gateway.wait(30) == 0
    lines = live.log_path.read_text(errors="replace").splitlines()
    trouble = [
        line for line in lines if not line.startswith("{") or json.loads(line)["level"] == "error"
    ]
    assert trouble == []
    assert live.demo.poll() is None  # the upstream never fell over either
