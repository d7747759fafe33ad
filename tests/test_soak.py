"""A bounded soak (SPEC §2 "immediately", §8): traffic on many keys through a real
`gateway serve` while keys are created, regenerated, disabled, enabled again and deleted
through its admin API, and every answer is judged against what the admin API had
confirmed by the time the request was sent.

A wrong decision is
- a 200 for a secret that was deleted, replaced by a regeneration or disabled, to a
  request sent more than one second after the admin API confirmed the change, or
- a 401 for a secret that was valid for the whole request (created or regenerated before
  it was sent — at once, since no cache can know it — or re-enabled more than a second
  before it, and no change to it started before the answer came).

The count must be 0, and so must 5xx answers. `make test` runs it for a few seconds;
`make soak` for minutes and with `--workers 2` (SOAK_SECONDS, SOAK_WORKERS, SOAK_CLIENTS,
SOAK_KEYS). The totals are printed (`-s`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import random
import time
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from . import secret_scan
from .reliability import NO_LIMITS, StartServe, serve  # noqa: F401
from .test_admin_support import OPERATOR_TOKEN

SECONDS = float(os.environ.get("SOAK_SECONDS", "12"))
WORKERS = int(os.environ.get("SOAK_WORKERS", "1"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "12"))
LIVE_KEYS = int(os.environ.get("SOAK_KEYS", "30"))
GRACE = 1.0  # SPEC §2: a change reaches every process within one second
REVOKED_SHARE = 0.2  # of requests, sent with a secret that no longer works


@dataclasses.dataclass
class Secret:
    key_id: str
    value: str
    valid_since: float  # monotonic; when it started to be valid for certain
    change_started: float | None = None  # the admin request that ended it was sent
    revoked_at: float | None = None  # ... and confirmed
    reinstated: float | None = None  # a disabled key's secret: the enabling request sent
    why: str = ""


@dataclasses.dataclass
class Key:
    id: str
    secret: Secret
    enabled: bool = True


@dataclasses.dataclass
class Verdicts:
    requests: int = 0
    statuses: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    with_revoked: int = 0
    accepted_after_revocation: list[str] = dataclasses.field(default_factory=list)
    refused_while_valid: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def wrong(self) -> int:
        return len(self.accepted_after_revocation) + len(self.refused_while_valid)


def judge(verdicts: Verdicts, secret: Secret, sent: float, received: float, reply: Any) -> None:
    status, code = reply
    verdicts.requests += 1
    verdicts.statuses[status] += 1
    what = f"{secret.why or 'valid'} secret of {secret.key_id}: {status} {code}"
    if status >= 500 or status == 429:
        verdicts.errors.append(what)
    revoked = secret.revoked_at is not None and sent > secret.revoked_at + GRACE
    if revoked and (secret.reinstated is None or sent < secret.reinstated) and status == 200:
        verdicts.accepted_after_revocation.append(
            f"{what}, sent {sent - secret.revoked_at:.3f} s after the change was confirmed"
        )
    valid_throughout = secret.valid_since <= sent and (
        secret.change_started is None or received < secret.change_started
    )
    if valid_throughout and status == 401:
        verdicts.refused_while_valid.append(f"{what}, sent {sent - secret.valid_since:.3f} s in")


async def test_soak_keys_churn_under_traffic_without_a_wrong_decision(
    serve: StartServe,  # noqa: F811
    upstream: TestServer,
) -> None:
    gateway = await serve(
        str(upstream.make_url("")).rstrip("/"),
        workers=WORKERS,
        **NO_LIMITS,
        GATEWAY_OPERATOR_TOKEN=OPERATOR_TOKEN,
        # Old secrets are sent on purpose: keep the failed-auth throttle out of the way.
        GATEWAY__RATE_LIMITS__FAILED_AUTH__PER_IP_PER_MINUTE="1000000",
        GATEWAY__RATE_LIMITS__FAILED_AUTH__PER_KEY_PER_MINUTE="1000000",
    )
    rng = random.Random(int(os.environ.get("SOAK_SEED", "7")))
    keys: dict[str, Key] = {}
    revoked: collections.deque[Secret] = collections.deque(maxlen=300)
    verdicts = Verdicts()
    operations: collections.Counter[str] = collections.Counter()
    stop = asyncio.Event()

    async with aiohttp.ClientSession() as admin:

        async def call(method: str, path: str, token: str, body: Any = None) -> Any:
            async with admin.request(
                method,
                f"{gateway.admin_url}{path}",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                data = await response.json() if response.status != 204 else None
                assert response.status in (200, 201, 204), (method, path, response.status, data)
                return data

        owner = (
            await call(
                "POST", "/v1/accounts", OPERATOR_TOKEN, {"name": "Soak", "owner_email": "o@s.io"}
            )
        )["token"]
        secret_scan.register(owner)  # its bare secret is looked for after the suite too

        async def create() -> None:
            data = await call("POST", "/v1/keys", owner, {"name": f"soak {len(keys)}"})
            now = time.monotonic()
            secret_scan.register(data["key"])
            keys[data["id"]] = Key(data["id"], Secret(data["id"], data["key"], now))

        # A secret's change starts before the admin request is sent: from then on a 401
        # for it may be right, even if it comes before the admin API's answer does.
        def revoke(secret: Secret, why: str) -> None:
            secret.revoked_at, secret.why = time.monotonic(), why
            revoked.append(secret)

        async def regenerate(key: Key) -> None:
            key.secret.change_started = time.monotonic()
            data = await call("POST", f"/v1/keys/{key.id}/regenerate", owner)
            secret_scan.register(data["key"])
            revoke(key.secret, "regenerated")
            key.secret = Secret(key.id, data["key"], time.monotonic())

        async def disable(key: Key) -> None:
            key.secret.change_started = time.monotonic()
            await call("PATCH", f"/v1/keys/{key.id}", owner, {"enabled": False})
            key.enabled = False
            revoke(key.secret, "disabled")

        async def enable(key: Key) -> None:
            key.secret.reinstated = time.monotonic()
            with contextlib.suppress(ValueError):  # unless it has aged out of the sample
                revoked.remove(key.secret)
            await call("PATCH", f"/v1/keys/{key.id}", owner, {"enabled": True})
            # The same secret again, valid for certain once the change has spread.
            key.secret = Secret(key.id, key.secret.value, time.monotonic() + GRACE)
            key.enabled = True

        async def delete(key: Key) -> None:
            if key.enabled:
                key.secret.change_started = time.monotonic()
            await call("DELETE", f"/v1/keys/{key.id}", owner)
            del keys[key.id]
            if key.enabled:
                revoke(key.secret, "deleted")

        for _ in range(LIVE_KEYS):
            await create()

        async def churn() -> None:
            while not stop.is_set():
                enabled = [k for k in keys.values() if k.enabled]
                disabled = [k for k in keys.values() if not k.enabled]
                roll = rng.random()
                if len(keys) < LIVE_KEYS * 0.8 or (roll < 0.25 and len(keys) < LIVE_KEYS * 1.2):
                    operation, action = "create", create()
                elif roll < 0.5 and enabled:
                    operation, action = "regenerate", regenerate(rng.choice(enabled))
                elif roll < 0.65 and enabled:
                    operation, action = "disable", disable(rng.choice(enabled))
                elif roll < 0.75 and disabled:
                    operation, action = "enable", enable(rng.choice(disabled))
                else:
                    operation, action = "delete", delete(rng.choice(list(keys.values())))
                await action
                operations[operation] += 1
                await asyncio.sleep(0.02)

        async def client(n: int) -> None:
            connector = aiohttp.TCPConnector(limit=1, force_close=n % 4 == 0)
            async with aiohttp.ClientSession(connector=connector) as session:
                while not stop.is_set():
                    valid = [k.secret for k in keys.values() if k.enabled]
                    if revoked and (rng.random() < REVOKED_SHARE or not valid):
                        secret = rng.choice(revoked)
                        verdicts.with_revoked += 1
                    else:
                        secret = rng.choice(valid)
                    sent = time.monotonic()
                    async with session.get(
                        f"{gateway.proxy_url}/v1/customers",
                        headers={"Authorization": f"Bearer {secret.value}"},
                    ) as response:
                        body = await response.read()
                        code = None
                        if response.status >= 400 and body:
                            code = (await response.json())["error"]["code"]
                    judge(verdicts, secret, sent, time.monotonic(), (response.status, code))

        tasks = [asyncio.create_task(churn())]
        tasks += [asyncio.create_task(client(n)) for n in range(CLIENTS)]
        try:
            done, _ = await asyncio.wait(tasks, timeout=SECONDS, return_when="FIRST_EXCEPTION")
            for task in done:
                task.result()  # a failed admin call or client: raise it here
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    print(
        f"\nsoak: {SECONDS:.0f} s, {WORKERS} worker(s), {CLIENTS} clients;"
        f" {verdicts.requests} requests ({verdicts.with_revoked} with revoked secrets),"
        f" statuses {dict(sorted(verdicts.statuses.items()))};"
        f" admin operations {dict(sorted(operations.items()))};"
        f" wrong decisions: {verdicts.wrong}"
        f" ({len(verdicts.accepted_after_revocation)} accepted after revocation,"
        f" {len(verdicts.refused_while_valid)} valid refused); errors: {len(verdicts.errors)}"
    )
    assert verdicts.accepted_after_revocation == []
    assert verdicts.refused_while_valid == []
    assert verdicts.errors == []
    assert min(operations[op] for op in ("create", "regenerate", "disable", "delete")) > 0
    assert verdicts.statuses[200] > 0 and verdicts.statuses[401] > 0
    assert await gateway.terminate() == 0
    assert gateway.trouble() == []
