"""Configuration: defaults, the YAML file, environment overrides, one clear error per mistake."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import Argon2Config, Config, UsageConfig, from_dict, load_config
from gateway.settings import ConfigError

from .helpers import REPO_ROOT, gateway_command


def write_yaml(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def clean_environ(**extra: str) -> dict[str, str]:
    """The current environment without any gateway settings, plus `extra`."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("GATEWAY") and k != "DATABASE_URL"
    }
    env.update(extra)
    return env


# -- what loads ------------------------------------------------------------------------


def test_defaults_load_without_file_or_environment() -> None:
    """No file and no environment give the documented defaults."""
    config = load_config(None, {})
    assert config == Config()
    assert config.proxy.port == 8080
    assert config.proxy.upstream == "http://127.0.0.1:8090"
    assert config.admin.host == "127.0.0.1"
    assert config.admin.port == 8081
    assert config.keys.prefix == "gp_"
    assert config.keys.argon2 == Argon2Config(time_cost=2, memory_kib=19456, parallelism=1)


def test_repository_config_yaml_equals_the_code_defaults() -> None:
    """The shipped config.yaml documents exactly the defaults the code uses."""
    assert load_config(REPO_ROOT / "config.yaml", {}) == from_dict({})


def test_repository_config_yaml_sets_every_setting() -> None:
    """Every setting is written (and so documented) in the shipped config.yaml."""
    data = yaml.safe_load((REPO_ROOT / "config.yaml").read_text(encoding="utf-8"))

    def names(obj: Any, where: str) -> set[str]:
        found = set()
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            name = f"{where}{field.name}"
            if dataclasses.is_dataclass(value):
                found |= names(value, f"{name}.")
            else:
                found.add(name)
        return found

    def written(node: Any, where: str) -> set[str]:
        found = set()
        for key, value in node.items():
            name = f"{where}{key}"
            if isinstance(value, dict) and name != "permissions":
                found |= written(value, f"{name}.")
            else:
                found.add(name)
        return found

    assert written(data, "") == names(Config(), "")


def test_file_values_override_defaults(tmp_path: Path) -> None:
    """Values in the YAML file replace the defaults; the rest keep their defaults."""
    path = write_yaml(
        tmp_path,
        {
            "proxy": {
                "port": 9000,
                "upstream": "https://api.growpanel.example/base",
                "forward_authorization": True,
                "trusted_proxies": ["10.0.0.0/8", "192.0.2.1"],
                "timeout_seconds": 2,
            },
            "keys": {"argon2": {"time_cost": 3}},
            "logging": {"format": "text"},
        },
    )
    config = load_config(path, {})
    assert config.proxy.port == 9000
    assert config.proxy.upstream == "https://api.growpanel.example/base"
    assert config.proxy.forward_authorization is True
    assert config.proxy.trusted_proxies == ("10.0.0.0/8", "192.0.2.1")
    assert config.proxy.timeout_seconds == 2.0
    assert isinstance(config.proxy.timeout_seconds, float)
    assert config.keys.argon2 == Argon2Config(time_cost=3)
    assert config.logging.format == "text"
    assert config.admin == Config().admin


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    """An empty config file is the same as no file."""
    path = tmp_path / "config.yaml"
    path.write_text("# nothing set\n", encoding="utf-8")
    assert load_config(path, {}) == Config()


@pytest.mark.parametrize(
    ("variable", "raw", "read"),
    [
        ("GATEWAY__PROXY__PORT", "9000", lambda c: c.proxy.port == 9000),
        ("GATEWAY__PROXY__HOST", "0.0.0.0", lambda c: c.proxy.host == "0.0.0.0"),  # noqa: S104
        ("GATEWAY__PROXY__FORWARD_AUTHORIZATION", "true", lambda c: c.proxy.forward_authorization),
        ("GATEWAY__ADMIN__ENABLED", "false", lambda c: c.admin.enabled is False),
        (
            "GATEWAY__PROXY__TRUSTED_PROXIES",
            "[10.0.0.0/8, 192.0.2.7]",
            lambda c: c.proxy.trusted_proxies == ("10.0.0.0/8", "192.0.2.7"),
        ),
        ("GATEWAY__PROXY__TIMEOUT_SECONDS", "2.5", lambda c: c.proxy.timeout_seconds == 2.5),
        ("GATEWAY__KEYS__ARGON2__TIME_COST", "4", lambda c: c.keys.argon2.time_cost == 4),
        ("GATEWAY__KEYS__PREFIX", "acme_", lambda c: c.keys.prefix == "acme_"),
        ("GATEWAY__RATE_LIMITS__PER_MINUTE", "5", lambda c: c.rate_limits.per_minute == 5),
    ],
)
def test_environment_overrides_any_setting(variable: str, raw: str, read: Any) -> None:
    """`GATEWAY__SECTION__KEY` sets the setting, its value read as YAML."""
    assert read(load_config(None, {variable: raw}))


def test_other_environment_variables_are_ignored() -> None:
    """Only `GATEWAY__`-prefixed names (upper case) are settings."""
    environ = {
        "GATEWAY_OPERATOR_TOKEN": "not a setting",
        "gateway__proxy__port": "1",
        "PROXY__PORT": "1",
        "HOME": "/root",
    }
    assert load_config(None, environ) == Config()


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    """An environment variable beats the file; the file's other values stay."""
    path = write_yaml(tmp_path, {"proxy": {"port": 9100, "host": "10.1.2.3"}})
    config = load_config(path, {"GATEWAY__PROXY__PORT": "9200"})
    assert config.proxy.port == 9200
    assert config.proxy.host == "10.1.2.3"


def test_database_url_wins_over_file_and_gateway_variable(tmp_path: Path) -> None:
    """`DATABASE_URL` sets database.url whatever the file or GATEWAY__DATABASE__URL say."""
    path = write_yaml(tmp_path, {"database": {"url": "postgresql://file/db", "pool_max_size": 3}})
    env = {
        "GATEWAY__DATABASE__URL": "postgresql://variable/db",
        "DATABASE_URL": "postgres://user@env-host:6543/gateway",
    }
    config = load_config(path, env)
    assert config.database.url == "postgres://user@env-host:6543/gateway"
    assert config.database.pool_max_size == 3


def test_config_path_comes_from_gateway_config_variable(tmp_path: Path) -> None:
    """With no path given, `GATEWAY_CONFIG` names the file."""
    path = write_yaml(tmp_path, {"admin": {"port": 9999}})
    assert load_config(None, {"GATEWAY_CONFIG": str(path)}).admin.port == 9999


def test_config_is_frozen() -> None:
    """A loaded config cannot be changed by accident at run time."""
    config = load_config(None, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.proxy.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.permissions["x:read"] = "x"  # type: ignore[index]


# -- one clear error per mistake --------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "setting"),
    [
        # unknown keys
        ({"proxyy": {}}, "proxyy"),
        ({"proxy": {"prot": 80}}, "proxy.prot"),
        ({"keys": {"argon2": {"time": 3}}}, "keys.argon2.time"),
        # wrong types
        ({"proxy": {"port": "eighty"}}, "proxy.port"),
        ({"proxy": {"port": 80.5}}, "proxy.port"),
        ({"proxy": {"enabled": 1}}, "proxy.enabled"),
        ({"proxy": {"enabled": "yes please"}}, "proxy.enabled"),
        ({"proxy": {"host": ["a", "b"]}}, "proxy.host"),
        ({"proxy": {"timeout_seconds": True}}, "proxy.timeout_seconds"),
        ({"proxy": {"trusted_proxies": "10.0.0.0/8"}}, "proxy.trusted_proxies"),
        ({"proxy": {"trusted_proxies": [10]}}, "proxy.trusted_proxies[0]"),
        ({"proxy": "on"}, "proxy"),
        ({"keys": {"argon2": 3}}, "keys.argon2"),
        ({"logging": {"level": "LOUD"}}, "logging.level"),
        # bad URLs
        ({"proxy": {"upstream": "ftp://x"}}, "proxy.upstream"),
        ({"proxy": {"upstream": "http://"}}, "proxy.upstream"),
        ({"proxy": {"upstream": "growpanel.example"}}, "proxy.upstream"),
        ({"proxy": {"upstream": "http://up.example/?a=1"}}, "proxy.upstream"),
        ({"database": {"url": "mysql://localhost/growpanel"}}, "database.url"),
        ({"database": {"listen_url": "http://db.example/"}}, "database.listen_url"),
        ({"database": {"pgbouncer": True}}, "database.listen_url"),
        ({"proxy": {"upstream": "http://[::1"}}, "proxy.upstream"),
        ({"database": {"url": "postgresql://u:hunter2@db:port/growpanel"}}, "database.url"),
        ({"database": {"listen_url": "postgresql://db:99999/growpanel"}}, "database.listen_url"),
        (
            {"secret_scanning": {"public_keys_url": "https://[x/keys"}},
            "secret_scanning.public_keys_url",
        ),
        ({"database": {"pgbouncer": "yes"}}, "database.pgbouncer"),
        # bad addresses and routes
        ({"proxy": {"trusted_proxies": ["10.0.0.0/8", "not-an-ip"]}}, "proxy.trusted_proxies[1]"),
        ({"proxy": {"trusted_proxies": ["10.0.0.0/33"]}}, "proxy.trusted_proxies[0]"),
        ({"proxy": {"scopes": {"/v1/billing": "billing"}}}, "proxy.scopes"),
        ({"routes": [{"methods": ["GET"], "path": "v1/data"}]}, "routes[0].path"),
        ({"routes": "all"}, "routes"),
        ({"routes_unmatched": "maybe"}, "routes_unmatched"),
        # values out of range
        ({"proxy": {"port": 70000}}, "proxy.port"),
        ({"proxy": {"verify_port": 70000}}, "proxy.verify_port"),
        ({"proxy": {"port": 9000, "verify_port": 9000}}, "proxy.verify_port"),
        ({"admin": {"port": -1}}, "admin.port"),
        ({"proxy": {"timeout_seconds": 0}}, "proxy.timeout_seconds"),
        # past a year (days: a century), durations overflow timestamps when added to now
        ({"webhooks": {"give_up_after_seconds": 1.0e13}}, "webhooks.give_up_after_seconds"),
        ({"keys": {"cache_ttl_seconds": 366 * 86400 + 1}}, "keys.cache_ttl_seconds"),
        ({"keys": {"stale_if_error_seconds": 1.0e12}}, "keys.stale_if_error_seconds"),
        ({"keys": {"stale_if_error_seconds": -1}}, "keys.stale_if_error_seconds"),
        (
            {"secret_scanning": {"refresh_min_interval_seconds": 1.0e12}},
            "secret_scanning.refresh_min_interval_seconds",
        ),
        ({"keys": {"rotation_days": 10**11}}, "keys.rotation_days"),
        ({"database": {"pool_min_size": 20, "pool_max_size": 10}}, "database.pool_min_size"),
        ({"keys": {"prefix": "gp-"}}, "keys.prefix"),
        ({"keys": {"prefix": ""}}, "keys.prefix"),
        # API keys that admin tokens (gpa_…) could pass for
        ({"keys": {"prefix": "gpa_"}}, "keys.prefix"),
        ({"keys": {"prefix": "gpa_live"}}, "keys.prefix"),
        ({"keys": {"argon2": {"memory_kib": 4}}}, "keys.argon2.memory_kib"),
        # argon2 takes 32-bit values; beyond them hashing raised OverflowError
        ({"keys": {"argon2": {"memory_kib": 99_999_999_999}}}, "keys.argon2.memory_kib"),
        ({"keys": {"argon2": {"memory_kib": 2**32 - 1}}}, "keys.argon2.memory_kib"),
        ({"keys": {"argon2": {"memory_kib": 256 * 1024 + 1}}}, "keys.argon2.memory_kib"),
        ({"keys": {"argon2": {"time_cost": 2**32}}}, "keys.argon2.time_cost"),
        ({"keys": {"argon2": {"time_cost": 101}}}, "keys.argon2.time_cost"),
        ({"keys": {"argon2": {"time_cost": 0}}}, "keys.argon2.time_cost"),
        ({"keys": {"argon2": {"parallelism": 2**24}}}, "keys.argon2.parallelism"),
        ({"keys": {"argon2": {"parallelism": 256}}}, "keys.argon2.parallelism"),
        ({"keys": {"argon2": {"parallelism": -1}}}, "keys.argon2.parallelism"),
        ({"keys": {"argon2": {"parallelism": 4, "memory_kib": 31}}}, "keys.argon2.memory_kib"),
    ],
)
def test_bad_setting_in_file_is_refused_naming_it(
    tmp_path: Path, data: dict[str, Any], setting: str
) -> None:
    """Each kind of mistake raises ConfigError whose message starts with the setting's name."""
    path = write_yaml(tmp_path, data)
    with pytest.raises(ConfigError) as error:
        load_config(path, {})
    assert str(error.value).startswith(f"{setting}: ")
    assert "\n" not in str(error.value)
    assert "hunter2" not in str(error.value)  # a database URL's password


@pytest.mark.parametrize(
    ("environ", "setting"),
    [
        ({"GATEWAY__NOPE__PORT": "1"}, "nope"),
        ({"GATEWAY__PROXY__NOPE": "1"}, "proxy.nope"),
        ({"GATEWAY__KEYS__ARGON2__NOPE": "1"}, "keys.argon2.nope"),
        ({"GATEWAY__PROXY__PORT": "eighty"}, "proxy.port"),
        ({"GATEWAY__PROXY__ENABLED": "1"}, "proxy.enabled"),
        ({"GATEWAY__PROXY__HOST": "[a, b]"}, "proxy.host"),
        ({"GATEWAY__PROXY__UPSTREAM": "ftp://x"}, "proxy.upstream"),
        ({"GATEWAY__PROXY__TRUSTED_PROXIES": "[bad]"}, "proxy.trusted_proxies[0]"),
        ({"GATEWAY__PROXY": "1"}, "GATEWAY__PROXY"),
        ({"GATEWAY__PROXY__": "1"}, "GATEWAY__PROXY__"),
        ({"GATEWAY__PROXY__PORT__X": "1"}, "proxy.port.x"),
        ({"DATABASE_URL": "mysql://localhost/db"}, "database.url"),
        ({"GATEWAY__KEYS__ARGON2__MEMORY_KIB": "99999999999"}, "keys.argon2.memory_kib"),
        ({"GATEWAY__KEYS__ARGON2__TIME_COST": "4294967296"}, "keys.argon2.time_cost"),
        ({"GATEWAY__PROXY__PORT": "9" * 5000}, "proxy.port"),  # past Python's int digits
    ],
)
def test_bad_environment_variable_is_refused_naming_it(
    environ: dict[str, str], setting: str
) -> None:
    """A bad override raises ConfigError whose message starts with the setting's name."""
    with pytest.raises(ConfigError) as error:
        load_config(None, environ)
    assert str(error.value).startswith(f"{setting}: ")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read it"),
        ("proxy: {port: 80\n", "not valid YAML at line"),
        ("proxy:\n  port: 80\n bad indent: 1\n", "not valid YAML at line"),
        ("- proxy\n- admin\n", "expected a mapping of sections"),
        ("just a string\n", "expected a mapping of sections"),
        (b"\xff\xfe proxy", "not UTF-8 text"),
        ("proxy:\n  port: " + "9" * 5000 + "\n", "a number too long to read"),
    ],
)
def test_bad_config_file_is_refused_naming_it(
    tmp_path: Path, content: str | bytes | None, problem: str
) -> None:
    """A missing, unreadable, invalid or non-mapping file raises ConfigError naming the file."""
    path = tmp_path / "config.yaml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        load_config(path, {})
    message = str(error.value)
    assert message.startswith(f"config file {str(path)!r}: ")
    assert problem in message


def test_folder_as_config_file_is_refused(tmp_path: Path) -> None:
    """A path that is not a readable file is named in the error."""
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(tmp_path, {})


# YAML spellings of numbers that are not finite (`1.0e+400` overflows to infinity), and an
# integer too large to be a float; each in a setting checked one way or another.
NON_FINITE = [
    ("usage.flush_interval_seconds", ".nan"),
    ("webhooks.give_up_after_seconds", ".inf"),
    ("webhooks.retry_max_interval_seconds", ".inf"),  # checked against retry_base_seconds
    ("keys.stale_if_error_seconds", ".NaN"),  # may be 0
    ("secret_scanning.refresh_min_interval_seconds", ".Inf"),  # may be 0
    ("rate_limits.sync_interval_seconds", "-.inf"),
    ("proxy.timeout_seconds", "1.0e+400"),
    ("database.statement_timeout_seconds", "1" + "0" * 400),
]


@pytest.mark.parametrize(("setting", "raw"), NON_FINITE)
@pytest.mark.parametrize("source", ["file", "environment"])
def test_non_finite_number_is_refused_naming_the_setting(
    tmp_path: Path, setting: str, raw: str, source: str
) -> None:
    """NaN and infinity are no durations: `.nan` made a flusher busy-loop, `.inf` made
    every failed webhook delivery be sent again forever."""
    section, key = setting.split(".")
    path: Path | None = None
    environ: dict[str, str] = {}
    if source == "file":
        path = tmp_path / "config.yaml"
        path.write_text(f"{section}:\n  {key}: {raw}\n", encoding="utf-8")
    else:
        environ[f"GATEWAY__{section.upper()}__{key.upper()}"] = raw
    with pytest.raises(ConfigError) as error:
        load_config(path, environ)
    message = str(error.value)
    assert message.startswith(f"{setting}: expected a finite number, got ")
    assert "\n" not in message and len(message) < 200


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_validate_refuses_non_finite_numbers_set_in_code(value: float) -> None:
    """A section built in code, not read from YAML, is held to the same rule."""
    usage = dataclasses.replace(UsageConfig(), flush_interval_seconds=value)
    with pytest.raises(ConfigError, match=r"^usage\.flush_interval_seconds: "):
        usage.validate()


# -- at the command line ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "setting"),
    [
        ({"proxy": {"prot": 80}}, "proxy.prot"),
        ({"proxy": {"port": "eighty"}}, "proxy.port"),
        ({"proxy": {"upstream": "ftp://x"}}, "proxy.upstream"),
        ({"usage": {"flush_interval_seconds": math.nan}}, "usage.flush_interval_seconds"),
        ({"keys": {"argon2": {"memory_kib": 99_999_999_999}}}, "keys.argon2.memory_kib"),
    ],
)
def test_cli_with_bad_config_exits_2_with_one_line_naming_the_setting(
    tmp_path: Path, data: dict[str, Any], setting: str
) -> None:
    """`gateway --config BAD migrate` stops before any work: exit 2, one stderr line."""
    path = write_yaml(tmp_path, data)
    result = subprocess.run(
        gateway_command("--config", str(path), "migrate"),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=clean_environ(),
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{setting}: " in lines[0]
    assert result.stdout == ""


def test_cli_with_missing_config_file_exits_2(tmp_path: Path) -> None:
    """A `--config` path that does not exist is one line naming the file, exit 2."""
    missing = tmp_path / "nowhere.yaml"
    result = subprocess.run(
        gateway_command("--config", str(missing), "migrate"),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=clean_environ(),
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert str(missing) in lines[0]


def test_argon2_memory_the_machine_cannot_give_is_a_config_error(tmp_path: Path) -> None:
    """argon2 parameters are tried once at start-up: a memory cost that cannot be
    allocated stops the process with one line, not every key creation later."""
    path = write_yaml(tmp_path, {"keys": {"argon2": {"memory_kib": 256 * 1024}}})

    # The process may map 192 MiB in all (it needs under 100 without argon2's 256).
    limited = ["/bin/sh", "-c", 'ulimit -v 196608 && exec "$@"', "sh"]
    result = subprocess.run(
        [*limited, *gateway_command("--config", str(path), "migrate")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=clean_environ(),
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "keys.argon2: " in lines[0]
