"""One key's rate-limit windows in one process, and the headers they produce.

The sliding minute: a request made during second `s` counts until second `s + 60`, so no
60 seconds admit more than the limit, and a 429's Retry-After is the exact number of
whole seconds until enough of them have expired. The day is the UTC day. How the counts
of several processes meet is `gateway.ratelimit`'s business.
"""

from __future__ import annotations

import functools
import math

from .counters import DAY, MINUTE, minute_from


class Windows:
    """One key's counts in this process; `seconds` holds [second, count, synced] lists for
    the last minute, `left` those that left it but whose Postgres bucket is still read."""

    __slots__ = (
        "day",
        "left",
        "others_day",
        "others_minute",
        "others_second",
        "own_day",
        "own_minute",
        "seconds",
        "synced_day",
    )

    def __init__(self, day: int) -> None:
        self.seconds: list[list[int]] = []
        self.left: list[list[int]] = []
        self.own_minute = 0
        self.day = day
        self.own_day = 0
        self.synced_day = 0
        # Other processes (and earlier runs of this one) at the last sync: their minute
        # count all falls within the 60 seconds before `others_second`.
        self.others_minute = 0
        self.others_second = 0
        self.others_day = 0

    def advance(self, second: int, day: int) -> None:
        """Forget the seconds that left the minute, and a finished day."""
        seconds = self.seconds
        if seconds and seconds[0][0] <= second - MINUTE:
            gone = 0
            while gone < len(seconds) and seconds[gone][0] <= second - MINUTE:
                self.own_minute -= seconds[gone][1]
                gone += 1
            self.left += seconds[:gone]
            del seconds[:gone]
        left = self.left
        if left:
            first = minute_from(second)
            unread = 0
            while unread < len(left) and left[unread][0] < first:
                unread += 1
            del left[:unread]
        if self.others_minute and second >= self.others_second + MINUTE:
            self.others_minute = 0
        if day > self.day:
            self.day = day
            self.own_day = self.synced_day = self.others_day = 0

    def idle(self, second: int) -> bool:
        """Nothing counted here (nor learnt of the others) counts at `second` any more:
        not in the minute, nor in the buckets a sync reads."""
        newest = self.seconds or self.left
        if newest and newest[-1][0] >= minute_from(second):
            return False
        return not self.others_minute or second >= self.others_second + MINUTE

    def own_in_buckets(self) -> int:
        """This process's requests in Postgres's buckets of the minute (after `advance`):
        the minute's, and the written part of those that left it."""
        return self.own_minute + sum(entry[2] for entry in self.left)

    def count(self, second: int) -> None:
        seconds = self.seconds
        if seconds and seconds[-1][0] >= second:  # this second (or the clock stepped back)
            seconds[-1][1] += 1
        else:
            seconds.append([second, 1, 0])
        self.own_minute += 1
        self.own_day += 1

    def minute_frees_at(self, limit: int) -> int:
        """The first second at which fewer than `limit` requests count in the minute."""
        used = self.own_minute + self.others_minute
        frees = [(s + MINUTE, n) for s, n, _ in self.seconds]
        if self.others_minute:
            frees.append((self.others_second + MINUTE, self.others_minute))
        frees.sort()
        for at, n in frees:
            used -= n
            if used < limit:
                return at
        return frees[-1][0] if frees else 0

    def minute_next_free(self) -> int | None:
        """The second at which the oldest request in the minute stops counting."""
        own = self.seconds[0][0] if self.seconds else None
        others = self.others_second if self.others_minute else None
        if own is None or (others is not None and others < own):
            own = others
        return None if own is None else own + MINUTE


def rate_limit_headers(
    windows: Windows, now: float, per_minute: int, minute_used: int, per_day: int, day_used: int
) -> tuple[dict[str, str], str, int]:
    """The response headers, and the tightest window with its seconds to free a request."""
    minute_left = max(0, per_minute - minute_used)
    day_left = max(0, per_day - day_used)
    if minute_left:
        frees_at = windows.minute_next_free()
        minute_reset = 0 if frees_at is None else max(1, math.ceil(frees_at - now))
    else:
        minute_reset = max(1, math.ceil(windows.minute_frees_at(per_minute) - now))
    day_reset = max(1, math.ceil(windows.day + DAY - now))
    # The tightest window: fewest requests left; on a tie, the longer wait.
    if minute_left < day_left or (minute_left == day_left and minute_reset >= day_reset):
        window, limit, left, reset = "minute", per_minute, minute_left, minute_reset
    else:
        window, limit, left, reset = "day", per_day, day_left, day_reset
    headers = {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(left),
        "X-RateLimit-Reset": str(reset),
        "RateLimit-Policy": policy(per_minute, per_day),
        "RateLimit": (
            f'"minute";r={minute_left};t={minute_reset}, "day";r={day_left};t={day_reset}'
        ),
    }
    return headers, window, reset


@functools.lru_cache(maxsize=1024)
def policy(per_minute: int, per_day: int) -> str:
    return f'"minute";q={per_minute};w={MINUTE}, "day";q={per_day};w={DAY}'
