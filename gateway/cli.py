"""The `gateway` command: serve, migrate, bootstrap, demo-upstream.

Exit codes: 0 success, 1 a runtime failure (database unreachable, pending migrations),
2 a usage or configuration error (one line naming the setting).

prometheus-client chooses at import whether it writes to a multiprocess directory, so
nothing that imports it (`gateway.db`, `gateway.serving`, through `gateway.metrics`) is
imported at the top of this module: `main` prepares the directory for `serve --workers N`
first (see `_metrics_directory`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from .config import Config, config_path, load_config
from .logs import configure_logging
from .settings import ConfigError
from .tls import check as check_tls

log = logging.getLogger("gateway")


class Failure(Exception):
    """A runtime failure to report in one line (exit 1)."""


def _run(main: Coroutine[Any, Any, None], use_uvloop: bool = True) -> None:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


# -- serve -----------------------------------------------------------------------------


async def serve(
    config: Config,
    *,
    apply_migrations: bool,
    workers: int = 1,
    worker: bool = False,
    config_path_arg: str | None = None,
) -> None:
    from .serving import serve_one, serve_supervised

    if not worker:  # a worker's parent has checked the schema and said where it read it
        source = config_path(config_path_arg)
        log.info(
            "configuration loaded",
            # abspath only joins the working directory: no I/O to speak of.
            extra={
                "config_file": os.path.abspath(source) if source else "(defaults only)"  # noqa: ASYNC240
            },
        )
        await _check_schema(config, apply_migrations)
    if workers > 1 and not config.proxy.enabled:
        # The workers are proxy processes: N of them with no proxy would idle, and the
        # admin /readyz would wait for their listeners for ever. The admin runs alone.
        log.warning("--workers ignored: proxy.enabled is false", extra={"workers": workers})
        workers = 1
    if workers > 1:
        await serve_supervised(config, workers, config_path_arg)
    else:
        await serve_one(config, worker=worker)


async def _check_schema(config: Config, apply_migrations: bool) -> None:
    from .db import migrate, pending_migrations

    conn = await _connect(config)
    try:
        if apply_migrations:
            await migrate(conn)
        else:
            pending = await pending_migrations(conn)
            if pending:
                names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
                raise Failure(
                    f"pending migrations ({names}): run 'gateway migrate' or 'serve --migrate'"
                )
    finally:
        await conn.close()


async def _connect(config: Config) -> asyncpg.Connection:
    from .db import UNAVAILABLE, connect

    try:
        # Direct: migrations take a session advisory lock (not through PgBouncer).
        return await connect(config.database, direct=True)
    except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
        raise Failure(f"cannot connect to the database: {exc or type(exc).__name__}") from None


# -- migrate ---------------------------------------------------------------------------


async def run_migrate(config: Config) -> None:
    from .db import migrate

    conn = await _connect(config)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    if applied:
        for m in applied:
            print(f"applied {m.version:04d}_{m.name}")
    else:
        print("migrations: up to date")


# -- bootstrap -------------------------------------------------------------------------


async def run_bootstrap(config: Config, account: str, owner_email: str, as_json: bool) -> None:
    # The admin API's own checks, so bootstrap takes exactly what POST /v1/accounts takes
    # (the command serves the admin listener too: see serving.py).
    from admin import validation as v

    from .accounts import create_account
    from .db import create_pool
    from .keyformat import Hasher

    try:
        name = v.name(account)
    except v.FieldError as exc:
        raise ConfigError(f"--account: {exc}") from None
    try:
        owner_email = v.email(owner_email)
    except v.FieldError as exc:
        raise ConfigError(f"--owner-email: {exc}") from None
    await _check_schema(config, apply_migrations=False)
    pool = await create_pool(config.database, min_size=1, max_size=1)
    try:
        created = await create_account(
            pool, Hasher(config.keys.argon2), name, owner_email, actor_type="system"
        )
    except asyncpg.UniqueViolationError:
        raise Failure("an owner with that email already exists in that account") from None
    finally:
        await pool.close()
    if as_json:
        print(
            json.dumps(
                {
                    "account_id": str(created.account_id),
                    "member_id": str(created.member_id),
                    "token": created.token,
                }
            )
        )
    else:
        print(f"account:   {created.account_id}")
        print(f"owner:     {created.member_id} <{owner_email}>")
        print(f"token:     {created.token}")
        print("Keep the token now: it is shown only this once.")


# -- demo-upstream ---------------------------------------------------------------------


def run_demo_upstream(host: str, port: int) -> None:
    from .demo_upstream import create_demo_app

    try:  # the same event loop as the gateway: ~20% less CPU per request
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        loop = None
    else:
        loop = uvloop.new_event_loop()
    web.run_app(create_demo_app(), host=host, port=port, print=None, access_log=None, loop=loop)


# -- entry point -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="GrowPanel API gateway")
    parser.add_argument(
        "--config", help="path to config.yaml (default: $GATEWAY_CONFIG, then ./config.yaml)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p_serve = commands.add_parser("serve", help="run the proxy and admin listeners")
    p_serve.add_argument("--migrate", action="store_true", help="apply pending migrations first")
    p_serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run the proxy in N processes sharing the port (SO_REUSEPORT)",
    )
    # Internal: how the parent of `--workers N` starts each proxy process.
    p_serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    commands.add_parser("migrate", help="apply pending database migrations")
    p_boot = commands.add_parser("bootstrap", help="create an account and its first Owner")
    p_boot.add_argument("--account", required=True, help="the account's name")
    p_boot.add_argument("--owner-email", required=True, help="the first Owner's email")
    p_boot.add_argument("--json", action="store_true", help="print one JSON object")
    p_demo = commands.add_parser("demo-upstream", help="run a stand-in GrowPanel API")
    p_demo.add_argument("--host", default="127.0.0.1")
    p_demo.add_argument("--port", type=int, default=8090)
    return parser


def _metrics_directory(args: argparse.Namespace) -> tuple[Path, bool] | None:
    """For the supervisor of `serve --workers N`: the multiprocess metrics directory,
    prepared (and named in the environment, for this process and its workers) before
    anything imports prometheus-client. Imported earlier, the supervisor's own metrics
    (admin requests, key events, its pool, webhooks) stay in memory where /metrics, which
    reads only the directory, never sees them."""
    if args.command != "serve" or args.worker or args.workers <= 1:
        return None
    from .workers import prepare_metrics_directory

    return prepare_metrics_directory()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        # SIGHUP (a reload) before its handler exists would stop the start-up (the default
        # action); ignored until `serving` installs the handler.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if args.command == "demo-upstream":
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        run_demo_upstream(args.host, args.port)
        return 0
    metrics_directory = _metrics_directory(args)
    try:
        return _main(args)
    finally:
        if metrics_directory is not None and metrics_directory[1]:
            from .workers import remove_metrics_directory

            remove_metrics_directory(metrics_directory[0])


def _main(args: argparse.Namespace) -> int:
    from .db import MigrationError

    try:
        config = load_config(args.config)
        configure_logging(config.logging)

        if args.command == "serve":
            if not 1 <= args.workers <= 64:
                raise ConfigError("--workers: a number from 1 to 64")
            check_tls(config)  # before the database: a bad file is a config error
            _run(
                serve(
                    config,
                    apply_migrations=args.migrate,
                    workers=args.workers,
                    worker=args.worker,
                    config_path_arg=args.config,
                ),
                config.server.uvloop,
            )
        elif args.command == "migrate":
            _run(run_migrate(config))
        elif args.command == "bootstrap":
            _run(run_bootstrap(config, args.account, args.owner_email, args.json))
    except ConfigError as exc:
        print(f"gateway: config error: {exc}", file=sys.stderr)
        return 2
    except (Failure, MigrationError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the port is taken
        print(f"gateway: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
