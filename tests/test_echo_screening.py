"""Clips screened off the event loop (`daemon/echo/screening.py`): the loop runs on while a
clip is measured, clips are sent in the order cut, the backlog is bounded, and every clip
ends sent or rejected with a reason, at shutdown too."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daemon.counters import Counters
from daemon.echo import Evidence, Measures, Verdict
from daemon.echo.guard import OURS_BELOW
from daemon.echo.residual import Residual
from daemon.echo.screening import BACKLOG, Screening
from daemon.values import Frame, Utterance, UtteranceStats


def clip(n: int) -> Utterance:
    pcm = np.zeros(160, dtype=np.int16)
    return Utterance(
        n, n * 160, n * 160 + 160, pcm, UtteranceStats(1, 1, -30.0, -20.0, False), 0, 0
    )


@dataclass(frozen=True, slots=True)
class Held(Evidence):
    """Evidence whose measurement waits for `release` (on the worker thread)."""

    release: threading.Event = field(default_factory=threading.Event)
    foreign: float = 0.5
    echo: float = 0.5  # of the cleaned clip, estimated our echo
    fails: bool = False

    def measure(self) -> Measures:
        if not self.release.wait(10.0):
            raise TimeoutError("never released")
        if self.fails:
            raise ValueError("a defect")
        return Measures(self.foreign, self.echo)


@dataclass(frozen=True, slots=True)
class Cleaning(Residual):
    """A residual whose suppression notes the thread it ran on and gives 7s (or fails)."""

    threads: list[str] = field(default_factory=list)
    fails: bool = False

    def suppressed(self) -> tuple[Any, float]:
        self.threads.append(threading.current_thread().name)
        if self.fails:
            raise ValueError("a defect")
        return np.full_like(self.cleaned, 7), 0.5


class Stage:
    """An echo stage whose clips `ours` are judged our own speech; the rest are sent,
    those in `echoing` cleaned of our echo first (`Cleaning`)."""

    def __init__(
        self,
        ours: set[int],
        failing: set[int] = frozenset(),  # type: ignore[assignment]
        clean: set[int] = frozenset(),  # type: ignore[assignment]
        echoing: set[int] = frozenset(),  # type: ignore[assignment]
        unclean: set[int] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        self.ours = ours
        self.failing = failing
        self.clean = clean  # the canceller took our echo out of these
        self.echoing = echoing
        self.unclean = unclean  # whose suppression fails
        self.held: dict[int, Held] = {}
        self.on_loop: list[int] = []
        self.cleaning_threads: list[str] = []

    def evidence(self, utt: Utterance) -> Evidence | None:
        foreign = OURS_BELOW / 2 if utt.id in self.ours else 0.5
        echo = 0.01 if utt.id in self.clean else 0.5
        self.held[utt.id] = Held(
            utt.pcm, utt.pcm, None, foreign=foreign, echo=echo, fails=utt.id in self.failing
        )
        return self.held[utt.id]

    def screen(self, utt: Utterance, measures: Measures | None = None) -> Utterance | Verdict:
        assert measures is not None, "measured on the loop"
        self.on_loop.append(utt.id)
        if measures.ours:
            return Verdict(measures.foreign_share or 0.0, 0.0)
        return utt

    def residual(self, utt: Utterance) -> Residual | None:
        if utt.id not in self.echoing:
            return None
        return Cleaning(
            utt.pcm, utt.pcm, threads=self.cleaning_threads, fails=utt.id in self.unclean
        )

    # the rest of EchoStage, unused here
    mode = "aec"

    def process(self, frame: Frame, captured_at: float) -> Frame:
        return frame

    def double_talk(self) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        return {}


class Ends:
    def __init__(self) -> None:
        self.sent: list[int] = []
        self.rejected: list[tuple[int, str]] = []
        self.audio: dict[int, Any] = {}

    def send(self, utt: Utterance) -> None:
        self.sent.append(utt.id)
        self.audio[utt.id] = utt.pcm

    def reject(self, utt: Utterance, reason: str, verdict: Verdict | None) -> None:
        assert (reason == "echo") == (verdict is not None)
        self.rejected.append((utt.id, reason))


async def until(predicate: Any) -> None:
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("never happened")


async def test_clips_are_measured_off_the_loop_and_sent_in_order() -> None:
    stage, ends, counters = Stage(ours={2}), Ends(), Counters()
    screening = Screening(stage, ends.send, ends.reject, counters)  # type: ignore[arg-type]
    task = asyncio.create_task(screening.run())
    for n in (1, 2, 3):
        screening.offer(clip(n))
    ticks = 0
    for _ in range(20):  # the loop runs while clip 1 is being measured
        await asyncio.sleep(0)
        ticks += 1
    assert ticks == 20 and ends.sent == [] and screening.backlog == 3
    for n in (3, 2, 1):  # released out of order: still decided in the order cut
        stage.held[n].release.set()
    await until(lambda: len(ends.sent) + len(ends.rejected) == 3)
    assert ends.sent == [1, 3] and ends.rejected == [(2, "echo")]
    assert stage.on_loop == [1, 2, 3]
    task.cancel()


async def test_a_clip_heard_as_our_echo_is_dropped_however_clean_its_audio() -> None:
    """Both clips sound like our echo on the microphone; the canceller took nearly all of
    it out of the second one's audio: that one is dropped too (what is left would be
    translated, played and heard again)."""
    stage, ends, counters = Stage(ours={1, 2}, clean={2}), Ends(), Counters()
    screening = Screening(stage, ends.send, ends.reject, counters)  # type: ignore[arg-type]
    task = asyncio.create_task(screening.run())
    for n in (1, 2):
        screening.offer(clip(n))
        stage.held[n].release.set()
    await until(lambda: len(ends.sent) + len(ends.rejected) == 2)
    assert ends.sent == [] and ends.rejected == [(1, "echo"), (2, "echo")]
    task.cancel()


async def test_backlog_is_bounded_and_shutdown_rejects_what_waits() -> None:
    stage, ends, counters = Stage(ours=set()), Ends(), Counters()
    screening = Screening(stage, ends.send, ends.reject, counters)  # type: ignore[arg-type]
    task = asyncio.create_task(screening.run())
    screening.offer(clip(1))
    await until(lambda: screening.backlog == 1 and not screening._waiting)  # 1 being measured
    for n in range(2, BACKLOG + 3):
        screening.offer(clip(n))
    assert ends.rejected == [(BACKLOG + 2, "screen_backlog")]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    screening.stop("shutdown")
    assert ends.sent == []
    assert sorted(n for n, _ in ends.rejected) == list(range(1, BACKLOG + 3))
    assert {r for _, r in ends.rejected[1:]} == {"shutdown"}
    for held in stage.held.values():
        held.release.set()


async def test_a_measurement_that_fails_is_counted_and_its_clip_sent() -> None:
    stage, ends, counters = Stage(ours=set(), failing={1}), Ends(), Counters()
    screening = Screening(stage, ends.send, ends.reject, counters)  # type: ignore[arg-type]
    task = asyncio.create_task(screening.run())
    screening.offer(clip(1))
    screening.offer(clip(2))
    for n in (1, 2):
        stage.held[n].release.set()
    await until(lambda: len(ends.sent) == 2)
    assert ends.sent == [1, 2] and counters.get("screen_errors") == 1
    task.cancel()


async def test_a_clip_to_be_sent_is_cleaned_of_our_echo_off_the_loop() -> None:
    """Clips 1 and 3 are sent with what the suppression gave, worked out on the worker
    thread and counted; clip 2, judged ours, is never cleaned; clip 4 has nothing to take
    out and is sent as cut."""
    stage, ends, counters = Stage(ours={2}, echoing={1, 2, 3}), Ends(), Counters()
    screening = Screening(stage, ends.send, ends.reject, counters)  # type: ignore[arg-type]
    task = asyncio.create_task(screening.run())
    for n in (1, 2, 3, 4):
        screening.offer(clip(n))
        stage.held[n].release.set()
    await until(lambda: len(ends.sent) + len(ends.rejected) == 4)
    assert ends.sent == [1, 3, 4] and ends.rejected == [(2, "echo")]
    assert all((ends.audio[n] == 7).all() for n in (1, 3)) and not ends.audio[4].any()
    assert len(stage.cleaning_threads) == 2
    assert all(t.startswith("echo-screen") for t in stage.cleaning_threads)
    assert counters.get("echo_residual_clips") == 2
    task.cancel()


async def test_a_suppression_that_fails_is_counted_and_its_clip_sent_as_cut() -> None:
    stage, ends, counters = Stage(ours=set(), echoing={1}, unclean={1}), Ends(), Counters()
    screening = Screening(stage, ends.send, ends.reject, counters)  # type: ignore[arg-type]
    task = asyncio.create_task(screening.run())
    screening.offer(clip(1))
    stage.held[1].release.set()
    await until(lambda: len(ends.sent) == 1)
    assert not ends.audio[1].any() and counters.get("screen_errors") == 1
    task.cancel()
