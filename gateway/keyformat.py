"""The token format and its hashing: what a key is, before any database.

A key reads `gp_` + public id (12) + secret (28) + checksum (6), all base62 after the prefix:

- the public id is stored in clear and indexed: it finds the row in one lookup;
- the secret carries 28 × log2(62) ≈ 166 bits from `secrets`; only its argon2id hash is kept;
- the checksum is the CRC32 of everything before it, in base62 (GitHub-token style), so a
  mistyped or invented key is refused without touching the database, and secret scanners
  can recognise a real key.

CRC32 catches every error confined to 32 consecutive bits, so every single-character
change to a key is detected; base62 with 6 digits is injective over 32-bit values.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import zlib

import argon2

from .config import Argon2Config

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PUBLIC_ID_LENGTH = 12
SECRET_LENGTH = 28
CHECKSUM_LENGTH = 6


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


# Every two-digit base-62 number, so a checksum takes three divisions, not six: the
# checksum is computed on every request.
_BASE62_PAIRS = [a + b for a in BASE62 for b in BASE62]


def _checksum(body: str) -> str:
    value = zlib.crc32(body.encode())  # < 2**32 < 62**6: six digits always suffice
    value, low = divmod(value, 3844)
    high, middle = divmod(value, 3844)
    return _BASE62_PAIRS[high] + _BASE62_PAIRS[middle] + _BASE62_PAIRS[low]


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedKey:
    public_id: str
    secret: str


@dataclasses.dataclass(frozen=True, slots=True)
class KeyFormat:
    """One token family: API keys (`gp_`) and admin tokens share the layout."""

    prefix: str
    length: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        length = len(self.prefix) + PUBLIC_ID_LENGTH + SECRET_LENGTH + CHECKSUM_LENGTH
        object.__setattr__(self, "length", length)

    def generate(self, public_id: str | None = None) -> tuple[str, ParsedKey]:
        """A new key (or a new secret for `public_id`): the full key and its parts."""
        public_id = public_id or _random_base62(PUBLIC_ID_LENGTH)
        secret = _random_base62(SECRET_LENGTH)
        body = self.prefix + public_id + secret
        return body + _checksum(body), ParsedKey(public_id, secret)

    def parse(self, token: str) -> ParsedKey | None:
        """The parts of a well-formed key with a valid checksum, else None. No I/O."""
        if len(token) != self.length or not token.startswith(self.prefix):
            return None
        rest = token[len(self.prefix) :]
        if not (rest.isascii() and rest.isalnum()):  # ASCII letters and digits: base 62
            return None
        body, checksum = token[:-CHECKSUM_LENGTH], token[-CHECKSUM_LENGTH:]
        if _checksum(body) != checksum:
            return None
        return ParsedKey(rest[:PUBLIC_ID_LENGTH], rest[PUBLIC_ID_LENGTH:-CHECKSUM_LENGTH])

    def partial(self, token: str) -> str:
        """What "Copy" copies: identifies the key and its generation, never usable."""
        return f"{token[: len(self.prefix) + PUBLIC_ID_LENGTH]}…{token[-4:]}"


class Hasher:
    """argon2id with OWASP's parameters by default (m=19456 KiB, t=2, p=1)."""

    def __init__(self, config: Argon2Config) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=config.time_cost,
            memory_cost=config.memory_kib,
            parallelism=config.parallelism,
            type=argon2.Type.ID,
        )

    def hash(self, secret: str) -> str:
        return self._hasher.hash(secret)

    def verify(self, secret_hash: str, secret: str) -> bool:
        try:
            return self._hasher.verify(secret_hash, secret)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    async def hash_async(self, secret: str) -> str:
        # argon2-cffi releases the GIL: hashing in a thread keeps the loop responsive.
        return await asyncio.get_running_loop().run_in_executor(None, self.hash, secret)
