"""API keys: the format and its checksum, argon2id hashing, and the key store.

The format tests build `KeyFormat` alone and never open a database: `parse` has no
connection to query, so every rejection they show is made "without touching the database"
by construction (SPEC §2).
"""

from __future__ import annotations

import math
import re
import string
import uuid

import asyncpg
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.accounts import ADMIN_TOKEN_FORMAT
from gateway.config import Argon2Config
from gateway.keyformat import BASE62, PUBLIC_ID_LENGTH, SECRET_LENGTH, Hasher, KeyFormat

from .conftest import Seed

API_KEYS = KeyFormat("gp_")
PRINTABLE_ASCII = [chr(c) for c in range(0x20, 0x7F)]
# Look-alikes a person or a broken client might type: none of them is base62.
LOOK_ALIKES = ["é", "０", "Ａ", "ı", "\u200b", "\t", "\n", "\x00"]

public_ids = st.text(alphabet=BASE62, min_size=PUBLIC_ID_LENGTH, max_size=PUBLIC_ID_LENGTH)
prefixes = st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=8)


def new_key(public_id: str | None = None) -> str:
    key, _ = API_KEYS.generate(public_id)
    return key


# -- the format (no database anywhere) ---------------------------------------------------


@given(public_ids)
def test_generated_key_parses_back_to_its_parts(public_id: str) -> None:
    """`parse(generate())` returns the same public id and secret."""
    key, parts = API_KEYS.generate(public_id)
    assert parts.public_id == public_id
    assert API_KEYS.parse(key) == parts


@given(prefixes)
def test_generated_key_has_the_documented_shape(prefix: str) -> None:
    """Prefix, then base62 only, fixed length, secret of at least 160 bits."""
    key_format = KeyFormat(prefix)
    key, parts = key_format.generate()
    assert key.startswith(prefix)
    assert re.fullmatch(r"[A-Za-z0-9_]+", key)
    assert re.fullmatch(r"[A-Za-z0-9]+", key[len(prefix) :])
    assert len(key) == key_format.length == len(prefix) + 12 + 28 + 6
    assert len(parts.public_id) == PUBLIC_ID_LENGTH
    assert len(parts.secret) == SECRET_LENGTH
    assert key[len(prefix) : len(prefix) + PUBLIC_ID_LENGTH + SECRET_LENGTH] == (
        parts.public_id + parts.secret
    )


def test_secret_carries_at_least_160_bits() -> None:
    """28 base62 characters are about 166 bits."""
    assert len(BASE62) == 62
    assert SECRET_LENGTH * math.log2(len(BASE62)) >= 160


def test_generated_keys_are_distinct() -> None:
    """Fresh public ids and secrets for every key."""
    keys = [API_KEYS.generate() for _ in range(1000)]
    assert len({parts.public_id for _, parts in keys}) == 1000
    assert len({parts.secret for _, parts in keys}) == 1000


def test_regenerated_key_keeps_the_public_id_with_a_new_secret() -> None:
    """`generate(public_id)` is the same key id with a new secret."""
    _, parts = API_KEYS.generate()
    again, new_parts = API_KEYS.generate(parts.public_id)
    assert new_parts.public_id == parts.public_id
    assert new_parts.secret != parts.secret
    assert API_KEYS.parse(again) == new_parts


@pytest.mark.parametrize("key_format", [API_KEYS, ADMIN_TOKEN_FORMAT], ids=["gp_", "gpa_"])
def test_every_single_character_change_is_rejected(key_format: KeyFormat) -> None:
    """All positions × all other printable ASCII characters (and look-alikes): none parses."""
    for _ in range(3):
        key, _parts = key_format.generate()
        for position, original in enumerate(key):
            for replacement in PRINTABLE_ASCII + LOOK_ALIKES:
                if replacement == original:
                    continue
                changed = key[:position] + replacement + key[position + 1 :]
                assert key_format.parse(changed) is None, (position, replacement)


@given(public_ids, st.data())
def test_random_single_character_change_is_rejected(public_id: str, data: st.DataObject) -> None:
    """Any one character replaced by any other character: the checksum or charset refuses it."""
    key = new_key(public_id)
    position = data.draw(st.integers(0, len(key) - 1))
    replacement = data.draw(st.characters().filter(lambda c: c != key[position]))
    changed = key[:position] + replacement + key[position + 1 :]
    assert API_KEYS.parse(changed) is None


@given(public_ids, st.data())
def test_two_swapped_characters_are_rejected(public_id: str, data: st.DataObject) -> None:
    """Transposed neighbours (a common typo) do not parse."""
    key = new_key(public_id)
    position = data.draw(st.integers(len("gp_"), len(key) - 2))
    assume(key[position] != key[position + 1])
    swapped = key[:position] + key[position + 1] + key[position] + key[position + 2 :]
    assert API_KEYS.parse(swapped) is None


@given(public_ids)
def test_every_truncation_is_rejected(public_id: str) -> None:
    """Every proper prefix of a key, down to the empty string, is refused."""
    key = new_key(public_id)
    for length in range(len(key)):
        assert API_KEYS.parse(key[:length]) is None


@given(public_ids, st.text(min_size=1, max_size=60))
def test_every_extension_is_rejected(public_id: str, extra: str) -> None:
    """A key with anything appended (or prepended) is refused."""
    key = new_key(public_id)
    assert API_KEYS.parse(key + extra) is None
    assert API_KEYS.parse(extra + key) is None


@given(st.text(max_size=80))
def test_made_up_strings_are_rejected(token: str) -> None:
    """Arbitrary text never parses (CRC32 makes a lucky guess a 1 in 2³² event)."""
    assert API_KEYS.parse(token) is None


@given(public_ids, st.text(alphabet=BASE62, min_size=6, max_size=6))
def test_made_up_checksum_is_rejected(public_id: str, checksum: str) -> None:
    """Right prefix, length and alphabet, but any other checksum: refused."""
    key = new_key(public_id)
    assume(checksum != key[-6:])
    assert API_KEYS.parse(key[:-6] + checksum) is None


@pytest.mark.parametrize(
    "key",
    [
        "gp_AAAAAAAAAAAAbbbbbbbbbbbbbbbbbbbbbbbbbbbb4NZ3UB",
        "gp_0123456789ABcdefghijklmnopqrstuvwxyz01230dankJ",
    ],
)
def test_keys_issued_by_earlier_versions_still_parse(key: str) -> None:
    """The checksum is part of every key already handed out: its arithmetic must never
    change (these two were made by the first version's digit-by-digit base 62)."""
    parsed = API_KEYS.parse(key)
    assert parsed is not None
    assert parsed.public_id == key[3:15]


@given(public_ids)
def test_partial_key_is_prefix_public_id_ellipsis_last_four(public_id: str) -> None:
    """`partial()` is prefix + public id + '…' + last 4 characters, and never parses."""
    key = new_key(public_id)
    partial = API_KEYS.partial(key)
    assert partial == f"gp_{public_id}…{key[-4:]}"
    assert API_KEYS.parse(partial) is None
    assert API_KEYS.parse(partial.replace("…", "")) is None


@settings(max_examples=200)
@given(prefixes, prefixes)
def test_formats_with_different_prefixes_never_cross_parse(first: str, second: str) -> None:
    """A key of one family (e.g. `gp_` API keys) is never accepted as another (`gpa_` tokens)."""
    assume(first != second)
    a, b = KeyFormat(first), KeyFormat(second)
    key_a, _ = a.generate()
    key_b, _ = b.generate()
    assert a.parse(key_a) is not None
    assert b.parse(key_b) is not None
    assert b.parse(key_a) is None
    assert a.parse(key_b) is None


def test_api_keys_and_admin_tokens_never_cross_parse() -> None:
    """`gp_` keys and `gpa_` admin tokens are distinct families."""
    for _ in range(100):
        key, _ = API_KEYS.generate()
        token, _ = ADMIN_TOKEN_FORMAT.generate()
        assert ADMIN_TOKEN_FORMAT.parse(key) is None
        assert API_KEYS.parse(token) is None


# -- argon2id ------------------------------------------------------------------------------


def test_default_hash_uses_owasp_argon2id_parameters() -> None:
    """By default the hash is argon2id, version 19, m=19456 KiB, t=2, p=1."""
    hashed = Hasher(Argon2Config()).hash("a secret")
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_configured_argon2_parameters_are_used() -> None:
    """The parameters in `keys.argon2` shape new hashes."""
    hashed = Hasher(Argon2Config(time_cost=1, memory_kib=1024, parallelism=2)).hash("s")
    assert hashed.startswith("$argon2id$v=19$m=1024,t=1,p=2$")


def test_same_secret_hashes_differently_each_time() -> None:
    """Every hash has its own salt."""
    hasher = Hasher(Argon2Config(time_cost=1, memory_kib=1024))
    assert hasher.hash("same") != hasher.hash("same")


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        ("correct secret", True),
        ("correct secreT", False),
        ("correct secret ", False),
        ("", False),
    ],
)
def test_verify_accepts_only_the_right_secret(candidate: str, expected: bool) -> None:
    """`verify` is true for the hashed secret only."""
    hasher = Hasher(Argon2Config())
    assert hasher.verify(hasher.hash("correct secret"), candidate) is expected


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "not a hash",
        "$argon2id$",
        "$argon2id$v=19$m=19456,t=2,p=1$",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$AAAA",
        "$2b$12$abcdefghijklmnopqrstuv",
    ],
)
def test_verify_against_garbage_hash_is_false(garbage: str) -> None:
    """A malformed stored hash is a failed verification, never an exception."""
    assert Hasher(Argon2Config()).verify(garbage, "anything") is False


async def test_hash_async_matches_hash() -> None:
    """Hashing off the event loop produces a hash `verify` accepts."""
    hasher = Hasher(Argon2Config(time_cost=1, memory_kib=1024))
    assert hasher.verify(await hasher.hash_async("s3cret"), "s3cret")


# -- the key store ----------------------------------------------------------------------


async def dump_database(conn: asyncpg.Connection) -> str:
    """Every row of every table in the public schema, as text."""
    tables = await conn.fetch(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
    )
    assert {t["table_name"] for t in tables} >= {"api_keys", "members", "audit_log"}
    rows = []
    for table in tables:
        name = table["table_name"].replace('"', '""')
        rows += await conn.fetch(f'SELECT t::text AS row FROM "{name}" t')  # noqa: S608
    return "\n".join(r["row"] for r in rows)


async def key_row(conn: asyncpg.Connection, key_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
    assert row is not None
    return row


async def test_create_stores_only_a_hash_and_the_partial_key(
    seed: Seed, db: asyncpg.Connection
) -> None:
    """Neither the full key nor its secret is written anywhere in the database."""
    account = await seed.account()
    new = await seed.key(account, name="Sheets export")
    parts = seed.store.format.parse(new.key)
    assert parts is not None
    row = await key_row(db, new.id)
    assert row["public_id"] == parts.public_id == new.public_id
    assert row["partial_key"] == new.partial_key == seed.store.format.partial(new.key)
    assert row["secret_hash"].startswith("$argon2id$")
    assert seed.hasher.verify(row["secret_hash"], parts.secret)
    assert row["account_id"] == account.account_id
    assert row["name"] == "Sheets export"
    dump = await dump_database(db)
    assert parts.public_id in dump  # the dump does contain the key's row
    assert new.key not in dump
    assert parts.secret not in dump
    assert new.key[len("gp_") + PUBLIC_ID_LENGTH :] not in dump


async def test_lookup_returns_the_live_key_by_public_id(seed: Seed) -> None:
    """`lookup` finds the key by its public id with its settings."""
    account = await seed.account()
    new = await seed.key(
        account, permissions=["reports:read"], ip_allowlist=["10.0.0.0/8"], rate_limit_per_minute=5
    )
    record = await seed.store.lookup(new.public_id)
    assert record is not None
    assert (record.id, record.account_id) == (new.id, account.account_id)
    assert record.permissions == frozenset({"reports:read"})
    assert [str(n) for n in record.ip_allowlist] == ["10.0.0.0/8"]
    assert record.rate_limit_per_minute == 5
    assert record.enabled is True
    assert await seed.store.lookup("0" * PUBLIC_ID_LENGTH) is None


async def test_regenerate_keeps_identity_and_replaces_the_secret(
    seed: Seed, db: asyncpg.Connection
) -> None:
    """Same id, public id and name; new secret, new partial key, regenerated_at set."""
    account = await seed.account()
    old = await seed.key(account, name="Zapier")
    before = await key_row(db, old.id)
    assert before["regenerated_at"] is None
    new = await seed.store.regenerate(account.account_id, old.id)
    assert new is not None
    after = await key_row(db, old.id)
    assert (new.id, new.public_id) == (old.id, old.public_id)
    assert (after["id"], after["public_id"], after["name"]) == (old.id, old.public_id, "Zapier")
    assert new.key != old.key
    assert new.partial_key.startswith(f"gp_{old.public_id}…")
    assert new.partial_key != old.partial_key
    assert after["partial_key"] == new.partial_key
    assert after["regenerated_at"] is not None
    assert after["secret_created_at"] > before["secret_created_at"]
    new_parts = seed.store.format.parse(new.key)
    old_parts = seed.store.format.parse(old.key)
    assert new_parts is not None and old_parts is not None
    assert seed.hasher.verify(after["secret_hash"], new_parts.secret)
    assert not seed.hasher.verify(after["secret_hash"], old_parts.secret)
    assert after["previous_secret_hash"] is None
    assert after["previous_secret_expires_at"] is None
    dump = await dump_database(db)
    assert new.key not in dump and new_parts.secret not in dump


async def test_regenerate_with_grace_keeps_the_previous_hash_until_expiry(
    seed: Seed, db: asyncpg.Connection
) -> None:
    """`grace_seconds` keeps the old hash, with an expiry that far in the future."""
    account = await seed.account()
    old = await seed.key(account)
    old_hash = (await key_row(db, old.id))["secret_hash"]
    new = await seed.store.regenerate(account.account_id, old.id, grace_seconds=300)
    assert new is not None
    row = await key_row(db, old.id)
    assert row["previous_secret_hash"] == old_hash
    now = await db.fetchval("SELECT now()")
    remaining = (row["previous_secret_expires_at"] - now).total_seconds()
    assert 290 < remaining <= 300
    record = await seed.store.lookup(old.public_id)
    assert record is not None
    assert record.candidate_hashes(now) == [row["secret_hash"], old_hash]
    assert record.accepts_hash(old_hash, now)
    later = row["previous_secret_expires_at"]
    assert not record.accepts_hash(old_hash, later)
    assert record.candidate_hashes(later) == [row["secret_hash"]]


async def test_regenerate_without_grace_forgets_an_earlier_grace(
    seed: Seed, db: asyncpg.Connection
) -> None:
    """A second regenerate with no grace drops the previous hash at once."""
    account = await seed.account()
    key = await seed.key(account)
    await seed.store.regenerate(account.account_id, key.id, grace_seconds=300)
    await seed.store.regenerate(account.account_id, key.id)
    row = await key_row(db, key.id)
    assert row["previous_secret_hash"] is None
    assert row["previous_secret_expires_at"] is None


async def test_delete_erases_the_hash_and_hides_the_key(seed: Seed, db: asyncpg.Connection) -> None:
    """Delete sets deleted_at, nulls every hash; the key is gone for lookups and changes."""
    account = await seed.account()
    key = await seed.key(account)
    await seed.store.regenerate(account.account_id, key.id, grace_seconds=300)
    assert await seed.store.delete(account.account_id, key.id) is True
    row = await key_row(db, key.id)
    assert row["deleted_at"] is not None
    assert row["secret_hash"] is None
    assert row["previous_secret_hash"] is None
    assert row["previous_secret_expires_at"] is None
    assert await seed.store.lookup(key.public_id) is None
    assert await seed.store.delete(account.account_id, key.id) is False
    assert await seed.store.regenerate(account.account_id, key.id) is None
    assert await seed.store.set_enabled(account.account_id, key.id, False) is False


@pytest.mark.parametrize("action", ["regenerate", "delete", "set_enabled"])
async def test_another_accounts_key_cannot_be_changed(
    seed: Seed, db: asyncpg.Connection, action: str
) -> None:
    """Regenerate, delete or disable with another account's id changes nothing."""
    owner = await seed.account("Owner account")
    intruder = await seed.account("Intruder account")
    key = await seed.key(owner)
    before = await key_row(db, key.id)
    if action == "regenerate":
        assert await seed.store.regenerate(intruder.account_id, key.id) is None
    elif action == "delete":
        assert await seed.store.delete(intruder.account_id, key.id) is False
    else:
        assert await seed.store.set_enabled(intruder.account_id, key.id, False) is False
    assert await key_row(db, key.id) == before
    assert await seed.store.lookup(key.public_id) is not None


async def test_unknown_key_id_cannot_be_changed(seed: Seed) -> None:
    """A key id that does not exist: regenerate None, delete False."""
    account = await seed.account()
    missing = uuid.uuid4()
    assert await seed.store.regenerate(account.account_id, missing) is None
    assert await seed.store.delete(account.account_id, missing) is False
