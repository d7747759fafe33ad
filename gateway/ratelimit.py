"""The rate-limit seam (SPEC §4). The pipeline asks a `RateLimiter` once per authenticated
request; the answer carries the headers for the response, or a 429.

`Unlimited` admits everything and adds no headers: the per-minute / per-day limiter with
its shared Postgres counters plugs in here without touching the pipeline.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from .keys import KeyRecord


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    headers: dict[str, str]
    window: str | None = None  # the exhausted window when not allowed
    retry_after: int = 0


ADMIT = Decision(allowed=True, headers={})


class RateLimiter(Protocol):
    def check(self, key: KeyRecord) -> Decision:
        """Count one request for `key` and say whether it may pass."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Unlimited:
    def check(self, key: KeyRecord) -> Decision:
        return ADMIT

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
