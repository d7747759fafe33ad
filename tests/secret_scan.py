"""The suite-wide secret scan (SPEC §2: a full key is never stored, logged or returned again).

Every full API key (`gp_…`) and admin token (`gpa_…`) has a CRC32 checksum, so any string
of that shape whose checksum holds is a real one (a random string passes one time in four
billion). `conftest.py` runs this scanner over
- every log record of the test process, as the JSON formatter writes it (`LogScanner`);
- every test database, row by row, just before it is dropped (`scan_database`);
- at the end of the session, every file the session stored: the logs of every real
  `gateway serve` the tests ran, and the Postgres cluster's files — its log, its tables
  and its write-ahead log, which holds every row ever written, dropped databases included
  (`scan_tree`);
and fails the session if any is found. Tests that issue keys may also `register` them:
their bare secrets (without prefix and checksum) are then looked for too.

Findings name where, and show a key only as its partial form: the report must not leak.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import asyncpg

from gateway.accounts import ADMIN_TOKEN_FORMAT
from gateway.keyformat import CHECKSUM_LENGTH, PUBLIC_ID_LENGTH, SECRET_LENGTH, KeyFormat
from gateway.logs import JsonFormatter

FORMATS = (KeyFormat("gp_"), ADMIN_TOKEN_FORMAT)
_BODY = PUBLIC_ID_LENGTH + SECRET_LENGTH + CHECKSUM_LENGTH
# Bounded by what is not base62 on the left, so "xgp_…" inside a longer run is not taken
# for a key, and by nothing on the right: a key followed by more text is still a key.
TOKEN = re.compile(rb"(?<![0-9A-Za-z])gpa?_[0-9A-Za-z]{%d}" % _BODY)
RUN = re.compile(rb"[0-9A-Za-z]{%d,}" % SECRET_LENGTH)


@dataclasses.dataclass(frozen=True)
class Finding:
    where: str
    what: str  # "full key", "full admin token" or "secret of a registered key"
    partial: str

    def __str__(self) -> str:
        return f"{self.what} {self.partial} in {self.where}"


_secrets: dict[bytes, str] = {}  # bare secret -> partial key
_planted: set[str] = set()  # partials of keys the scanner's own tests plant on purpose


def register(key: str) -> None:
    """A key or token this session issued: its bare secret is searched for as well."""
    for key_format in FORMATS:
        parsed = key_format.parse(key)
        if parsed is not None:
            _secrets[parsed.secret.encode()] = key_format.partial(key)


def plant(key: str) -> None:
    """A key put somewhere on purpose, to prove the scanner finds it: not a leak."""
    for key_format in FORMATS:
        if key_format.parse(key) is not None:
            _planted.add(key_format.partial(key))


def find(data: bytes, where: str) -> list[Finding]:
    found = []
    for match in TOKEN.finditer(data):
        text = match.group().decode()
        for key_format, what in zip(FORMATS, ("full key", "full admin token"), strict=True):
            if key_format.parse(text) is not None:
                found.append(Finding(where, what, key_format.partial(text)))
    if _secrets:
        for run in RUN.finditer(data):
            chunk = run.group()
            for start in range(len(chunk) - SECRET_LENGTH + 1):
                partial = _secrets.get(chunk[start : start + SECRET_LENGTH])
                if partial is not None:
                    found.append(Finding(where, "secret of a registered key", partial))
    return found


def leaks(findings: Iterable[Finding]) -> list[Finding]:
    """The findings less the keys the scanner's own tests planted."""
    return [f for f in findings if f.partial not in _planted]


def _files(root: Path) -> Iterator[Path]:
    for directory, _, names in os.walk(root):
        for name in names:
            yield Path(directory) / name


def scan_tree(root: Path) -> list[Finding]:
    """Every regular file under `root`, read as bytes (logs, JSON, Postgres files)."""
    found = []
    for path in _files(root):
        try:
            if not path.is_file() or path.is_symlink():
                continue
            data = path.read_bytes()
        except OSError:
            continue  # gone meanwhile, or a socket
        found += find(data, str(path.relative_to(root)))
    return found


async def scan_database(url: str, where: str) -> list[Finding]:
    """Every row of every table, as Postgres renders it as text (a dump, table by table)."""
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT format('%I.%I', table_schema, table_name) AS name"
            " FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        found = []
        for table in tables:
            rows = await conn.fetch(
                f"SELECT t::text AS row FROM {table['name']} t"  # noqa: S608 - catalogue names
                f" WHERE t::text ~ '[0-9A-Za-z]{{{SECRET_LENGTH}}}'"
            )
            text = "\n".join(row["row"] for row in rows).encode()
            found += find(text, f"database {where}, table {table['name']}")
        return found
    finally:
        await conn.close()


found_in_databases: list[Finding] = []


async def check_database(url: str, where: str) -> None:
    """`scan_database` for the session's report; a database it cannot reach is skipped."""
    # A test that broke the cluster fails on its own; its files are still scanned.
    with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        found_in_databases.extend(await scan_database(url, where))


class LogScanner(logging.Handler):
    """Scans every record as the production JSON formatter renders it; keeps findings only."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.findings: list[Finding] = []
        self.records = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        try:
            line = self.format(record)
        except Exception:  # a record this formatter cannot render is scanned as its message
            line = record.getMessage()
        if b"gp" in (data := line.encode("utf-8", "surrogateescape")) or _secrets:
            self.findings += find(data, f"log record of {record.name}")


def report(findings: Iterable[Finding]) -> str:
    lines = sorted({str(f) for f in findings})
    return f"{len(lines)} secret(s) found where none may be:\n  " + "\n  ".join(lines)
