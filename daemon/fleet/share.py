"""Each room's share of one account's requests and tokens per minute.

What it does for the rooms: docs/mqtt.md, "One account, many rooms". Every room of an
account runs `allocate()` on the demands it sees and paces itself to its own part:

- `capacity()`: the smallest limits of the live rooms × `HEADROOM` × (1 − `REJECTED_STEP`
  per 429 of the account in the last minute, at least `MIN_FACTOR`).
- Speech first: the largest fraction (at most 1) of every room's speech demand plus
  `FLOOR` that both the requests and the tokens allow; then the extra languages, the
  same way from what speech leaves; the rest spread equally over the rooms (to the
  extra languages only while neither fraction is short).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

HEADROOM = 0.9
REJECTED_STEP = 0.1
MIN_FACTOR = 0.5


@dataclass(frozen=True, slots=True)
class Amount:
    """Requests and tokens (per minute, where it is a rate)."""

    requests: float = 0.0
    tokens: float = 0.0

    def __add__(self, other: Amount) -> Amount:
        return Amount(self.requests + other.requests, self.tokens + other.tokens)

    def __sub__(self, other: Amount) -> Amount:
        return Amount(self.requests - other.requests, self.tokens - other.tokens)

    def times(self, factor: float) -> Amount:
        return Amount(self.requests * factor, self.tokens * factor)

    def at_least(self, floor: float) -> Amount:
        return Amount(max(floor, self.requests), max(floor, self.tokens))


# A room's speech weighs at least this much (half a short clip a minute).
FLOOR = Amount(0.5, 70.0)


@dataclass(frozen=True, slots=True)
class Demand:
    """What a room asks for a minute: its speech, and its extra caption languages."""

    speech: Amount = Amount()
    extra: Amount = Amount()


@dataclass(frozen=True, slots=True)
class Share:
    """A room's part of the account, a minute."""

    total: Amount  # what the room may send
    extra: Amount  # of which its extra caption languages may use
    speech_fraction: float  # of every room's speech demand, what the fleet can send
    extra_fraction: float  # the same for the extra languages
    rooms: int
    capacity: Amount  # the account's, as this room computed it

    @classmethod
    def alone(cls, limits: Amount) -> Share:
        """All of the account (a room that knows of no other)."""
        capacity = limits.times(HEADROOM)
        return cls(capacity, capacity, 1.0, 1.0, 1, capacity)


def capacity(limits: Amount, rejected_per_min: float) -> Amount:
    """What the rooms of an account share (module docstring)."""
    factor = max(MIN_FACTOR, 1.0 - REJECTED_STEP * rejected_per_min)
    return limits.times(HEADROOM * factor)


def allocate(demands: Mapping[str, Demand], available: Amount) -> dict[str, Share]:
    """Every room's share of `available` (see `capacity()`), by room id."""
    if not demands:
        return {}
    rooms = len(demands)
    speech = {room: d.speech + FLOOR for room, d in demands.items()}
    f_speech = _fraction(available, _sum(speech.values()))
    left = available - _sum(speech.values()).times(f_speech)
    extra = {room: d.extra for room, d in demands.items()}
    f_extra = _fraction(left, _sum(extra.values()))
    spare = (left - _sum(extra.values()).times(f_extra)).at_least(0.0).times(1.0 / rooms)
    # the extra languages get their part of it only while nobody's speech runs short
    extra_spare = spare if f_speech >= 1 and f_extra >= 1 else Amount()
    shares = {}
    for room in demands:
        extras = extra[room].times(f_extra) + extra_spare
        shares[room] = Share(
            total=speech[room].times(f_speech) + extra[room].times(f_extra) + spare,
            extra=extras,
            speech_fraction=f_speech,
            extra_fraction=f_extra,
            rooms=rooms,
            capacity=available,
        )
    return shares


def _sum(amounts: Iterable[Amount]) -> Amount:
    total = Amount()
    for amount in amounts:
        total = total + amount
    return total


def _fraction(available: Amount, wanted: Amount) -> float:
    """The largest fraction of `wanted` that `available` holds, at most 1."""
    fraction = 1.0
    if wanted.requests > 0:
        fraction = min(fraction, max(0.0, available.requests) / wanted.requests)
    if wanted.tokens > 0:
        fraction = min(fraction, max(0.0, available.tokens) / wanted.tokens)
    return fraction
