"""Sequencer: at most `max_in_flight` translations at once, results released in order.

Utterances wait in a bounded queue (`queue_size`). When it is full, `submit()` (live
mode) drops per `drop_policy` — the oldest waiting utterance, or the new one — and the
dropped utterance still gets its place in the ordered output with Outcome("dropped",
"queue_full"). `put()` (file mode) waits for room instead: backpressure, nothing dropped.

`results()` yields (utterance, event) strictly in utterance order: every event of k
(text deltas, audio chunks, usage) and its Outcome before any event of k+1, while k+1
may already be in flight. Each utterance ends with exactly one Outcome.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from daemon.config import LiveRoom, PipelineSettings, RoomSettings
from daemon.counters import Counters
from daemon.values import Outcome, TranslationEvent, Utterance

TranslateFn = Callable[[Utterance, RoomSettings], AsyncGenerator[TranslationEvent, None]]


@dataclass(slots=True)
class _Slot:
    """One utterance's place in the output order."""

    utt: Utterance
    events: asyncio.Queue[TranslationEvent] = field(default_factory=asyncio.Queue)

    def finish(self, outcome: Outcome) -> None:
        self.events.put_nowait(outcome)


class Sequencer:
    """Bounded, ordered, concurrent translation of utterances."""

    def __init__(
        self,
        settings: PipelineSettings,
        translate: TranslateFn,
        room: LiveRoom,
        counters: Counters,
    ) -> None:
        self.settings = settings
        self._translate = translate
        self._room = room
        self._counters = counters
        self._waiting: deque[_Slot] = deque()
        self._order: deque[_Slot] = deque()
        self._changed = asyncio.Event()
        self._closed = False
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def unreleased(self) -> int:
        """Utterances whose results are not all released yet (the one being released too)."""
        return len(self._order)

    def submit(self, utt: Utterance) -> None:
        """Queue an utterance without waiting; drop per policy when the queue is full."""
        slot = _Slot(utt)
        self._order.append(slot)
        if len(self._waiting) >= self.settings.queue_size:
            victim = slot if self.settings.drop_policy == "newest" else self._waiting.popleft()
            self._drop(victim, "queue_full")
        if slot.events.empty():
            self._waiting.append(slot)
        self._notify()

    def reject(self, utt: Utterance, reason: str) -> None:
        """An utterance that is not sent: it keeps its place in the order, dropped (reason)."""
        slot = _Slot(utt)
        self._order.append(slot)
        self._drop(slot, reason)
        self._notify()

    async def put(self, utt: Utterance) -> None:
        """Queue an utterance, waiting while the queue is full (no drop)."""
        await self._wait_for(lambda: len(self._waiting) < self.settings.queue_size)
        self.submit(utt)

    def close(self) -> None:
        """No more utterances; `run()` and `results()` end once everything has finished."""
        self._closed = True
        self._notify()

    def drop_waiting(self, reason: str) -> None:
        """Drop everything not yet sent (shutdown)."""
        while self._waiting:
            self._drop(self._waiting.popleft(), reason)
        self._notify()

    def _drop(self, slot: _Slot, reason: str) -> None:
        self._counters.add(f"dropped.{reason}")
        slot.finish(Outcome("dropped", reason))

    def _notify(self) -> None:
        self._changed.set()

    async def _wait_for(self, predicate: Callable[[], bool]) -> None:
        # Every waiter re-checks its own predicate after each change.
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    async def run(self) -> None:
        """Dispatch waiting utterances while fewer than `max_in_flight` are in flight."""
        async with asyncio.TaskGroup() as group:
            while True:
                await self._wait_for(self._can_dispatch)
                if not self._waiting:
                    return  # closed and nothing left to send
                slot = self._waiting.popleft()
                self._in_flight += 1
                self._notify()
                group.create_task(self._run_one(slot))

    def _can_dispatch(self) -> bool:
        if self._waiting:
            return self._in_flight < self.settings.max_in_flight
        return self._closed

    async def _run_one(self, slot: _Slot) -> None:
        outcome: Outcome | None = None
        try:
            async with aclosing(self._translate(slot.utt, self._room.current)) as events:
                async for event in events:
                    if isinstance(event, Outcome):
                        outcome = event
                        break
                    slot.events.put_nowait(event)
        except asyncio.CancelledError:  # shutdown while in flight
            self._counters.add("dropped.shutdown")
            outcome = Outcome("dropped", "shutdown")
            raise
        except Exception as exc:  # a bug must not lose the utterance or stop the room
            self._counters.add("internal_errors")
            outcome = Outcome("failed", "internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            slot.finish(outcome or Outcome("failed", "internal_error", "no outcome"))
            self._in_flight -= 1
            self._notify()

    async def results(self) -> AsyncIterator[tuple[Utterance, TranslationEvent]]:
        """(utterance, event) pairs in utterance order; ends after close() and the last one."""
        while True:
            await self._wait_for(lambda: bool(self._order) or self._finished())
            if not self._order:
                return
            slot = self._order[0]
            while True:
                event = await slot.events.get()
                yield slot.utt, event
                if isinstance(event, Outcome):
                    break
            self._order.popleft()
            self._count_outcome(event)

    def _finished(self) -> bool:
        return self._closed and not self._waiting and self._in_flight == 0

    def _count_outcome(self, outcome: Outcome) -> None:
        self._counters.add(f"outcomes.{outcome.kind}")
        if outcome.kind == "failed":
            self._counters.add(f"failed.{outcome.reason}")
