"""Webhooks end to end: real receivers on real sockets, every delivery verified with the
`standardwebhooks` library as a receiver would, the outbox through outages and SIGKILL."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook
from yarl import URL

from admin.app import DELIVERER, create_admin_app
from gateway import metrics
from gateway.config import Config
from gateway.deliverer import Deliverer
from gateway.embedded_pg import free_port
from gateway.limit_events import EVENTS
from gateway.webhooks import CHANNEL, PublicOnlyResolver, public_address

from .conftest import GatewayFactory, Seed
from .helpers import key_status, make_config, sample, wait_for
from .reliability import StartServe, serve  # noqa: F401 - fixture
from .test_admin_support import OPERATOR_ENV, AdminClient

# For real `gateway serve` processes: receivers on 127.0.0.1, quick retries.
PROCESS_ENV = {
    "GATEWAY__WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true",
    "GATEWAY__WEBHOOKS__RETRY_BASE_SECONDS": "0.2",
    "GATEWAY__WEBHOOKS__RETRY_MAX_INTERVAL_SECONDS": "0.5",
    "GATEWAY__WEBHOOKS__POLL_INTERVAL_SECONDS": "0.2",
}
FAST = {"retry_base_seconds": 0.2, "retry_max_interval_seconds": 0.5, "poll_interval_seconds": 0.2}


@dataclasses.dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass
class Receiver:
    """A webhook receiver on a real socket; `behaviour` decides each answer."""

    port: int
    received: list[Delivery] = dataclasses.field(default_factory=list)
    behaviour: Behaviour | None = None
    server: TestServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            self.received.append(Delivery(dict(request.headers), body))
            if self.behaviour is not None:
                return await self.behaviour(request)
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        app.router.add_post("/elsewhere", hook)
        self.server = TestServer(app, host="127.0.0.1", port=self.port)
        await self.server.start_server()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None

    def types(self) -> list[str]:
        return [d.payload["type"] for d in self.received]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(free_port())
    await r.start()
    yield r
    await r.stop()


@dataclasses.dataclass
class Admin:
    client: AdminClient
    server: TestServer
    owner: str
    account_id: uuid.UUID

    async def webhook(self, url: str, events: list[str] | None = None) -> tuple[str, str]:
        """A new endpoint: (id, secret)."""
        reply = await self.client.call(
            "POST", "/v1/webhooks", self.owner, json_body={"url": url, "events": events or ALL}
        )
        assert reply.status == 201, reply.text
        return reply.body["id"], reply.body["secret"]

    async def key(self, name: str = "k", **body: Any) -> dict[str, Any]:
        reply = await self.client.call(
            "POST", "/v1/keys", self.owner, json_body={"name": name, **body}
        )
        assert reply.status == 201, reply.text
        result: dict[str, Any] = reply.body
        return result

    async def deliveries(self, webhook_id: str) -> list[dict[str, Any]]:
        reply = await self.client.call("GET", f"/v1/webhooks/{webhook_id}/deliveries", self.owner)
        assert reply.status == 200, reply.text
        items: list[dict[str, Any]] = reply.body["items"]
        return items


ALL = [
    "key.created",
    "key.updated",
    "key.regenerated",
    "key.deleted",
    "key.leaked",
    "key.expiring",
    "key.rotation_due",
    "key.limit_reached",
    "member.added",
    "member.removed",
    "member.role_changed",
]

StartAdmin = Callable[..., Awaitable[Admin]]


@pytest.fixture
async def start_admin(config: Config, seed: Seed) -> AsyncIterator[StartAdmin]:
    """`await start_admin(**webhooks_settings)`: an admin listener (with its deliverer) and
    an account whose Owner calls it."""
    servers: list[TestServer] = []
    sessions: list[aiohttp.ClientSession] = []
    account = await seed.account()

    async def start(**webhooks: Any) -> Admin:
        cfg = make_config(
            config.database.url,
            config.proxy.upstream,
            webhooks={"allow_private_targets": True, **FAST, **webhooks},
        )
        server = TestServer(create_admin_app(cfg, environ=OPERATOR_ENV), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        session = aiohttp.ClientSession()
        sessions.append(session)
        client = AdminClient(str(server.make_url("")), session)
        return Admin(client, server, account.token, account.account_id)

    yield start
    for session in sessions:
        await session.close()
    for server in servers:
        await server.close()


def verified(delivery: Delivery, secret: str) -> dict[str, Any]:
    """The payload, as the standardwebhooks library accepts it (it raises otherwise)."""
    payload: dict[str, Any] = Webhook(secret).verify(delivery.body, delivery.headers)
    return payload


async def test_every_event_is_signed_as_standard_webhooks_says(
    start_admin: StartAdmin, receiver: Receiver, db: asyncpg.Connection
) -> None:
    admin = await start_admin()
    webhook_id, secret = await admin.webhook(receiver.url)
    call, owner = admin.client.call, admin.owner
    key = await admin.key("Sheets")
    await call("PATCH", f"/v1/keys/{key['id']}", owner, json_body={"name": "Sheets 2"})
    rolled = await call("POST", f"/v1/keys/{key['id']}/regenerate", owner)
    await call("DELETE", f"/v1/keys/{key['id']}", owner)
    member = await call(
        "POST", "/v1/members", owner, json_body={"email": "m@example.com", "role": "readonly"}
    )
    await call("PATCH", f"/v1/members/{member.body['id']}", owner, json_body={"role": "admin"})
    await call("DELETE", f"/v1/members/{member.body['id']}", owner)
    expected = [
        "key.created",
        "key.updated",
        "key.regenerated",
        "key.deleted",
        "member.added",
        "member.role_changed",
        "member.removed",
    ]
    await wait_for(lambda: len(receiver.received) >= len(expected))
    assert sorted(receiver.types()) == sorted(expected)
    for delivery in receiver.received:
        payload = verified(delivery, secret)
        assert delivery.headers["webhook-signature"].startswith("v1,")
        assert set(payload) == {"type", "timestamp", "data"}
        for secret_text in (key["key"], rolled.body["key"], member.body["token"], secret):
            assert secret_text not in delivery.body.decode()
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 44).verify(receiver.received[0].body, receiver.received[0].headers)
    by_type = {d.payload["type"]: d.payload["data"] for d in receiver.received}
    assert by_type["key.created"]["key"]["partial_key"] == key["partial_key"]
    assert by_type["key.updated"]["changes"] == ["name"]
    assert by_type["member.role_changed"]["from"] == "readonly"
    assert by_type["member.role_changed"]["to"] == "admin"
    log = await admin.deliveries(webhook_id)
    assert len(log) == len(expected)
    assert {d["status"] for d in log} == {"succeeded"}
    assert all(d["attempts"] == 1 and d["response_status"] == 200 for d in log)
    assert all(d["latency_ms"] is not None and d["response_body"] == "ok" for d in log)
    # The secret is stored (HMAC needs it) and returned only once.
    got = await call("GET", f"/v1/webhooks/{webhook_id}", owner)
    assert "secret" not in got.body and secret not in got.text


async def test_only_subscribed_events_of_the_account_go_out(
    start_admin: StartAdmin, receiver: Receiver, seed: Seed
) -> None:
    admin = await start_admin()
    await admin.webhook(receiver.url, ["key.deleted"])
    key = await admin.key()
    other = await seed.account("Other")
    await seed.key(other)  # another account's key: never ours to hear about
    await admin.client.call("DELETE", f"/v1/keys/{key['id']}", admin.owner)
    await wait_for(lambda: len(receiver.received) >= 1)
    await admin.server.app[DELIVERER].wake()
    assert receiver.types() == ["key.deleted"]


OUTAGE_SECONDS = 30.0


async def test_receiver_down_for_30_s_then_up_everything_arrives_in_order_per_key(
    start_admin: StartAdmin, db: asyncpg.Connection
) -> None:
    """A real 30-second outage (the suite's one long test), with the real back-off.

    The retry times are Postgres's `now()` plus the back-off, so a fake clock in the test
    would not move them; shrinking the outage (it used to end after three quick retries,
    about a second) would not show that the schedule keeps trying, with growing gaps,
    for as long as the receiver is down. So the receiver really is down for 30 s, and
    the back-off is the production formula with a 1 s base instead of 5 s: attempts at
    0, 1, 3, 7, 15 and 31 s, so the first event of each key arrives one attempt after
    the outage, after about six attempts (a fixed 0.2 s interval would have made ~150).
    Every later event of a key waits behind its first (order per key) and follows it.
    """
    receiver = Receiver(free_port())  # not started: connections are refused
    admin = await start_admin(retry_base_seconds=1.0, retry_max_interval_seconds=3600.0)
    webhook_id, secret = await admin.webhook(receiver.url, ["key.created", "key.updated"])
    loop = asyncio.get_running_loop()
    down_since = loop.time()
    keys = [await admin.key(f"key {i}") for i in range(3)]
    for round_ in range(4):
        for key in keys:
            reply = await admin.client.call(
                "PATCH",
                f"/v1/keys/{key['id']}",
                admin.owner,
                json_body={"name": f"{key['name']} v{round_}"},
            )
            assert reply.status == 200
    total = 3 + 3 * 4

    # The outage's length is the scenario itself, not a wait for something to happen.
    await asyncio.sleep(OUTAGE_SECONDS - (loop.time() - down_since))
    # Through the outage: each key's first event retried with growing gaps, nothing
    # given up, the later events held back behind it.
    rows = await db.fetch("SELECT status, attempts FROM webhook_deliveries ORDER BY id")
    assert [r["status"] for r in rows] == ["pending"] * total
    assert all(4 <= r["attempts"] <= 6 for r in rows[:3]), [r["attempts"] for r in rows]
    assert all(r["attempts"] == 0 for r in rows[3:])
    try:
        await receiver.start()
        await wait_for(lambda: len(receiver.received) >= total, timeout=30)
    finally:
        await receiver.stop()
    ids = [d.headers["webhook-id"] for d in receiver.received]
    assert len(ids) == len(set(ids)) == total  # everything, once
    for key in keys:
        names = [
            d.payload["data"]["key"]["name"]
            for d in receiver.received
            if verified(d, secret)["data"]["key"]["id"] == key["id"]
        ]
        assert names == [key["name"]] + [f"{key['name']} v{r}" for r in range(4)]
    log = await admin.deliveries(webhook_id)
    assert all(d["status"] == "succeeded" for d in log)
    attempts = sorted(d["attempts"] for d in log)
    assert attempts[: total - 3] == [1] * (total - 3)
    assert all(5 <= a <= 7 for a in attempts[total - 3 :]), attempts


async def test_delivery_gives_up_after_the_deadline_and_resend_delivers_it(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=500, text="x" * 5000)

    receiver.behaviour = failing
    admin = await start_admin(give_up_after_seconds=1)
    webhook_id, secret = await admin.webhook(receiver.url, ["key.created"])
    await admin.key()

    async def failed() -> bool:
        return [d["status"] for d in await admin.deliveries(webhook_id)] == ["failed"]

    await wait_for(failed, timeout=15)
    (entry,) = await admin.deliveries(webhook_id)
    assert entry["attempts"] >= 2 and entry["response_status"] == 500
    assert entry["last_error"] == "HTTP 500"
    assert entry["response_body"] == "x" * 1024  # at most 1 KiB kept
    attempts = len(receiver.received)
    receiver.behaviour = None
    resent = await admin.client.call(
        "POST", f"/v1/webhooks/{webhook_id}/deliveries/{entry['id']}/resend", admin.owner
    )
    assert resent.status == 202 and resent.body["webhook_id"] == entry["webhook_id"]
    await wait_for(lambda: len(receiver.received) > attempts)
    last = receiver.received[-1]
    assert verified(last, secret)["type"] == "key.created"
    assert last.headers["webhook-id"] == entry["webhook_id"]  # receivers can drop it

    async def succeeded() -> bool:
        return (await admin.deliveries(webhook_id))[0]["status"] == "succeeded"

    await wait_for(succeeded)


async def test_a_delivery_failing_for_weeks_is_retried_at_the_max_interval(
    start_admin: StartAdmin, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """After 1,024 failed attempts (six weeks of hourly retries) the next retry is still
    an hour away: the doubling stops at the maximum instead of overflowing a float, which
    rolled the attempt back and re-sent the delivery every poll interval."""

    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=500)

    receiver.behaviour = failing
    admin = await start_admin(
        give_up_after_seconds=365 * 86400,  # the delivery is seconds old: far from it
        retry_base_seconds=5,
        retry_max_interval_seconds=3600,
    )
    await admin.webhook(receiver.url, ["key.created"])
    await admin.key()

    async def attempts(n: int) -> bool:
        return await db.fetchval("SELECT attempts FROM webhook_deliveries") == n

    await wait_for(lambda: attempts(1))
    await db.execute("UPDATE webhook_deliveries SET attempts = 1024, next_attempt_at = now()")
    await wait_for(lambda: attempts(1025))
    row = await db.fetchrow(
        "SELECT status, extract(epoch FROM next_attempt_at - last_attempt_at) AS delay"
        " FROM webhook_deliveries"
    )
    assert row["status"] == "pending"
    assert float(row["delay"]) == pytest.approx(3600, abs=1)
    assert len(receiver.received) == 2  # the first attempt and this one, each once


async def test_delivery_metrics_count_sent_failed_pending_and_latency(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    """What the backlog alert and the dashboards read: attempts by result, the pending
    gauges (set by each look for due deliveries), and latency from commit to delivery."""

    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=503)

    def results() -> dict[str, float]:
        return {
            r: sample("gateway_webhook_deliveries_total", result=r)
            for r in ("succeeded", "retrying", "failed")
        }

    receiver.behaviour = failing
    admin = await start_admin(give_up_after_seconds=3)
    deliverer = admin.server.app[DELIVERER]
    webhook_id, _ = await admin.webhook(receiver.url, ["key.created"])
    before = results()
    latencies = sample("gateway_webhook_delivery_latency_seconds_count")
    attempts = sample("gateway_webhook_attempt_duration_seconds_count")
    await admin.key()
    await wait_for(lambda: len(receiver.received) >= 1)

    async def pending() -> bool:
        await deliverer.look()
        return (
            sample("gateway_webhook_pending") == 1
            and sample("gateway_webhook_oldest_pending_seconds") > 0
        )

    await wait_for(pending, timeout=3)

    async def failed() -> bool:
        return (await admin.deliveries(webhook_id))[0]["status"] == "failed"

    await wait_for(failed, timeout=15)
    after = results()
    assert after["failed"] - before["failed"] == 1
    assert after["retrying"] - before["retrying"] == len(receiver.received) - 1
    await deliverer.look()
    assert sample("gateway_webhook_pending") == 0
    assert sample("gateway_webhook_oldest_pending_seconds") == 0
    assert sample("gateway_webhook_delivery_latency_seconds_count") == latencies  # none sent

    receiver.behaviour = None
    (entry,) = await admin.deliveries(webhook_id)
    resent = await admin.client.call(
        "POST", f"/v1/webhooks/{webhook_id}/deliveries/{entry['id']}/resend", admin.owner
    )
    assert resent.status == 202

    def sent() -> bool:
        return results()["succeeded"] - before["succeeded"] == 1

    await wait_for(sent)
    assert sample("gateway_webhook_delivery_latency_seconds_count") == latencies + 1
    assert sample("gateway_webhook_attempt_duration_seconds_count") == attempts + len(
        receiver.received
    )


async def test_the_backlog_gauges_are_kept_where_no_deliverer_runs(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    """GatewayWebhookBacklogGrowing must see an outbox that no process sends (every admin
    listener with webhooks.deliver: false): the admin listener samples the backlog
    gauges without delivering."""
    metrics.WEBHOOK_PENDING.set(0)
    admin = await start_admin(deliver=False)
    assert DELIVERER not in admin.server.app
    await admin.webhook(receiver.url, ["key.created"])
    await admin.key()
    await wait_for(lambda: sample("gateway_webhook_pending") == 1, timeout=5)
    assert sample("gateway_webhook_oldest_pending_seconds") > 0
    assert receiver.received == []


async def test_redirects_are_not_followed_and_slow_receivers_time_out(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    """The timeout covers the whole attempt: a receiver that sends its head and then
    stalls in its body fails the attempt as one that never answers does."""
    answers: list[str] = ["redirect", "slow", "stall"]

    async def behaviour(request: web.Request) -> web.StreamResponse:
        what = answers.pop(0) if answers else "ok"
        if what == "redirect":
            raise web.HTTPFound(location="/elsewhere")
        if what == "slow":
            await asyncio.sleep(5)
        if what == "stall":  # a 200 head, then not a byte of the body it announced
            stalled = web.StreamResponse()
            stalled.content_length = 10
            await stalled.prepare(request)
            await asyncio.sleep(5)
            return stalled
        return web.Response(text="ok")

    receiver.behaviour = behaviour
    admin = await start_admin(timeout_seconds=0.5)
    webhook_id, _ = await admin.webhook(receiver.url, ["key.created"])
    await admin.key()

    async def delivered() -> bool:
        return (await admin.deliveries(webhook_id))[0]["status"] == "succeeded"

    await wait_for(delivered, timeout=15)
    (entry,) = await admin.deliveries(webhook_id)
    assert entry["attempts"] == 4
    assert len(receiver.received) == 4  # /elsewhere was never called by the deliverer
    assert sample("gateway_webhook_deliveries_total", result="retrying") >= 3


# IPv6 addresses that lead to a private IPv4 one (NAT64, 6to4, IPv4-compatible, SIIT) or
# are private themselves, all of which Python 3.11's `is_global` calls global.
WRAPPED_PRIVATE = [
    "::127.0.0.1",  # IPv4-compatible
    "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254, where cloud metadata answers
    "64:ff9b::a9fe:a9fe",  # NAT64, the well-known prefix
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::a9fe:a9fe",  # local-use NAT64 (64:ff9b:1::/48)
    "64:ff9b:1:ffff::1",
    "2002:a9fe:a9fe::1",  # 6to4
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "::ffff:0:a9fe:a9fe",  # SIIT (IPv4-translated)
    "fec0::1",  # site-local, deprecated but still routed by some networks
]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        *((address, False) for address in WRAPPED_PRIVATE),
        ("::1", False),
        ("::", False),
        ("::ffff:127.0.0.1", False),
        ("fe80::1%eth0", False),
        ("fd00::1", False),
        ("ff02::1", False),
        ("::ffff:224.0.0.1", False),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
        ("1.1.1.1", True),
        ("2606:4700::1111", True),
        ("::ffff:1.1.1.1", True),
        # The IPv4 address inside is public, and it is what a NAT64 or 6to4 path reaches.
        ("64:ff9b::101:101", True),
        ("2002:101:101::1", True),
    ],
)
def test_an_ipv6_address_is_judged_by_the_ipv4_address_it_leads_to(
    address: str, public: bool
) -> None:
    assert public_address(address) is public


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://10.0.0.1/hook",
        "http://[::ffff:127.0.0.1]/hook",
        *(f"http://[{address}]/hook" for address in WRAPPED_PRIVATE),
        "ftp://example.com/hook",
        "http://user:pass@example.com/hook",
        "not a url",
    ],
)
async def test_private_and_malformed_targets_are_refused(start_admin: StartAdmin, url: str) -> None:
    admin = await start_admin(allow_private_targets=False)
    reply = await admin.client.call(
        "POST", "/v1/webhooks", admin.owner, json_body={"url": url, "events": ["key.created"]}
    )
    assert reply.status == 400, reply.text
    assert reply.body["error"]["fields"][0]["field"] == "url"


@pytest.mark.parametrize("address", ["127.0.0.1", *WRAPPED_PRIVATE])
async def test_deliverer_refuses_a_private_target_saved_before(
    start_admin: StartAdmin, receiver: Receiver, db: asyncpg.Connection, address: str
) -> None:
    """A URL that became private since it was saved (DNS changed, setting turned off) is
    checked again at connection time, IPv6 forms of a private address as at saving."""
    admin = await start_admin(allow_private_targets=False, timeout_seconds=0.5)
    host = f"[{address}]" if ":" in address else address
    await db.execute(
        "INSERT INTO webhook_endpoints (account_id, url, events, secret)"
        " VALUES ($1, $2, '{key.created}', 'whsec_AAAA')",
        admin.account_id,
        f"http://{host}:{receiver.port}/hook",
    )
    await admin.key()

    async def attempted() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE attempts > 0"))

    await wait_for(attempted)
    error = await db.fetchval("SELECT last_error FROM webhook_deliveries")
    assert "not a public one" in error
    assert receiver.received == []


async def test_resolver_refuses_ipv6_forms_of_private_addresses() -> None:
    """What a host name resolves to is judged the same way (an address stands in for the
    name here: the resolver answers for it as for a name's AAAA record)."""
    try:
        socket.getaddrinfo("2606:4700::1111", 443, socket.AF_INET6, 0, 0, socket.AI_ADDRCONFIG)
    except socket.gaierror:
        pytest.skip("this host has no IPv6 address, so no IPv6 answer is ever used")
    resolver = PublicOnlyResolver()
    try:
        for address in WRAPPED_PRIVATE:
            with pytest.raises(OSError, match="resolves to a non-public address"):
                await resolver.resolve(address, 443, socket.AF_INET6)
        assert await resolver.resolve("2606:4700::1111", 443, socket.AF_INET6)
    finally:
        await resolver.close()


async def test_a_host_name_that_resolves_to_loopback_is_refused_at_connection_time(
    start_admin: StartAdmin, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """DNS rebinding: the name was public when saved (the row is written directly, as if
    its DNS answer changed since) and now resolves to 127.0.0.1, where a receiver listens.
    The deliverer's resolver checks the addresses it is about to connect to, so the
    receiver is never reached."""
    assert await asyncio.get_running_loop().getaddrinfo("localhost", receiver.port)
    admin = await start_admin(allow_private_targets=False)
    url = f"http://localhost:{receiver.port}/hook"
    await db.execute(
        "INSERT INTO webhook_endpoints (account_id, url, events, secret)"
        " VALUES ($1, $2, '{key.created}', 'whsec_AAAA')",
        admin.account_id,
        url,
    )
    await admin.key()

    async def attempted() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE attempts > 0"))

    await wait_for(attempted)
    error = await db.fetchval("SELECT last_error FROM webhook_deliveries")
    assert "localhost resolves to a non-public address" in error
    assert receiver.received == []
    # The same URL through the API is refused when saved.
    reply = await admin.client.call(
        "POST", "/v1/webhooks", admin.owner, json_body={"url": url, "events": ["key.created"]}
    )
    assert reply.status == 400, reply.text


async def test_proxy_environment_variables_choose_no_route(
    start_admin: StartAdmin, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy from the environment would pick the address connected to, past the
    resolver's check: the deliverer ignores HTTP(S)_PROXY and goes to the URL's host."""
    proxy = Receiver(free_port())
    await proxy.start()
    try:
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        admin = await start_admin()
        await admin.webhook(receiver.url, ["key.created"])
        await admin.key()
        await wait_for(lambda: len(receiver.received) == 1)
        assert proxy.received == []
    finally:
        await proxy.stop()


async def test_rotated_secret_signs_alongside_the_old_one_during_grace(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    admin = await start_admin()
    webhook_id, old = await admin.webhook(receiver.url, ["key.created"])
    rotated = await admin.client.call(
        "POST",
        f"/v1/webhooks/{webhook_id}/rotate-secret",
        admin.owner,
        json_body={"grace_seconds": 3600},
    )
    assert rotated.status == 200
    new = rotated.body["secret"]
    assert new != old
    await admin.key()
    await wait_for(lambda: len(receiver.received) == 1)
    delivery = receiver.received[0]
    assert len(delivery.headers["webhook-signature"].split(" ")) == 2
    verified(delivery, new)
    verified(delivery, old)


async def test_expiring_and_rotation_due_fire_once_per_stage(
    start_admin: StartAdmin, receiver: Receiver, db: asyncpg.Connection
) -> None:
    admin = await start_admin()
    await admin.webhook(receiver.url, ["key.expiring", "key.rotation_due"])
    now = dt.datetime.now(dt.UTC)
    soon = await admin.key("soon", expires_at=(now + dt.timedelta(hours=12)).isoformat())
    week = await admin.key("week", expires_at=(now + dt.timedelta(days=6)).isoformat())
    await admin.key("later", expires_at=(now + dt.timedelta(days=30)).isoformat())
    old = await admin.key("old")
    await db.execute(
        "UPDATE api_keys SET secret_created_at = now() - interval '91 days' WHERE id = $1",
        uuid.UUID(old["id"]),
    )
    deliverer = admin.server.app[DELIVERER]
    assert await deliverer.scan() == 3
    assert await deliverer.scan() == 0  # once per key and stage
    await wait_for(lambda: len(receiver.received) == 3)
    got = {
        (d.payload["type"], d.payload["data"]["key"]["name"], d.payload["data"].get("days"))
        for d in receiver.received
    }
    assert got == {
        ("key.expiring", "soon", 1),
        ("key.expiring", "week", 7),
        ("key.rotation_due", "old", None),
    }
    # A day later "week" is one day from its expiry: its second stage fires.
    await db.execute(
        "UPDATE api_keys SET expires_at = now() + interval '20 hours' WHERE id = $1",
        uuid.UUID(week["id"]),
    )
    assert await deliverer.scan() == 1
    assert soon["id"] != week["id"]


async def test_limit_reached_fires_once_per_key_and_window(
    start_admin: StartAdmin,
    start_gateway: GatewayFactory,
    config: Config,
    receiver: Receiver,
    db: asyncpg.Connection,
) -> None:
    admin = await start_admin()
    await admin.webhook(receiver.url, ["key.limit_reached"])
    created = await admin.key("limited", rate_limit={"per_minute": 2})
    gateway = await start_gateway(config=config)
    statuses = [await key_status(gateway, created["key"]) for _ in range(6)]
    assert statuses.count(429) >= 3
    await wait_for(lambda: len(receiver.received) >= 1)
    # Another process's first 429 of the same window: no second event.
    second = await start_gateway(config=config)
    for _ in range(4):
        await key_status(second, created["key"])
    await second.app[EVENTS].flush()
    await gateway.app[EVENTS].flush()
    assert (
        await db.fetchval("SELECT count(*) FROM webhook_events WHERE type = 'key.limit_reached'")
        == 1
    )
    data = receiver.received[0].payload["data"]
    assert (data["window"], data["limit"]) == ("minute", 2)
    assert data["key"]["id"] == created["id"]
    assert receiver.types() == ["key.limit_reached"]


async def test_the_deliverer_listens_on_database_listen_url(
    config: Config, seed: Seed, db: asyncpg.Connection
) -> None:
    """With `database.listen_url` set (`url` leads to PgBouncer in transaction pooling,
    which keeps no LISTEN session), the deliverer's LISTEN goes there, as the key cache's
    does; `url` keeps the statements."""
    listen_url = str(URL(config.database.url).update_query(application_name="direct"))
    cfg = make_config(
        config.database.url, config.proxy.upstream, database={"listen_url": listen_url}
    )
    deliverer = Deliverer(cfg, seed.store)
    await deliverer.start()
    try:
        listening = await db.fetch(
            "SELECT application_name FROM pg_stat_activity WHERE query = $1",
            f'LISTEN "{CHANNEL}"',
        )
    finally:
        await deliverer.stop()
    assert [row["application_name"] for row in listening] == ["direct"]


# -- real processes -------------------------------------------------------------------


async def test_sigkill_between_commit_and_send_is_delivered_after_restart(
    serve: StartServe,  # noqa: F811
    upstream: TestServer,
    receiver: Receiver,
    seed: Seed,
    db: asyncpg.Connection,
) -> None:
    """The process dies holding the delivery (sent, answer not recorded): a restarted
    gateway sends it again, with the same webhook-id."""
    hold = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await hold.wait()
        return web.Response(text="late")

    receiver.behaviour = hang
    upstream_url = str(upstream.make_url("")).rstrip("/")
    first = await serve(upstream_url, **PROCESS_ENV)
    account = await seed.account()
    async with aiohttp.ClientSession() as session:
        client = AdminClient(first.admin_url, session)
        made = await client.call(
            "POST",
            "/v1/webhooks",
            account.token,
            json_body={"url": receiver.url, "events": ["key.created"]},
        )
        assert made.status == 201
        created = await client.call("POST", "/v1/keys", account.token, json_body={"name": "k"})
        assert created.status == 201
    await wait_for(lambda: len(receiver.received) == 1, timeout=15)  # committed, sending
    first.process.send_signal(signal.SIGKILL)
    await asyncio.to_thread(first.process.wait, 10)
    receiver.behaviour = None
    await serve(upstream_url, **PROCESS_ENV)
    await wait_for(lambda: len(receiver.received) == 2, timeout=20)
    one, two = receiver.received
    assert one.headers["webhook-id"] == two.headers["webhook-id"]
    assert two.payload["data"]["key"]["id"] == created.body["id"]

    async def recorded() -> bool:
        return await db.fetchval("SELECT status FROM webhook_deliveries") == "succeeded"

    await wait_for(recorded)
    hold.set()


async def test_an_event_committed_by_a_process_that_never_sent_it_is_sent_by_another(
    serve: StartServe,  # noqa: F811
    upstream: TestServer,
    receiver: Receiver,
    seed: Seed,
) -> None:
    upstream_url = str(upstream.make_url("")).rstrip("/")
    silent = await serve(upstream_url, **PROCESS_ENV, GATEWAY__WEBHOOKS__DELIVER="false")
    account = await seed.account()
    async with aiohttp.ClientSession() as session:
        client = AdminClient(silent.admin_url, session)
        made = await client.call(
            "POST",
            "/v1/webhooks",
            account.token,
            json_body={"url": receiver.url, "events": ["key.created"]},
        )
        assert made.status == 201
        secret = made.body["secret"]
        assert (
            await client.call("POST", "/v1/keys", account.token, json_body={"name": "k"})
        ).status == 201
    silent.process.send_signal(signal.SIGKILL)
    await asyncio.to_thread(silent.process.wait, 10)
    assert receiver.received == []
    await serve(upstream_url, **PROCESS_ENV)
    await wait_for(lambda: len(receiver.received) == 1, timeout=20)
    assert verified(receiver.received[0], secret)["type"] == "key.created"


async def test_two_replicas_deliver_every_event_once(
    serve: StartServe,  # noqa: F811
    upstream: TestServer,
    receiver: Receiver,
    seed: Seed,
) -> None:
    upstream_url = str(upstream.make_url("")).rstrip("/")
    replicas = [await serve(upstream_url, **PROCESS_ENV), await serve(upstream_url, **PROCESS_ENV)]
    account = await seed.account()
    count = 30
    async with aiohttp.ClientSession() as session:
        clients = [AdminClient(r.admin_url, session) for r in replicas]
        made = await clients[0].call(
            "POST",
            "/v1/webhooks",
            account.token,
            json_body={"url": receiver.url, "events": ["key.created"]},
        )
        assert made.status == 201

        async def create(i: int) -> None:
            reply = await clients[i % 2].call(
                "POST", "/v1/keys", account.token, json_body={"name": f"k{i}"}
            )
            assert reply.status == 201

        await asyncio.gather(*(create(i) for i in range(count)))
    await wait_for(lambda: len(receiver.received) >= count, timeout=30)
    ids = [d.headers["webhook-id"] for d in receiver.received]
    assert len(ids) == len(set(ids)) == count
    for replica in replicas:
        assert replica.trouble() == []
