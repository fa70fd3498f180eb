"""Order and concurrency: strict utterance order, bounded in-flight, explicit drops.

The translate function here is a stand-in for the service with random per-request
latency (property-based, hypothesis); the real HTTP path is in test_filemode.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import LiveRoom, PipelineSettings, RoomSettings
from daemon.counters import Counters
from daemon.sequencer import Sequencer
from daemon.values import (
    AudioChunk,
    Outcome,
    TextDelta,
    TranslationEvent,
    Utterance,
    UtteranceStats,
)

DRIVE_DEADLINE_S = 30.0  # a run takes milliseconds; past this one is stuck, and fails


def utt(uid: int) -> Utterance:
    pcm = np.full(480, uid, dtype=np.int16)
    return Utterance(uid, uid * 480, uid * 480 + 480, pcm, UtteranceStats(1, 1, 0, 0, False), 0, 0)


class FakeService:
    """Random latency per request and per chunk; records how many ran at once."""

    def __init__(self, seed: int, fail_every: int = 0) -> None:
        self.rng = random.Random(seed)
        self.running = 0
        self.peak = 0
        self.fail_every = fail_every

    async def translate(
        self, u: Utterance, room: RoomSettings
    ) -> AsyncGenerator[TranslationEvent, None]:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.rng.uniform(0, 0.01))
            for part in range(3):
                yield TextDelta(f"{u.id}.{part} ")
                yield AudioChunk(np.full(10, u.id, dtype=np.int16))
                await asyncio.sleep(self.rng.uniform(0, 0.005))
            if self.fail_every and u.id % self.fail_every == 0:
                yield Outcome("failed", "server_error")
            else:
                yield Outcome("translated", text=f"{u.id}")
        finally:
            self.running -= 1


async def drive(
    seq: Sequencer, count: int, gap: float, *, wait: bool
) -> list[tuple[int, TranslationEvent]]:
    out: list[tuple[int, TranslationEvent]] = []

    async def produce() -> None:
        for uid in range(1, count + 1):
            if wait:
                await seq.put(utt(uid))
            else:
                seq.submit(utt(uid))
            await asyncio.sleep(gap)
        seq.close()

    async def consume() -> None:
        async for u, event in seq.results():
            out.append((u.id, event))

    async with asyncio.timeout(DRIVE_DEADLINE_S), asyncio.TaskGroup() as group:
        group.create_task(produce())
        group.create_task(seq.run())
        group.create_task(consume())
    return out


async def test_a_reply_that_overtakes_waits_for_the_one_before() -> None:
    second_done = asyncio.Event()

    async def translate(u: Utterance, room: RoomSettings) -> AsyncGenerator[TranslationEvent, None]:
        if u.id == 1:
            await second_done.wait()  # 1 answers only once 2 has finished
        yield TextDelta(f"{u.id} ")
        if u.id == 2:
            second_done.set()  # all of 2's text is out
        yield Outcome("translated", text=str(u.id))

    seq = Sequencer(
        PipelineSettings(max_in_flight=2), translate, LiveRoom(RoomSettings()), Counters()
    )
    seq.submit(utt(1))
    seq.submit(utt(2))
    seq.close()
    released: list[int] = []

    async def consume() -> None:
        async for u, _event in seq.results():
            released.append(u.id)
            assert released == [1, 1, 2, 2][: len(released)], f"{u.id} released out of order"

    async with asyncio.timeout(DRIVE_DEADLINE_S), asyncio.TaskGroup() as group:
        group.create_task(seq.run())
        group.create_task(consume())
    assert released == [1, 1, 2, 2]
    assert second_done.is_set()  # 2 answered first


def check_order(out: list[tuple[int, TranslationEvent]], count: int) -> dict[int, Outcome]:
    """Events of k all come before those of k+1; each utterance has one Outcome, last."""
    outcomes: dict[int, Outcome] = {}
    previous = 0
    for uid, event in out:
        assert uid >= previous, f"utterance {uid} after {previous}"
        assert uid not in outcomes, f"event of {uid} after its outcome"
        if uid > previous:
            assert previous == 0 or previous in outcomes, f"{uid} began before {previous} ended"
        previous = uid
        if isinstance(event, Outcome):
            outcomes[uid] = event
    assert sorted(outcomes) == list(range(1, count + 1))
    return outcomes


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    count=st.integers(1, 25),
    in_flight=st.integers(1, 4),
    gap=st.sampled_from([0.0, 0.001, 0.004]),
)
def test_results_in_order_with_bounded_concurrency(
    seed: int, count: int, in_flight: int, gap: float
) -> None:
    service = FakeService(seed, fail_every=5)
    pipeline = PipelineSettings(max_in_flight=in_flight, queue_size=64)
    seq = Sequencer(pipeline, service.translate, LiveRoom(RoomSettings()), Counters())
    out = asyncio.run(drive(seq, count, gap, wait=True))
    outcomes = check_order(out, count)
    assert service.peak <= in_flight
    assert all(o.kind != "dropped" for o in outcomes.values())
    for uid in outcomes:  # each utterance's own text, in its own order
        texts = [e.text for i, e in out if i == uid and isinstance(e, TextDelta)]
        assert texts == [f"{uid}.0 ", f"{uid}.1 ", f"{uid}.2 "]


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    count=st.integers(5, 30),
    policy=st.sampled_from(["oldest", "newest"]),
)
def test_a_full_queue_drops_by_policy_and_counts(seed: int, count: int, policy: str) -> None:
    service = FakeService(seed)
    pipeline = PipelineSettings(max_in_flight=1, queue_size=2, drop_policy=policy)  # type: ignore[arg-type]
    counters = Counters()
    seq = Sequencer(pipeline, service.translate, LiveRoom(RoomSettings()), counters)
    out = asyncio.run(drive(seq, count, 0.0, wait=False))
    outcomes = check_order(out, count)
    dropped = [uid for uid, o in outcomes.items() if o.kind == "dropped"]
    assert all(outcomes[uid].reason == "queue_full" for uid in dropped)
    assert counters.get("dropped.queue_full") == len(dropped)
    assert len(dropped) >= count - 3  # one in flight + two waiting survive a burst
    if policy == "newest":
        assert 1 not in dropped  # the first was sent at once
    else:
        assert count not in dropped  # the newest always gets in


def test_a_crashing_translation_still_ends_its_utterance() -> None:
    async def broken(u: Utterance, room: RoomSettings) -> AsyncGenerator[TranslationEvent, None]:
        yield TextDelta("x")
        if u.id == 2:
            raise RuntimeError("boom")
        yield Outcome("translated")

    counters = Counters()
    seq = Sequencer(PipelineSettings(), broken, LiveRoom(RoomSettings()), counters)
    out = asyncio.run(drive(seq, 3, 0.0, wait=True))
    outcomes = check_order(out, 3)
    assert (outcomes[2].kind, outcomes[2].reason) == ("failed", "internal_error")
    assert outcomes[3].kind == "translated"
    assert counters.get("internal_errors") == 1


def test_room_settings_are_read_per_utterance() -> None:
    room = LiveRoom(RoomSettings(target_lang="en"))
    seen: list[str] = []

    async def translate(u: Utterance, r: RoomSettings) -> AsyncGenerator[TranslationEvent, None]:
        seen.append(r.target_lang)
        if u.id == 1:
            room.update(target_lang="fr")
        yield Outcome("translated")

    seq = Sequencer(PipelineSettings(max_in_flight=1), translate, room, Counters())
    asyncio.run(drive(seq, 2, 0.01, wait=True))
    assert seen == ["en", "fr"]
