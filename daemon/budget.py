"""The room's daily budget: billed input audio per local day, capped, persisted.

`room.daily_audio_s` caps the seconds of input audio the service bills per local day
(0 = unlimited). Every clip reserves its estimated billed seconds (at least 1 s, as the
service bills) *before* it is sent: a reservation that would take today's usage past the
cap is refused, so clips in flight at once (`pipeline.max_in_flight`) can never slip past
it together. When the clip ends, the reservation becomes what the service reported as
billed (`usage.prompt_tokens_details.audio_tokens` / 12.5); without a usage report it is
kept if the service produced output (it worked on the clip) and released if it did not
(a refused or unreachable request is not billed); a clip shed before it was sent
(dropped) only gives its reservation back.

The cap is read for every clip from `cap()` (the live room settings), so a cap raised
while running (`config/set {"daily_audio_s": …}`, any layer) applies to the next clip.
States: `unlimited`, `ok`, `warning` (80 % of the cap used or reserved), `exhausted` (not
even the shortest clip fits): the room pauses — each clip ends as dropped(`budget`), the
first one's caption says why — until the next local day or a higher cap.

Usage is kept in `<state_dir>/budget.json` (`{"day", "audio_s", "clips"}`), written
atomically after every clip (daemon/statefile.py); a usage file of an earlier day starts
the day at 0, a corrupt one is set aside and reported, an unwritable state directory is
reported (usage is then kept in memory only).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from daemon.config import RoomSettings
from daemon.counters import Counters
from daemon.statefile import read_json, write_json
from daemon.values import Outcome, TranslationEvent, Usage, Utterance

log = logging.getLogger(__name__)

STATE_FILE = "budget.json"
TOKENS_PER_AUDIO_S = 12.5  # the service's billing rate for audio
MIN_BILLED_S = 1.0  # a shorter clip is billed as 1 s
WARN_RATIO = 0.8
NOTICE = "[translation paused: the room's daily budget is used up; it resumes tomorrow]"


class BudgetState(StrEnum):
    UNLIMITED = "unlimited"  # no cap
    OK = "ok"
    WARNING = "warning"  # WARN_RATIO of the cap used or reserved
    EXHAUSTED = "exhausted"  # not even a 1 s clip fits: nothing is sent


TranslateFn = Callable[..., AsyncGenerator[TranslationEvent, None]]  # (utt, room, **options)


def local_day() -> str:
    """Today's local date, ISO (the budget's day)."""
    return time.strftime("%Y-%m-%d", time.localtime())


def billed_estimate(duration_s: float) -> float:
    """The input audio the service will bill for a clip, rounded up to a whole token."""
    tokens = math.ceil(TOKENS_PER_AUDIO_S * max(MIN_BILLED_S, duration_s) - 1e-9)
    return tokens / TOKENS_PER_AUDIO_S


@dataclass(frozen=True, slots=True)
class Ticket:
    """A reservation for one clip."""

    seconds: float
    day: str


class Budget:
    """Today's usage against the cap; `gate()` wraps the translate function."""

    def __init__(
        self,
        cap: Callable[[], float],
        state_dir: Path,
        counters: Counters,
        *,
        today: Callable[[], str] = local_day,
    ) -> None:
        self._cap = cap
        self._path = state_dir / STATE_FILE
        self._counters = counters
        self._today = today
        self._day = today()
        self._used = 0.0  # billed seconds settled today
        self._clips = 0  # clips sent today
        self._reserved = 0.0  # in flight
        self._noticed = False  # the "why" caption of this pause went out
        self._last_state = BudgetState.UNLIMITED
        self.file_problem = ""  # the usage file was corrupt or unreadable (set aside)
        self.save_problem = ""  # the last write failed
        self._load()

    # -- queries --------------------------------------------------------------------------

    @property
    def cap_s(self) -> float:
        return self._cap()

    @property
    def used_s(self) -> float:
        self._roll()
        return self._used

    def state(self) -> BudgetState:
        self._roll()
        cap = self.cap_s
        if cap <= 0:
            state = BudgetState.UNLIMITED
        elif cap - self._used - self._reserved < billed_estimate(0.0) - 1e-9:
            state = BudgetState.EXHAUSTED
        elif self._used + self._reserved >= WARN_RATIO * cap:
            state = BudgetState.WARNING
        else:
            state = BudgetState.OK
        if state is not self._last_state:
            self._log_change(state, cap)
        return state

    def problem(self) -> str | None:
        """The warning the status shows, None when there is nothing to say."""
        state = self.state()
        if state is BudgetState.WARNING:
            return f"over {WARN_RATIO:.0%} of the daily {self.cap_s:g} s budget used"
        if state is BudgetState.EXHAUSTED:
            return f"daily budget of {self.cap_s:g} s used up: paused until tomorrow"
        return self.save_problem or None

    def snapshot(self) -> dict[str, Any]:
        state = self.state()
        figures: dict[str, Any] = {
            "state": state.value,
            "day": self._day,
            "used_audio_s": round(self._used, 1),
            "reserved_audio_s": round(self._reserved, 1),
            "daily_audio_s": self.cap_s,
            "clips": self._clips,
        }
        if self.file_problem:
            figures["state_file"] = self.file_problem
        return figures

    # -- reservations ---------------------------------------------------------------------

    def reserve(self, duration_s: float) -> Ticket | None:
        """Reserve a clip's billed seconds; None if it does not fit under today's cap."""
        self._roll()
        seconds = billed_estimate(duration_s)
        cap = self.cap_s
        if cap > 0 and self._used + self._reserved + seconds > cap + 1e-9:
            return None
        self._reserved += seconds
        return Ticket(seconds, self._day)

    def release(self, ticket: Ticket) -> None:
        """The clip was not sent: its reservation goes, nothing is counted."""
        self._reserved = max(0.0, self._reserved - ticket.seconds)

    def settle(self, ticket: Ticket, billed_s: float) -> None:
        """The clip ended: `billed_s` replaces its reservation (kept in today's file)."""
        self._reserved = max(0.0, self._reserved - ticket.seconds)
        self._roll()
        if ticket.day != self._day:
            return  # billed on a day that is over
        self._used += billed_s
        self._clips += 1
        self._counters.add("budget_billed_audio_s", billed_s)
        self._save()

    def gate(self, translate: TranslateFn) -> TranslateFn:
        """`translate` behind the budget: reserve, send, settle; over the cap → dropped."""

        async def guarded(
            utt: Utterance, room: RoomSettings, **options: Any
        ) -> AsyncGenerator[TranslationEvent, None]:
            ticket = self.reserve(utt.duration_s)
            if ticket is None:
                yield self._refused()
                return
            usage: Usage | None = None
            outcome: Outcome | None = None
            try:
                async for event in translate(utt, room, **options):
                    if isinstance(event, Usage):
                        usage = event
                    elif isinstance(event, Outcome):
                        outcome = event
                        usage = event.usage or usage
                    yield event
            finally:
                if outcome is not None and outcome.kind == "dropped":
                    self.release(ticket)  # shed before it was sent
                else:
                    self.settle(ticket, _billed(ticket, usage, outcome))

        return guarded

    # -- internals ------------------------------------------------------------------------

    def _refused(self) -> Outcome:
        self._counters.add("dropped.budget")
        text = ""
        if self.state() is BudgetState.EXHAUSTED and not self._noticed:
            self._noticed = True
            text = NOTICE
        detail = f"daily budget: {self._used:.1f} of {self.cap_s:g} s used"
        return Outcome("dropped", "budget", detail, text=text)

    def _log_change(self, state: BudgetState, cap: float) -> None:
        if state is BudgetState.EXHAUSTED:
            log.warning("daily budget of %g s used up (%.1f s): not sending", cap, self._used)
        elif state is BudgetState.WARNING:
            log.warning("%.1f s of the daily budget of %g s used", self._used, cap)
        elif self._last_state is BudgetState.EXHAUSTED:
            log.info("budget available again (%.1f of %g s used): sending", self._used, cap)
        if state is not BudgetState.EXHAUSTED:
            self._noticed = False
        self._last_state = state

    def _roll(self) -> None:
        day = self._today()
        if day != self._day:
            log.info("new budget day %s (%.1f s used on %s)", day, self._used, self._day)
            self._day, self._used, self._clips = day, 0.0, 0
            self._save()

    def _load(self) -> None:
        loaded = read_json(self._path)
        if loaded.problem:
            self.file_problem = loaded.problem
            self._counters.add("budget_state_file_problems")
            log.error("budget usage file: %s; today's usage starts at 0", loaded.problem)
        data = loaded.data
        if data is None or data.get("day") != self._day:
            return
        try:
            self._used = max(0.0, float(data.get("audio_s", 0.0)))
            self._clips = max(0, int(data.get("clips", 0)))
        except (TypeError, ValueError):
            self.file_problem = f"{self._path}: bad values; today's usage starts at 0"
            log.error("budget usage file: %s", self.file_problem)

    def _save(self) -> None:
        payload = {"day": self._day, "audio_s": round(self._used, 3), "clips": self._clips}
        try:
            write_json(self._path, payload)
        except OSError as exc:
            problem = f"cannot write {self._path}: {exc.strerror or exc}"
            if problem != self.save_problem:
                log.error("budget usage: %s (kept in memory only)", problem)
            self.save_problem = problem
            return
        self.save_problem = ""


def _billed(ticket: Ticket, usage: Usage | None, outcome: Outcome | None) -> float:
    if usage is not None and usage.input_audio_tokens > 0:
        return usage.input_audio_tokens / TOKENS_PER_AUDIO_S
    worked = outcome is not None and (
        outcome.kind == "translated" or outcome.reason == "incomplete"
    )
    return ticket.seconds if worked else 0.0
