"""The records the key store returns, and the row mapping that builds them.

`KeyRecord` is what the proxy needs to authenticate and authorise one key (cached per
process); `KeyInfo` is the admin API's view of a key; `NewKey` is a key as just created,
the only time the full key exists.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import ipaddress
import uuid

import asyncpg

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the gateway needs to authenticate and authorise one key."""

    id: uuid.UUID
    account_id: uuid.UUID
    public_id: str
    secret_hash: str
    previous_secret_hash: str | None
    previous_secret_expires_at: dt.datetime | None
    permissions: frozenset[str]
    ip_allowlist: tuple[IPNetwork, ...]
    rate_limit_per_minute: int | None
    rate_limit_per_day: int | None
    expires_at: dt.datetime | None
    enabled: bool
    # The ids as text, made once per key rather than per request (~1 µs each): the access
    # log and the identity headers use them.
    id_text: str = dataclasses.field(init=False, repr=False, compare=False)
    account_id_text: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: fields made here are set once, like the others
        set_(self, "id_text", str(self.id))
        set_(self, "account_id_text", str(self.account_id))

    def accepts_hash(self, secret_hash: str, now: dt.datetime) -> bool:
        """Is a secret verified against `secret_hash` still a valid secret of this key?"""
        if secret_hash == self.secret_hash:
            return True
        return (
            secret_hash == self.previous_secret_hash
            and self.previous_secret_expires_at is not None
            and now < self.previous_secret_expires_at
        )

    def candidate_hashes(self, now: dt.datetime) -> list[str]:
        hashes = [self.secret_hash]
        if self.previous_secret_hash and self.accepts_hash(self.previous_secret_hash, now):
            hashes.append(self.previous_secret_hash)
        return hashes


RECORD_COLUMNS = """
    id, account_id, public_id, secret_hash, previous_secret_hash, previous_secret_expires_at,
    permissions, ip_allowlist, rate_limit_per_minute, rate_limit_per_day, expires_at, enabled
"""


@functools.lru_cache(maxsize=1024)
def permission_set(names: tuple[str, ...]) -> frozenset[str]:
    """One shared set per distinct list: keys have a handful between them, and a set of
    one of its own per cached key made a key take 1,389 B; shared, 631 B (make bench)."""
    return frozenset(names)


def key_record(row: asyncpg.Record) -> KeyRecord:
    """A `KeyRecord` from a row selected with `RECORD_COLUMNS`."""
    return KeyRecord(
        id=row["id"],
        account_id=row["account_id"],
        public_id=row["public_id"],
        secret_hash=row["secret_hash"],
        previous_secret_hash=row["previous_secret_hash"],
        previous_secret_expires_at=row["previous_secret_expires_at"],
        permissions=permission_set(tuple(row["permissions"])),
        ip_allowlist=tuple(row["ip_allowlist"]),
        rate_limit_per_minute=row["rate_limit_per_minute"],
        rate_limit_per_day=row["rate_limit_per_day"],
        expires_at=row["expires_at"],
        enabled=row["enabled"],
    )


@dataclasses.dataclass(frozen=True, slots=True)
class KeyInfo:
    """A live key as the admin API shows it: every setting, no hash."""

    id: uuid.UUID
    account_id: uuid.UUID
    public_id: str
    name: str
    partial_key: str
    created_at: dt.datetime
    created_by: uuid.UUID | None
    secret_created_at: dt.datetime
    regenerated_at: dt.datetime | None
    last_used_at: dt.datetime | None
    expires_at: dt.datetime | None
    enabled: bool
    permissions: tuple[str, ...]
    ip_allowlist: tuple[str, ...]
    rate_limit_per_minute: int | None
    rate_limit_per_day: int | None
    leaked_at: dt.datetime | None = None
    leak_url: str | None = None


INFO_COLUMNS = """
    id, account_id, public_id, name, partial_key, created_at, created_by, secret_created_at,
    regenerated_at, expires_at, enabled, permissions, ip_allowlist,
    rate_limit_per_minute, rate_limit_per_day, leaked_at, leak_url,
    (SELECT l.last_used_at FROM api_key_last_used l WHERE l.key_id = api_keys.id)
        AS last_used_at
"""


def key_info(row: asyncpg.Record) -> KeyInfo:
    return KeyInfo(
        id=row["id"],
        account_id=row["account_id"],
        public_id=row["public_id"],
        name=row["name"],
        partial_key=row["partial_key"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        secret_created_at=row["secret_created_at"],
        regenerated_at=row["regenerated_at"],
        last_used_at=row["last_used_at"],
        expires_at=row["expires_at"],
        enabled=row["enabled"],
        permissions=tuple(sorted(row["permissions"])),
        ip_allowlist=tuple(str(network) for network in row["ip_allowlist"]),
        rate_limit_per_minute=row["rate_limit_per_minute"],
        rate_limit_per_day=row["rate_limit_per_day"],
        leaked_at=row["leaked_at"],
        leak_url=row["leak_url"],
    )


@dataclasses.dataclass(frozen=True, slots=True)
class NewKey:
    """A key as just created or regenerated: the only time `key` exists."""

    id: uuid.UUID
    public_id: str
    partial_key: str
    key: str
