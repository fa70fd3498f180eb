"""Clips screened off the event loop, in the order they were cut.

The echo stage's `screen` fits our echo to what the microphone heard (tens of
milliseconds per clip here, several times that on a Raspberry Pi), which would stall the
loop that feeds the speaker and the broker. So the clip's `Evidence` is copied when it is
cut, measured on one worker thread, and the clip then screened on the loop with those
figures; what our echo left in a clip to be sent is turned down on the worker too
(`EchoStage.residual`; `echo_residual_clips` counts the clips it took something out
of): one at a time, so clips reach the service in the order they were cut. At most
`BACKLOG` clips wait; one more is dropped (`screen_backlog`, counted). Every clip ends
sent or rejected (`reject`, with the reason); on `stop` those waiting or being measured
are rejected with the reason given. A measurement that fails (a defect) is counted
(`screen_errors`) and its clip sent unjudged (a suppression that fails: sent as it was).
`screen_now` takes the same steps on the caller's thread (benchmarks, tests).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from daemon.counters import Counters
from daemon.echo import EchoStage, Evidence, Measures, Residual, Verdict
from daemon.values import Utterance

log = logging.getLogger(__name__)

BACKLOG = 8
TAKEN_OUT = 0.01  # a clip this much of whose energy was taken out counts as cleaned


def screen_now(stage: EchoStage, utt: Utterance) -> Utterance | Verdict:
    """`Screening`'s steps for one clip, on this thread: judged, then cleaned."""
    evidence = stage.evidence(utt)
    screened = stage.screen(utt, None if evidence is None else evidence.measure())
    if isinstance(screened, Verdict) or (residual := stage.residual(screened)) is None:
        return screened
    return dataclasses.replace(screened, pcm=residual.suppressed()[0])


class Screening:
    """`offer` clips as they are cut; `run` screens them, `send` or `reject` each."""

    def __init__(
        self,
        stage: EchoStage,
        send: Callable[[Utterance], None],
        reject: Callable[[Utterance, str, Verdict | None], None],
        counters: Counters,
    ) -> None:
        self._stage = stage
        self._counters = counters
        self._send = send
        self._reject = reject
        self._waiting: deque[tuple[Utterance, Evidence | None]] = deque()
        self._current: Utterance | None = None
        self._ready = asyncio.Event()

    def offer(self, utt: Utterance) -> None:
        if len(self._waiting) >= BACKLOG:
            self._reject(utt, "screen_backlog", None)
            return
        self._waiting.append((utt, self._stage.evidence(utt)))
        self._ready.set()

    @property
    def backlog(self) -> int:
        return len(self._waiting) + (self._current is not None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(1, thread_name_prefix="echo-screen")
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._waiting:
                    utt, evidence = self._waiting.popleft()
                    self._current = utt
                    measures = await self._measure(loop, pool, evidence)
                    screened = self._stage.screen(utt, measures)
                    if isinstance(screened, Utterance):
                        screened = await self._clean(loop, pool, screened)
                    self._current = None
                    self._decide(utt, screened)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    async def _measure(
        self, loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor, evidence: Evidence | None
    ) -> Measures | None:
        if evidence is None:
            return None
        try:
            return await loop.run_in_executor(pool, evidence.measure)
        except Exception:  # a defect: the clip is sent unjudged rather than lost
            self._counters.add("screen_errors")
            log.exception("screening a clip failed; it is sent unjudged")
            return Measures(None, 0.0)

    async def _clean(
        self, loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor, utt: Utterance
    ) -> Utterance:
        residual: Residual | None = self._stage.residual(utt)
        if residual is None:
            return utt
        try:
            pcm, taken = await loop.run_in_executor(pool, residual.suppressed)
        except Exception:  # a defect: the clip is sent as it was rather than lost
            self._counters.add("screen_errors")
            log.exception("taking our echo out of a clip failed; it is sent as it was")
            return utt
        if taken >= TAKEN_OUT:
            self._counters.add("echo_residual_clips")
            log.info(
                "utterance %d: %.0f%% of its energy taken out as our echo", utt.id, taken * 100
            )
        return dataclasses.replace(utt, pcm=pcm)

    def _decide(self, utt: Utterance, screened: Utterance | Verdict) -> None:
        if isinstance(screened, Verdict):
            self._reject(utt, "echo", screened)
        else:
            self._send(screened)

    def stop(self, reason: str) -> None:
        """Reject what waits and what is being measured (call after cancelling `run`)."""
        if self._current is not None:
            self._reject(self._current, reason, None)
            self._current = None
        while self._waiting:
            self._reject(self._waiting.popleft()[0], reason, None)
