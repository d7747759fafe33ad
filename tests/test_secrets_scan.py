"""The suite-wide secret scan can fail: it finds keys and tokens wherever they are planted.

`conftest.no_secret_anywhere` runs `secret_scan` over every log record, every test
database before it is dropped and every file the session stored, and fails the session
on any finding. These tests plant keys (marked as planted, so the session does not count
them as leaks) and check each part of the scanner finds them, and only them.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import asyncpg

from gateway.accounts import ADMIN_TOKEN_FORMAT
from gateway.keyformat import KeyFormat

from . import secret_scan

KEYS = KeyFormat("gp_")


def planted_key() -> str:
    key, _ = KEYS.generate()
    secret_scan.plant(key)
    return key


def planted_token() -> str:
    token, _ = ADMIN_TOKEN_FORMAT.generate()
    secret_scan.plant(token)
    return token


def test_full_keys_and_tokens_are_found_only_with_a_valid_checksum() -> None:
    key, token = planted_key(), planted_token()
    mistyped = key[:-1] + ("A" if key[-1] != "A" else "B")
    text = json.dumps({"authorization": f"Bearer {key}", "t": token, "m": mistyped})
    found = secret_scan.find(f"GET /x?k={key}&x=1\n{text}".encode(), "here")
    assert sorted((f.what, f.partial) for f in found) == sorted(
        [
            ("full key", KEYS.partial(key)),
            ("full key", KEYS.partial(key)),
            ("full admin token", ADMIN_TOKEN_FORMAT.partial(token)),
        ]
    )
    assert all(key not in str(f) for f in found), "a report must not repeat the key"
    assert secret_scan.leaks(found) == []  # planted, so not the session's concern


def test_a_registered_keys_bare_secret_is_found() -> None:
    key = planted_key()
    secret_scan.register(key)
    secret = KEYS.parse(key).secret  # type: ignore[union-attr]
    found = secret_scan.find(f'{{"oops": "{secret}"}}'.encode(), "a log line")
    assert [(f.what, f.partial) for f in found] == [
        ("secret of a registered key", KEYS.partial(key))
    ]


def test_files_are_scanned_wherever_they_are() -> None:
    key = planted_key()
    # Outside the session's own folder, which the session scans itself.
    with tempfile.TemporaryDirectory() as directory:
        nested = Path(directory, "a", "b")
        nested.mkdir(parents=True)
        (nested / "gateway.log").write_bytes(
            b'{"message": "x"}\n{"path": "/' + key.encode() + b'"}\n'
        )
        (Path(directory) / "clean.log").write_text("nothing here\n")
        found = secret_scan.scan_tree(Path(directory))
    assert [(f.where, f.partial) for f in found] == [("a/b/gateway.log", KEYS.partial(key))]


async def test_every_table_of_a_database_is_scanned(database_url: str) -> None:
    key, token = planted_key(), planted_token()
    conn = await asyncpg.connect(database_url)
    try:
        account = await conn.fetchval(
            "INSERT INTO accounts (name) VALUES ($1) RETURNING id", f"named {key}"
        )
        found = await secret_scan.scan_database(database_url, "the test database")
        await conn.execute("UPDATE accounts SET name = $1 WHERE id = $2", token, account)
        found += await secret_scan.scan_database(database_url, "the test database")
    finally:
        await conn.close()
    assert [(f.what, f.partial) for f in found] == [
        ("full key", KEYS.partial(key)),
        ("full admin token", ADMIN_TOKEN_FORMAT.partial(token)),
    ]
    assert all("table public.accounts" in f.where for f in found)


def test_log_records_are_scanned_as_the_json_formatter_writes_them() -> None:
    key = planted_key()
    scanner = secret_scan.LogScanner()
    logger = logging.getLogger("gateway.secret-scan-test")
    logger.addHandler(scanner)
    try:
        logger.warning("refused", extra={"header": f"Bearer {key}"})
        logger.warning("nothing secret")
    finally:
        logger.removeHandler(scanner)
    assert scanner.records == 2
    assert [f.partial for f in scanner.findings] == [KEYS.partial(key)]


def test_the_session_scan_is_on() -> None:
    """conftest's fixture scans this session's log records (and, at its end, the rest)."""
    handlers = logging.getLogger("gateway").handlers
    assert any(isinstance(h, secret_scan.LogScanner) for h in handlers)
