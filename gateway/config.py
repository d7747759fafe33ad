"""Configuration: `config.yaml` plus environment overrides, loaded into frozen dataclasses.

Precedence, lowest first: the defaults below, the YAML file, `GATEWAY__<SECTION>__<KEY>`
environment variables (values parsed as YAML scalars, so `8080`, `true` and `[a, b]` work),
and `DATABASE_URL` for `database.url`. Every mistake raises `ConfigError` whose message
starts with the dotted name of the setting, so start-up can fail with one clear line.
This module declares the sections and their checks; `gateway.settings` reads them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import argon2
from yarl import URL

from .routes import RouteConfig, compile_routes
from .settings import (
    ConfigError,
    apply_environment,
    between,
    build,
    non_negative,
    port,
    positive,
    read_yaml,
    readable_file,
)

DEFAULT_CONFIG_PATH = "config.yaml"
# The default route table models the GrowPanel REST API (the paths `gateway demo-upstream`
# serves); config.yaml carries the same, for operators to edit.
DEFAULT_PERMISSIONS: Mapping[str, str] = types.MappingProxyType(
    {
        "reports:read": "Read reports and metrics (MRR, churn, cohorts)",
        "customers:read": "Read customers and their subscriptions",
        "data:read": "Read and download imported data",
        "data:write": "Push data (imports)",
        "account:read": "Read the account's details",
    }
)
DEFAULT_ROUTES: tuple[RouteConfig, ...] = (
    RouteConfig(methods=("GET", "HEAD"), path="/v1/reports/**", permission="reports:read"),
    RouteConfig(methods=("GET", "HEAD"), path="/v1/customers/**", permission="customers:read"),
    RouteConfig(methods=("GET", "HEAD"), path="/v1/data/**", permission="data:read"),
    RouteConfig(
        methods=("POST", "PUT", "PATCH", "DELETE"), path="/v1/data/**", permission="data:write"
    ),
    RouteConfig(methods=("GET", "HEAD"), path="/v1/account", permission="account:read"),
)


def parse_url(setting: str, value: str) -> URL:
    """`value` as a URL, or a ConfigError naming the setting (never the value: a
    database URL may hold a password)."""
    try:
        url = URL(value)
        url.port  # noqa: B018 - checked when read
    except ValueError as exc:
        raise ConfigError(f"{setting}: not a valid URL ({exc})") from None
    return url


@dataclasses.dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS on a listener: off unless `certificate` and `key` are set."""

    certificate: str = ""  # PEM: the certificate, then any intermediates
    key: str = ""  # PEM: its private key
    client_ca: str = ""  # PEM: CAs whose client certificate every client must show (mTLS)

    @property
    def enabled(self) -> bool:
        return bool(self.certificate)

    def validate(self, where: str) -> None:
        if self.certificate and not self.key:
            raise ConfigError(f"{where}.key: required with {where}.certificate")
        if self.key and not self.certificate:
            raise ConfigError(f"{where}.certificate: required with {where}.key")
        if self.client_ca and not self.certificate:
            raise ConfigError(f"{where}.client_ca: needs {where}.certificate and {where}.key")
        for name in ("certificate", "key", "client_ca"):
            path = getattr(self, name)
            if path:
                readable_file(f"{where}.{name}", path)


@dataclasses.dataclass(frozen=True, slots=True)
class ProxyConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    # A listener of its own for `/_gateway/verify` (docs/ingress.md); 0: none.
    verify_port: int = 0
    upstream: str = "http://127.0.0.1:8090"
    timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 5.0
    max_body_bytes: int = 10 * 1024 * 1024
    max_upstream_connections: int = 200
    forward_authorization: bool = False
    trusted_proxies: tuple[str, ...] = ()
    tls: TLSConfig = dataclasses.field(default_factory=TLSConfig)
    # PEM file of the CA(s) that sign an https upstream's certificate (a private CA);
    # empty: the system's CA store.
    upstream_ca: str = ""

    def validate(self) -> None:
        url = parse_url("proxy.upstream", self.upstream)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                f"proxy.upstream: expected an http:// or https:// URL, got {self.upstream!r}"
            )
        if url.query_string or url.fragment:
            raise ConfigError("proxy.upstream: must not carry a query or fragment")
        if self.upstream_ca:
            if url.scheme != "https":
                raise ConfigError("proxy.upstream_ca: only used with an https:// upstream")
            readable_file("proxy.upstream_ca", self.upstream_ca)
        self.tls.validate("proxy.tls")
        for i, cidr in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(
                    f"proxy.trusted_proxies[{i}]: not an IP address or CIDR: {cidr!r}"
                ) from None
        positive("proxy.timeout_seconds", self.timeout_seconds)
        positive("proxy.connect_timeout_seconds", self.connect_timeout_seconds)
        positive("proxy.max_body_bytes", self.max_body_bytes)
        positive("proxy.max_upstream_connections", self.max_upstream_connections)
        port("proxy.port", self.port)
        port("proxy.verify_port", self.verify_port)
        if self.verify_port and self.verify_port == self.port:
            raise ConfigError("proxy.verify_port: must differ from proxy.port")


@dataclasses.dataclass(frozen=True, slots=True)
class AdminConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8081
    tls: TLSConfig = dataclasses.field(default_factory=TLSConfig)

    def validate(self) -> None:
        port("admin.port", self.port)
        self.tls.validate("admin.tls")


@dataclasses.dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = "postgresql://localhost:5432/growpanel"
    pool_min_size: int = 1
    pool_max_size: int = 10
    connect_timeout_seconds: float = 5.0
    statement_timeout_seconds: float = 10.0
    # `url` leads to PgBouncer in transaction pooling: no statement outlives a transaction.
    pgbouncer: bool = False
    # A direct connection to Postgres (not through a pooler) for what needs a session of
    # its own: LISTEN and the migrations' advisory lock. Empty: `url`.
    listen_url: str = ""

    @property
    def direct_url(self) -> str:
        return self.listen_url or self.url

    def validate(self) -> None:
        url = parse_url("database.url", self.url)
        if url.scheme not in ("postgres", "postgresql"):
            raise ConfigError("database.url: expected a postgresql:// URL")
        listen_url = self.listen_url and parse_url("database.listen_url", self.listen_url)
        if listen_url and listen_url.scheme not in ("postgres", "postgresql"):
            raise ConfigError("database.listen_url: expected a postgresql:// URL")
        if self.pgbouncer and not self.listen_url:
            raise ConfigError(
                "database.listen_url: required with database.pgbouncer: true"
                " (LISTEN needs a direct connection to Postgres)"
            )
        positive("database.pool_max_size", self.pool_max_size)
        if not 0 <= self.pool_min_size <= self.pool_max_size:
            raise ConfigError("database.pool_min_size: must be between 0 and pool_max_size")
        positive("database.connect_timeout_seconds", self.connect_timeout_seconds)
        positive("database.statement_timeout_seconds", self.statement_timeout_seconds)


# Bounds on the argon2 parameters, well inside what the library takes (32-bit values): no
# API key needs more, 255 lanes is as many as other implementations verify, and the trial
# hash at start-up (below) takes a fraction of a second.
ARGON2_MAX_TIME_COST = 100
ARGON2_MAX_MEMORY_KIB = 256 * 1024  # 256 MiB
ARGON2_MAX_PARALLELISM = 255


@dataclasses.dataclass(frozen=True, slots=True)
class Argon2Config:
    time_cost: int = 2
    memory_kib: int = 19456
    parallelism: int = 1

    def validate(self) -> None:
        between("keys.argon2.parallelism", self.parallelism, 1, ARGON2_MAX_PARALLELISM)
        between("keys.argon2.time_cost", self.time_cost, 1, ARGON2_MAX_TIME_COST)
        if self.memory_kib < 8 * self.parallelism:
            raise ConfigError("keys.argon2.memory_kib: must be at least 8 × parallelism")
        if self.memory_kib > ARGON2_MAX_MEMORY_KIB:
            raise ConfigError(
                f"keys.argon2.memory_kib: at most {ARGON2_MAX_MEMORY_KIB} (256 MiB),"
                f" got {self.memory_kib!r}"
            )
        # One hash now, so that parameters argon2 refuses, or memory the machine cannot
        # give, stop start-up rather than fail every key created. One pass: time_cost
        # changes how long a hash takes, not whether it can be made.
        try:
            argon2.PasswordHasher(
                time_cost=1,
                memory_cost=self.memory_kib,
                parallelism=self.parallelism,
                type=argon2.Type.ID,
            ).hash("trial")
        except (argon2.exceptions.Argon2Error, OverflowError, ValueError) as exc:
            raise ConfigError(f"keys.argon2: cannot hash with these parameters ({exc})") from None


# Members' admin tokens (gateway/accounts.py): API keys never share it, so that neither
# can pass for the other and a scanner tells them apart.
ADMIN_TOKEN_PREFIX = "gpa_"  # noqa: S105 (a prefix, not a secret)


@dataclasses.dataclass(frozen=True, slots=True)
class KeysConfig:
    prefix: str = "gp_"
    rotation_days: int = 90
    cache_ttl_seconds: float = 60.0
    cache_max_entries: int = 100_000
    stale_if_error_seconds: float = 300.0
    verify_concurrency: int = 2
    argon2: Argon2Config = dataclasses.field(default_factory=Argon2Config)

    def validate(self) -> None:
        if not self.prefix or not all(
            c.isascii() and (c.isalnum() or c == "_") for c in self.prefix
        ):
            raise ConfigError("keys.prefix: must be one or more of [A-Za-z0-9_]")
        if self.prefix.startswith(ADMIN_TOKEN_PREFIX):
            raise ConfigError(
                f"keys.prefix: must not begin with {ADMIN_TOKEN_PREFIX!r}, the admin tokens' prefix"
            )
        positive("keys.rotation_days", self.rotation_days)
        positive("keys.cache_ttl_seconds", self.cache_ttl_seconds)
        positive("keys.cache_max_entries", self.cache_max_entries)
        non_negative("keys.stale_if_error_seconds", self.stale_if_error_seconds)
        positive("keys.verify_concurrency", self.verify_concurrency)
        self.argon2.validate()


@dataclasses.dataclass(frozen=True, slots=True)
class FailedAuthConfig:
    per_ip_per_minute: int = 30
    per_key_per_minute: int = 20
    max_tracked: int = 100_000

    def validate(self) -> None:
        positive("rate_limits.failed_auth.per_ip_per_minute", self.per_ip_per_minute)
        positive("rate_limits.failed_auth.per_key_per_minute", self.per_key_per_minute)
        positive("rate_limits.failed_auth.max_tracked", self.max_tracked)


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimitConfig:
    per_minute: int = 600
    per_day: int = 50_000
    sync_interval_seconds: float = 1.0
    failed_auth: FailedAuthConfig = dataclasses.field(default_factory=FailedAuthConfig)

    def validate(self) -> None:
        positive("rate_limits.per_minute", self.per_minute)
        positive("rate_limits.per_day", self.per_day)
        positive("rate_limits.sync_interval_seconds", self.sync_interval_seconds)
        self.failed_auth.validate()


@dataclasses.dataclass(frozen=True, slots=True)
class UsageConfig:
    flush_interval_seconds: float = 5.0
    max_pending_keys: int = 1_000_000

    def validate(self) -> None:
        positive("usage.flush_interval_seconds", self.flush_interval_seconds)
        positive("usage.max_pending_keys", self.max_pending_keys)


@dataclasses.dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"
    access_log: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    shutdown_timeout_seconds: float = 30.0
    keepalive_timeout_seconds: float = 75.0
    uvloop: bool = True

    def validate(self) -> None:
        positive("server.shutdown_timeout_seconds", self.shutdown_timeout_seconds)
        positive("server.keepalive_timeout_seconds", self.keepalive_timeout_seconds)


@dataclasses.dataclass(frozen=True, slots=True)
class SecretScanningConfig:
    enabled: bool = True
    action: Literal["disable", "revoke", "report"] = "disable"
    public_keys_url: str = "https://api.github.com/meta/public_keys/secret_scanning"
    max_tokens: int = 100
    max_body_bytes: int = 256 * 1024
    refresh_min_interval_seconds: float = 60.0
    fetch_timeout_seconds: float = 5.0

    def validate(self) -> None:
        url = parse_url("secret_scanning.public_keys_url", self.public_keys_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                "secret_scanning.public_keys_url: expected an http:// or https:// URL,"
                f" got {self.public_keys_url!r}"
            )
        positive("secret_scanning.max_tokens", self.max_tokens)
        positive("secret_scanning.max_body_bytes", self.max_body_bytes)
        non_negative(
            "secret_scanning.refresh_min_interval_seconds", self.refresh_min_interval_seconds
        )
        positive("secret_scanning.fetch_timeout_seconds", self.fetch_timeout_seconds)


@dataclasses.dataclass(frozen=True, slots=True)
class WebhooksConfig:
    deliver: bool = True
    allow_private_targets: bool = False
    timeout_seconds: float = 5.0
    concurrency: int = 4
    retry_base_seconds: float = 5.0
    retry_max_interval_seconds: float = 3600.0
    give_up_after_seconds: float = 86400.0
    poll_interval_seconds: float = 1.0
    scan_interval_seconds: float = 60.0

    def validate(self) -> None:
        positive("webhooks.timeout_seconds", self.timeout_seconds)
        positive("webhooks.concurrency", self.concurrency)
        positive("webhooks.retry_base_seconds", self.retry_base_seconds)
        if self.retry_max_interval_seconds < self.retry_base_seconds:
            raise ConfigError(
                "webhooks.retry_max_interval_seconds: must be at least retry_base_seconds"
            )
        positive("webhooks.give_up_after_seconds", self.give_up_after_seconds)
        positive("webhooks.poll_interval_seconds", self.poll_interval_seconds)
        positive("webhooks.scan_interval_seconds", self.scan_interval_seconds)


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    proxy: ProxyConfig = dataclasses.field(default_factory=ProxyConfig)
    admin: AdminConfig = dataclasses.field(default_factory=AdminConfig)
    database: DatabaseConfig = dataclasses.field(default_factory=DatabaseConfig)
    keys: KeysConfig = dataclasses.field(default_factory=KeysConfig)
    rate_limits: RateLimitConfig = dataclasses.field(default_factory=RateLimitConfig)
    usage: UsageConfig = dataclasses.field(default_factory=UsageConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    secret_scanning: SecretScanningConfig = dataclasses.field(default_factory=SecretScanningConfig)
    webhooks: WebhooksConfig = dataclasses.field(default_factory=WebhooksConfig)
    # The route table (gateway/routes.py): permission names with their descriptions, the
    # routes in order, and what happens to a request that matches none.
    permissions: Mapping[str, str] = dataclasses.field(default_factory=lambda: DEFAULT_PERMISSIONS)
    routes: tuple[RouteConfig, ...] = DEFAULT_ROUTES
    routes_unmatched: Literal["deny", "allow"] = "deny"

    def validate(self) -> None:
        compile_routes(self.routes, self.permissions)
        for field in dataclasses.fields(self):
            section = getattr(self, field.name)
            validate = getattr(section, "validate", None)
            if validate is not None:
                validate()


# The top-level settings that are values, not sections (`GATEWAY__ROUTES='[...]'`).
_NOT_SECTIONS = tuple(
    field.name
    for field in dataclasses.fields(Config)
    if not dataclasses.is_dataclass(field.default_factory)
)


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read the YAML file (if any), apply environment overrides, validate."""
    env = os.environ if environ is None else environ
    path = config_path(path, env)
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(Path(path))
    apply_environment(data, env, top_level=_NOT_SECTIONS)
    config: Config = build(Config, data, "")
    config.validate()
    return config


def config_path(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> str | os.PathLike[str] | None:
    """The file `load_config` reads: the argument, $GATEWAY_CONFIG, ./config.yaml, or none."""
    env = os.environ if environ is None else environ
    if path is None:
        path = env.get("GATEWAY_CONFIG")
        if path is None and Path(DEFAULT_CONFIG_PATH).exists():
            path = DEFAULT_CONFIG_PATH
    return path


def from_dict(data: Mapping[str, Any]) -> Config:
    """Build a validated Config from plain data (tests, tools)."""
    config: Config = build(Config, dict(data), "")
    config.validate()
    return config
