"""Real things for every test: a Postgres cluster, a database per test, a real upstream.

The cluster is an embedded Postgres in a temporary folder (or the server in DATABASE_URL,
on which each test gets its own database). Each test's database is a copy of a migrated
template, so tests start from the real schema in milliseconds and never see each other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler
from yarl import URL

from gateway.accounts import create_account
from gateway.app import SERVER_OPTIONS, VERIFY, create_app
from gateway.clock import Clock
from gateway.config import Config
from gateway.db import migrate
from gateway.demo_upstream import create_demo_app
from gateway.embedded_pg import EmbeddedPostgres
from gateway.keyformat import Hasher, KeyFormat
from gateway.keys import KeyStore
from gateway.records import NewKey
from gateway.verify_listener import VerifyListener

from . import secret_scan
from .helpers import ServedTestServer, make_config

TEMPLATE_DB = "gateway_test_template"
_counter = itertools.count()


@dataclasses.dataclass
class Cluster:
    """The test Postgres server; `embedded` is set when the tests started it."""

    admin_url: str
    embedded: EmbeddedPostgres | None

    def url(self, database: str) -> str:
        return str(URL(self.admin_url).with_path(f"/{database}"))

    def stop(self) -> None:
        assert self.embedded is not None, "cannot stop a server the tests did not start"
        # "fast": sessions are cut as in an outage, and commits made just before survive
        # (the test cluster runs with synchronous_commit off).
        self.embedded.stop(mode="fast")

    def start(self) -> None:
        assert self.embedded is not None
        self.embedded.start(port=self.embedded.port)


@pytest.fixture(scope="session", autouse=True)
def no_secret_anywhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole suite, no full key or admin token in any log record, test database
    or stored file (subprocess logs, the Postgres cluster's files): see secret_scan.py."""
    scanner = secret_scan.LogScanner()
    loggers = [logging.getLogger(name) for name in ("gateway", "admin", "aiohttp", "asyncio")]
    for logger in loggers:
        logger.addHandler(scanner)
    yield
    for logger in loggers:
        logger.removeHandler(scanner)
    found = scanner.findings + secret_scan.found_in_databases
    found = secret_scan.leaks(found + secret_scan.scan_tree(tmp_path_factory.getbasetemp()))
    assert not found, secret_scan.report(found)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    external = os.environ.get("DATABASE_URL")
    if external:
        yield Cluster(external, None)
        return
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", fast_unsafe=True)
    pg.start()
    try:
        yield Cluster(pg.url("postgres"), pg)
    finally:
        pg.stop(mode="immediate")


async def _admin_execute(cluster: Cluster, sql: str) -> None:
    conn = await asyncpg.connect(cluster.admin_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db(cluster: Cluster) -> str:
    async def build() -> None:
        await _admin_execute(cluster, f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
        await _admin_execute(cluster, f'CREATE DATABASE "{TEMPLATE_DB}"')
        conn = await asyncpg.connect(cluster.url(TEMPLATE_DB))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(build())
    return TEMPLATE_DB


@pytest.fixture
async def database_url(cluster: Cluster, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test."""
    name = f"gw_test_{os.getpid()}_{next(_counter)}"
    await _admin_execute(cluster, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield cluster.url(name)
    await secret_scan.check_database(cluster.url(name), name)  # before its rows are gone
    await _admin_execute(cluster, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def empty_database_url(cluster: Cluster) -> AsyncIterator[str]:
    """A fresh database with no schema at all (migration tests)."""
    name = f"gw_empty_{os.getpid()}_{next(_counter)}"
    await _admin_execute(cluster, f'CREATE DATABASE "{name}"')
    yield cluster.url(name)
    await _admin_execute(cluster, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to this test's database, for looking at what was written."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def upstream() -> AsyncIterator[TestServer]:
    """The demo upstream on a real socket, on an ephemeral port."""
    server = TestServer(create_demo_app(), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
def config(database_url: str, upstream: TestServer) -> Config:
    return make_config(database_url, str(upstream.make_url("")).rstrip("/"))


@dataclasses.dataclass
class Account:
    account_id: uuid.UUID
    member_id: uuid.UUID
    token: str


@dataclasses.dataclass
class Seed:
    """Creates accounts and keys in the test database through the real code."""

    pool: asyncpg.Pool
    store: KeyStore
    hasher: Hasher
    permissions: tuple[str, ...]

    async def account(self, name: str = "Test account") -> Account:
        created = await create_account(
            self.pool, self.hasher, name, f"owner-{uuid.uuid4().hex[:8]}@example.com"
        )
        return Account(created.account_id, created.member_id, created.token)

    async def key(
        self, account: Account | None = None, name: str = "Test key", **kw: Any
    ) -> NewKey:
        account = account or await self.account()
        kw.setdefault("permissions", self.permissions)
        return await self.store.create(account.account_id, name, created_by=account.member_id, **kw)


@pytest.fixture
async def seed(config: Config) -> AsyncIterator[Seed]:
    pool = await asyncpg.create_pool(config.database.url, min_size=1, max_size=2)
    hasher = Hasher(config.keys.argon2)
    store = KeyStore(pool, KeyFormat(config.keys.prefix), hasher)
    yield Seed(pool, store, hasher, tuple(config.permissions))
    await pool.close()


GatewayFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def start_gateway(config: Config) -> AsyncIterator[GatewayFactory]:
    """Start the real proxy app on a real socket, served as `gateway serve` serves it:
    `await start_gateway(config=..., clock=...)`."""
    servers: list[TestServer] = []

    async def start(config: Config = config, clock: Clock | None = None, **kw: Any) -> TestServer:
        app: web.Application = create_app(config, clock=clock, **kw)
        server = ServedTestServer(app, host="127.0.0.1")
        await server.start_server(**SERVER_OPTIONS)
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def gateway(start_gateway: GatewayFactory) -> TestServer:
    return await start_gateway()


VerifyListenerFactory = Callable[..., Awaitable[VerifyListener]]


@pytest.fixture
async def start_verify_listener() -> AsyncIterator[VerifyListenerFactory]:
    """The verify listener (`proxy.verify_port`) of a started gateway, on a free port:
    `listener = await start_verify_listener(gateway, keepalive_timeout=...)`."""
    listeners: list[VerifyListener] = []

    async def start(gateway: TestServer, keepalive_timeout: float = 75.0) -> VerifyListener:
        listener = VerifyListener(gateway.app[VERIFY], keepalive_timeout=keepalive_timeout)
        await listener.start("127.0.0.1", 0)
        listeners.append(listener)
        return listener

    yield start
    for listener in reversed(listeners):
        await listener.close(5)


UpstreamFactory = Callable[[dict[str, Handler]], Awaitable[str]]


@pytest.fixture
async def start_upstream() -> AsyncIterator[UpstreamFactory]:
    """A small upstream of the test's own on a real socket; returns its base URL:
    `url = await start_upstream({"/v1/slow": slow})` (GET routes)."""
    servers: list[TestServer] = []

    async def start(routes: dict[str, Handler]) -> str:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in reversed(servers):
        await server.close()
