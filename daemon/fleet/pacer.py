"""Pacing a room's requests to its share of the account.

The room's share (daemon/fleet/share.py) fills two buckets, requests and tokens, at its
rate; each holds `BURST_S` of it (at least one request). The extra caption languages
draw from two more buckets at their part of the share as well. A request takes one
request and its estimated tokens when the buckets hold them (`settle()` corrects the
tokens once the service reports its usage); until then it waits — speech first, in
order — at most `SPEECH_WAIT_S` (speech) or `EXTRA_WAIT_S` (an extra language), and is
shed after that, or at once when it cannot go in time. A 429, the room's own or another
room's of the account, holds every request for its Retry-After. A new pacer holds one
request: its share is not known yet.

The pacer also measures what the room tells the others: its demand (every request
asked for in the last minute, sent or shed, per minute of its age up to a minute), what
it sent, what it shed and its 429s.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Literal

from daemon.fleet.share import Amount, Demand, Share

Kind = Literal["speech", "extra"]
WINDOW_S = 60.0
MIN_AGE_S = 10.0  # a younger room's demand is its asks per this many seconds
BURST_S = 15.0
SPEECH_WAIT_S = 8.0
EXTRA_WAIT_S = 2.0
POLL_S = 0.25  # a waiting request looks again this often (shares and holds change)
MIN_SLEEP_S = 0.01
MAX_KEPT = 10_000  # entries of a window (the window is pruned first)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Bucket:
    """Fills at `per_minute` up to `capacity`; may go below zero (tokens owed)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._at = clock()
        self._rate = 0.0  # per second
        self._capacity = 0.0
        self.level = 0.0

    def set(self, per_minute: float, capacity: float) -> None:
        self._refill()
        self._rate = max(0.0, per_minute) / 60.0
        self._capacity = max(0.0, capacity)
        self.level = min(self.level, self._capacity)

    def wait_s(self, need: float) -> float:
        """Seconds until the bucket holds `need` (at most its capacity); inf if never."""
        self._refill()
        if self._capacity <= 0:
            return math.inf
        need = min(need, self._capacity)
        if self.level >= need - 1e-9:
            return 0.0
        return (need - self.level) / self._rate if self._rate > 0 else math.inf

    def take(self, amount: float) -> None:
        self._refill()
        self.level = min(self._capacity, self.level - amount)

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self._capacity, self.level + (now - self._at) * self._rate)
        self._at = now


class Window:
    """Amounts of the last `WINDOW_S` seconds."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._items: deque[tuple[float, float, float]] = deque(maxlen=MAX_KEPT)

    def add(self, requests: float, tokens: float = 0.0) -> None:
        self._items.append((self._clock(), requests, tokens))

    def total(self) -> Amount:
        horizon = self._clock() - WINDOW_S
        while self._items and self._items[0][0] <= horizon:
            self._items.popleft()
        return Amount(sum(i[1] for i in self._items), sum(i[2] for i in self._items))


class Pacer:
    """One room's requests against its share; see the module docstring."""

    def __init__(
        self, limits: Amount, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._started = clock()
        # (requests, tokens): "total" for every request, "extra" for the extra languages too
        self._buckets = {name: (Bucket(clock), Bucket(clock)) for name in ("total", "extra")}
        self._share = Share.alone(limits)
        self._apply(self._share)
        # One request to start with (its share is not known yet); the rest accrues.
        requests, tokens = self._buckets["total"]
        requests.level = 1.0
        tokens.level = limits.tokens / limits.requests
        self._held_until = 0.0
        self._hold_why = ""
        self._asks = {"speech": Window(clock), "extra": Window(clock)}
        self._shed = {"speech": Window(clock), "extra": Window(clock)}
        self._sent = Window(clock)
        self._rejected = Window(clock)
        self._queue: deque[object] = deque()  # speech requests waiting, oldest first

    # -- the share ------------------------------------------------------------------------

    @property
    def share(self) -> Share:
        return self._share

    def set_share(self, share: Share) -> None:
        self._share = share
        self._apply(share)

    def _apply(self, share: Share) -> None:
        for name, amount in (("total", share.total), ("extra", share.extra)):
            requests, tokens = self._buckets[name]
            burst = amount.times(BURST_S / 60.0)
            requests.set(amount.requests, max(1.0, burst.requests) if amount.requests > 0 else 0)
            tokens.set(amount.tokens, burst.tokens)

    # -- 429s -----------------------------------------------------------------------------

    def rejected(self, retry_after_s: float) -> None:
        """The service answered this room 429: hold, and count it (the fleet's)."""
        self._rejected.add(1)
        self.hold(retry_after_s, "the service throttles the account (429)")

    def hold(self, seconds: float, why: str) -> None:
        """Send nothing for `seconds` (a 429 of this room or of another one)."""
        until = self._clock() + max(0.0, seconds)
        if until > self._held_until:
            self._held_until, self._hold_why = until, why

    def hold_left(self) -> float:
        return max(0.0, self._held_until - self._clock())

    # -- requests -------------------------------------------------------------------------

    async def admit(self, kind: Kind, tokens: float) -> str:
        """Wait for the room's share; "" to send now, else why it is shed."""
        now = self._clock()
        self._asks[kind].add(1, tokens)
        deadline = now + (SPEECH_WAIT_S if kind == "speech" else EXTRA_WAIT_S)
        turn = object()
        if kind == "speech":
            self._queue.append(turn)
        try:
            while True:
                why, wait_s = self._blocked(kind, tokens, turn)
                if not why:
                    self._take(kind, tokens)
                    return ""
                if self._clock() + wait_s > deadline:
                    self._shed[kind].add(1, tokens)
                    return why
                await self._sleep(min(max(wait_s, MIN_SLEEP_S), POLL_S))
        finally:
            if kind == "speech":
                self._queue.remove(turn)

    def settle(self, kind: Kind, estimated: float, actual: float) -> None:
        """The service reported the tokens a request used (`estimated` was taken)."""
        owed = actual - estimated
        for name in _buckets_of(kind):
            self._buckets[name][1].take(owed)
        self._sent.add(0, owed)

    def _blocked(self, kind: Kind, tokens: float, turn: object) -> tuple[str, float]:
        """Why the request cannot go now, and in how many seconds it may ("" when it may)."""
        if (left := self.hold_left()) > 0:
            return f"{self._hold_why}, {left:.1f} s more", left
        if kind == "extra" and self._queue:
            return "the room's speech goes first", POLL_S
        if kind == "speech" and self._queue[0] is not turn:
            return "waiting for the room's share behind its earlier speech", POLL_S
        wait_s = 0.0
        for name in _buckets_of(kind):
            requests, token_bucket = self._buckets[name]
            wait_s = max(wait_s, requests.wait_s(1.0), token_bucket.wait_s(tokens))
        if wait_s == 0:
            return "", 0.0
        return self._why_waiting(kind), wait_s

    def _why_waiting(self, kind: Kind) -> str:
        share = self._share
        if kind == "extra" and share.extra.requests <= 0:
            return (
                "extra caption languages paused: the account goes to the speech of its "
                f"{share.rooms} room(s)"
            )
        amount = share.extra if kind == "extra" else share.total
        return (
            f"the room's share of the account is used ({amount.requests:.1f} requests, "
            f"{amount.tokens:.0f} tokens a minute for {kind})"
        )

    def _take(self, kind: Kind, tokens: float) -> None:
        for name in _buckets_of(kind):
            requests, token_bucket = self._buckets[name]
            requests.take(1.0)
            token_bucket.take(tokens)
        self._sent.add(1, tokens)

    # -- figures --------------------------------------------------------------------------

    def demand(self) -> Demand:
        """What the room asked for, a minute (module docstring)."""
        span = min(WINDOW_S, max(MIN_AGE_S, self._clock() - self._started))
        per_minute = 60.0 / span
        return Demand(
            self._asks["speech"].total().times(per_minute),
            self._asks["extra"].total().times(per_minute),
        )

    def sent(self) -> Amount:
        """Requests and tokens sent in the last minute."""
        return self._sent.total()

    def shed(self) -> dict[str, int]:
        """Requests shed in the last minute, by kind."""
        return {kind: round(window.total().requests) for kind, window in self._shed.items()}

    def rejected_per_min(self) -> int:
        """This room's 429s in the last minute."""
        return round(self._rejected.total().requests)


def _buckets_of(kind: Kind) -> tuple[str, ...]:
    return ("total", "extra") if kind == "extra" else ("total",)
