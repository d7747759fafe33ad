"""schemathesis against the real admin listener: no 500s, every response as documented.

The listener runs on a real socket in a thread of its own (schemathesis' calls are
blocking), against a database of this module's own made from the migrated template.
Each operation gets a bounded number of generated requests. Calls on `{id}` paths use a
freshly created key or member for half the examples (chosen from the generated id, so a
failing example replays the same way), so that the 2xx paths are exercised as well as 404.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance

from admin.app import create_admin_app
from admin.openapi import document
from gateway.accounts import create_account
from gateway.keyformat import Hasher

from .conftest import Cluster
from .helpers import make_config
from .test_admin_support import OPERATOR_ENV, OPERATOR_TOKEN

schema = schemathesis.openapi.from_dict(document())
MAX_EXAMPLES = int(os.environ.get("ADMIN_FUZZ_EXAMPLES", "30"))
# Fixed examples by default, so the suite is repeatable; ADMIN_FUZZ_RANDOM=1 explores.
DERANDOMIZE = not os.environ.get("ADMIN_FUZZ_RANDOM")

# Rules JSON Schema cannot state: a cursor must be one this API issued, a CIDR must parse
# with its host bits zero, an expiry must lie in the future, `from` must precede `to`.
# A schema-valid request refused for these fields only (and saying so) is right.
# A webhook URL must also be one the deliverer may call (no credentials, no fragment).
SEMANTIC_FIELDS = {"cursor", "ip_allowlist", "expires_at", "from", "to", "url"}


def positive_data_accepted(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """schemathesis' positive_data_acceptance, less the refusals listed above."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        if response.status_code == 400:
            error = response.json()["error"]
            named = {item["field"] for item in error.get("fields", [])}
            if error["code"] == "validation_error" and named and named <= SEMANTIC_FIELDS:
                return None
        raise


@dataclasses.dataclass
class Live:
    url: str
    owner: str
    session: requests.Session

    def fresh(self, kind: str) -> str:
        """A new key or member of the Owner's account, for one destructive call."""
        auth = {"Authorization": f"Bearer {self.owner}"}
        if kind == "members":
            body = {"email": f"fuzz-{uuid.uuid4().hex[:8]}@example.com", "role": "readonly"}
        elif kind == "webhooks":
            body = {"url": "http://127.0.0.1:9/hook", "events": ["key.created"]}
        else:
            body = {"name": "fuzz"}
        response = self.session.post(f"{self.url}/v1/{kind}", json=body, headers=auth, timeout=10)
        if response.status_code == 409 and kind == "webhooks":  # the per-account bound
            listed = self.session.get(f"{self.url}/v1/webhooks?limit=100", headers=auth, timeout=10)
            for item in listed.json()["items"]:
                self.session.delete(
                    f"{self.url}/v1/webhooks/{item['id']}", headers=auth, timeout=10
                )
            response = self.session.post(
                f"{self.url}/v1/{kind}", json=body, headers=auth, timeout=10
            )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


@pytest.fixture(scope="module")
def live(cluster: Cluster, template_db: str) -> Iterator[Live]:
    name = f"gw_fuzz_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def admin_sql(sql: str) -> None:
        conn = await asyncpg.connect(cluster.admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    # Generated webhook URLs are never called: no deliverer here.
    config = make_config(
        cluster.url(name), webhooks={"allow_private_targets": True, "deliver": False}
    )
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        runner = web.AppRunner(create_admin_app(config, environ=OPERATOR_ENV))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        pool = await asyncpg.create_pool(config.database.url, min_size=1, max_size=1)
        created = await create_account(
            pool, Hasher(config.keys.argon2), "Fuzzed", "owner@example.com"
        )
        await pool.close()
        port = runner.addresses[0][1]
        state.update(runner=runner, url=f"http://127.0.0.1:{port}", owner=created.token)

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="admin-under-fuzz", daemon=True)
    thread.start()
    assert ready.wait(30), "the admin listener did not start"
    with requests.Session() as session:
        yield Live(state["url"], state["owner"], session)
    asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    loop.close()
    asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=DERANDOMIZE,
)
def test_admin_api_matches_its_openapi_document(case: schemathesis.Case, live: Live) -> None:
    token = OPERATOR_TOKEN if case.path == "/v1/accounts" else live.owner
    meta = case.meta
    negative_path = meta is not None and meta.is_negative_at(ParameterLocation.PATH)
    negative_headers = meta is not None and meta.is_negative_at(ParameterLocation.HEADER)
    ident = (case.path_parameters or {}).get("id")
    # Half the examples aim at a real resource (even first hex digit), half at none.
    if isinstance(ident, str) and ident[:1] in tuple("02468ace") and not negative_path:
        kind = next(
            (k for k in ("members", "webhooks") if case.path.startswith(f"/v1/{k}")), "keys"
        )
        case.path_parameters["id"] = live.fresh(kind)
    # A case generated without a valid Authorization header must be sent without ours.
    headers = {} if negative_headers else {"Authorization": f"Bearer {token}"}
    case.call_and_validate(
        base_url=live.url,
        session=live.session,
        headers=headers,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[positive_data_accepted],
    )
