"""Extra caption languages: one text-only request per utterance and language, in parallel.

`room.caption_langs` names languages captioned in addition to `target_lang` (which keeps
the speech). Each has a `CaptionLane`: its own `Sequencer` (bounded queue, at most
`max_in_flight` requests, results strictly in utterance order) feeding its own `Captions`
on `captions/<lang>`. A lane receives each utterance when the main pipeline does, so its
request runs beside the main one; a slow language never holds up the speech or another
language.

Shedding: a lane's request is an extra one for the service load (daemon/ratelimit.py):
a room alone does not send it while the service throttles (a 429 within its Retry-After)
or the last minute's requests reach the budget; a room sharing an account sends it only
from the extra languages' part of its share. A lane's request that gets a 429 is not
retried. Both end the utterance for that language as dropped("shed") — an incomplete
final on its topic — counted under the lane's `dropped.shed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

from daemon.captions.events import Captions
from daemon.config import LiveRoom, PipelineSettings, RoomSettings
from daemon.counters import Counters
from daemon.sequencer import Sequencer
from daemon.values import Outcome, TextDelta, Timeline, TranslationEvent, Utterance

log = logging.getLogger(__name__)
SHED = "shed"


class TextTranslate(Protocol):
    def __call__(
        self, utt: Utterance, room: RoomSettings, *, extra: bool = ...
    ) -> AsyncGenerator[TranslationEvent, None]: ...


class CaptionLane:
    """One extra caption language."""

    def __init__(
        self,
        lang: str,
        *,
        translate: TextTranslate,
        pipeline: PipelineSettings,
        room: LiveRoom,
        captions: Captions,
    ) -> None:
        self.lang = lang
        self.counters = Counters()
        self._translate = translate
        self._captions = captions
        self.sequencer = Sequencer(pipeline, self._one, room, self.counters)
        self.tasks: list[asyncio.Task[None]] = []  # dispatch, deliver (once started)

    def submit(self, utt: Utterance) -> None:
        # Its own timeline: the main request's stamps stay the main request's.
        own = dataclasses.replace(
            utt, timeline=Timeline(speech_end_detected=utt.timeline.speech_end_detected)
        )
        self.sequencer.submit(own)

    async def _one(
        self, utt: Utterance, room: RoomSettings
    ) -> AsyncGenerator[TranslationEvent, None]:
        if self.lang not in room.caption_langs:
            yield self._dropped("language_removed", "no longer in room.caption_langs")
            return
        text_room = room.model_copy(update={"target_lang": self.lang, "speech": False})
        async for event in self._translate(utt, text_room, extra=True):
            if isinstance(event, Outcome) and event.reason in ("rate_limited", SHED):
                yield self._dropped(SHED, event.detail)
                return
            yield event

    def _dropped(self, reason: str, detail: str) -> Outcome:
        self.counters.add(f"dropped.{reason}")
        return Outcome("dropped", reason, detail)

    async def deliver(self) -> None:
        """Ordered events → captions of this language."""
        async for utt, event in self.sequencer.results():
            if isinstance(event, TextDelta):
                self._captions.partial(utt, event.text)
            elif isinstance(event, Outcome):
                self._captions.final(utt, event)
                if event.kind != "translated":
                    log.info("utterance %d [%s] %s: %s", utt.id, self.lang, *event_why(event))

    def figures(self) -> dict[str, Any]:
        c = self.counters
        return {
            "translated": round(c.get("outcomes.translated")),
            "failed": {k: round(v) for k, v in c.group("failed").items()},
            "dropped": {k: round(v) for k, v in c.group("dropped").items()},
            "waiting": self.sequencer.waiting,
            "in_flight": self.sequencer.in_flight,
        }


def event_why(outcome: Outcome) -> tuple[str, str]:
    return outcome.kind, f"{outcome.reason} {outcome.detail}".strip()


MakeLane = Callable[[str], CaptionLane]


class CaptionLanes:
    """The lanes of `room.caption_langs`, following live changes of the list."""

    def __init__(self, make_lane: MakeLane, room: LiveRoom) -> None:
        self._make_lane = make_lane
        self._room = room
        self._lanes: dict[str, CaptionLane] = {}
        self._closing: set[CaptionLane] = set()  # removed, finishing what they hold
        self._group: asyncio.TaskGroup | None = None
        self._stopping = False

    @property
    def langs(self) -> list[str]:
        return list(self._lanes)

    def submit(self, utt: Utterance) -> None:
        """Queue `utt` in every current caption language (opening lanes as needed)."""
        wanted = self._room.current.caption_langs
        for lang in list(self._lanes):
            if lang not in wanted:
                self._retire(lang)
        if self._stopping:
            return
        for lang in wanted:
            lane = self._lanes.get(lang)
            if lane is None:
                lane = self._lanes[lang] = self._make_lane(lang)
                self._start(lane)
            lane.submit(utt)

    def _retire(self, lang: str) -> None:
        lane = self._lanes.pop(lang)
        lane.sequencer.close()  # it finishes what it holds, then its tasks end
        self._closing.add(lane)

    def _start(self, lane: CaptionLane) -> None:
        if self._group is None:
            return  # run() starts it
        lane.tasks = [
            self._group.create_task(lane.sequencer.run(), name=f"lane-{lane.lang}-dispatch"),
            self._group.create_task(lane.deliver(), name=f"lane-{lane.lang}-deliver"),
        ]
        lane.tasks[1].add_done_callback(lambda _: self._closing.discard(lane))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            for lane in self._lanes.values():
                self._start(lane)
            await asyncio.Event().wait()

    async def stop(self, timeout_s: float) -> None:
        """Shutdown: drop what waits, cancel what is in flight (each gets its final
        `dropped(shutdown)`), and wait up to `timeout_s` for those finals to go out."""
        self._stopping = True
        deliveries: list[asyncio.Task[None]] = []
        for lane in [*self._lanes.values(), *self._closing]:
            lane.sequencer.drop_waiting("shutdown")
            lane.sequencer.close()
            if lane.tasks:
                lane.tasks[0].cancel()  # in-flight requests end as dropped(shutdown)
                deliveries.append(lane.tasks[1])
        if deliveries:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*deliveries), timeout_s)

    def figures(self) -> dict[str, dict[str, Any]]:
        return {lang: lane.figures() for lang, lane in self._lanes.items()}
