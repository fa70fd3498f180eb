"""Never feed back: when the canceller does not cancel, the echo stage gates instead.

Whatever the echo path, the room must come to rest: a canceller that cannot find our
echo (a reference that is late, missing, or an echo path beyond what is searched) would
otherwise let our own voice through to be translated, played and heard again.

The echo stage falls back to gating (`Fallback.gating`):
- while playback says our speech is audible and no reference has arrived for
  `MISSING_S` (the reference is missing);
- after `PATH_WAIT_S` of our speech audible, and the microphone hearing something over
  the room's noise, without the echo path found (a reference that is seconds late, a path
  beyond the search, a translation with nothing broadband to place in time: a tone);
- while the path is found, the canceller has converged on it, and our echo is still in
  its output (`DelayTracker.leak`: the canceller's output correlates with what we played,
  at the path, as the microphone does; a canceller that cancels leaves nothing there, and
  a person, noise or what AEC3's suppressor leaves do not correlate).
It returns to full duplex when none holds. While it gates, the microphone is silenced
from the moment it fell back until our speech has drained plus the echo path's delay and
a tail; the canceller keeps running on the microphone meanwhile, so it is still judged.

`CancellationMonitor` keeps the room's noise floor (the 5th percentile of 30 s of
microphone levels) and, for the status, the canceller's echo return loss enhancement
(ERLE) on the blocks where only we play: the room's coupling (the microphone's level
over what we played one path ago) is learnt as its low percentile over the last
`COUPLING_BLOCKS` blocks where we played audibly (a person talking over us only makes a
block louder than our echo alone); a block within `ECHO_ONLY_DB` of it, and
`JUDGED_OVER_NOISE_DB` over the noise, is our echo alone, and the ERLE is the median of
what the canceller removed over the last `WINDOW_BLOCKS` of them.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

COUPLING_BLOCKS = 1000  # blocks where we played audibly, for the room's coupling (10 s)
COUPLING_PERCENTILE = 10.0
ECHO_ONLY_DB = 3.0  # a block this close to the coupling is our echo alone
WINDOW_BLOCKS = 100  # echo-only blocks judged together
MIN_BLOCKS = 50  # echo-only blocks before a first judgement (since a restart)
NOISE_BLOCKS = 3000  # the microphone's recent levels, for its noise floor (30 s)
NOISE_PERCENTILE = 5.0
NOISE_EVERY = 50  # blocks between two noise floor estimates
AUDIBLE_OVER_NOISE_DB = 10.0
JUDGED_OVER_NOISE_DB = 15.0  # an echo block judged: this far over the noise
REF_PLAYING_DBFS = -60.0
MISSING_S = 1.0
PATH_WAIT_S = 2.5  # of our speech audible without the echo path found: gate
TAIL_S = 0.3  # room reverberation after the echo path's delay
MAX_UNKNOWN_PATH_S = 1.5  # the gate's reach past our speech when the path is not found

Levels = npt.NDArray[np.float32]
Span = tuple[float, float]  # a frame's capture time and its duration (seconds)


class Reason(enum.Enum):
    NO_REFERENCE = "no reference"  # playback plays, the reference has nothing
    NO_PATH = "echo path not found"  # we played, our echo is nowhere in the search
    NOT_CANCELLING = "not cancelling"  # the path is found, our echo is in the output


class CancellationMonitor:
    """The canceller's ERLE on the blocks where only we play (None until measured)."""

    def __init__(self) -> None:
        self._coupling: Levels = np.zeros(COUPLING_BLOCKS, dtype=np.float32)  # mic - ref
        self._removed: Levels = np.zeros(WINDOW_BLOCKS, dtype=np.float32)  # mic - out
        self._mic: Levels = np.full(NOISE_BLOCKS, -100.0, dtype=np.float32)
        self._audible = 0  # audible playing blocks noted (for the coupling)
        self._echo_only = 0  # echo-only blocks since the last restart
        self._heard = 0  # microphone blocks heard (for the noise floor)
        self._noise = -100.0
        self.erle_db: float | None = None
        self.loud = False  # the last frame had a block above the room's noise

    def restart(self) -> None:
        self._echo_only = 0
        self.erle_db = None

    @property
    def noise_db(self) -> float:
        return self._noise

    def hear(self, mic_db: Levels) -> None:
        """Every frame's microphone levels: the room's noise floor."""
        before, self._heard = self._heard, _put(self._mic, self._heard, mic_db)
        if before // NOISE_EVERY != self._heard // NOISE_EVERY or before == 0:
            known = self._mic[: min(self._heard, NOISE_BLOCKS)]
            self._noise = float(np.percentile(known, NOISE_PERCENTILE))
        self.loud = bool((mic_db > self._noise + AUDIBLE_OVER_NOISE_DB).any())

    def note(self, ref_db: Levels, mic_db: Levels, out_db: Levels, *, judged: bool) -> None:
        """Levels of the blocks of one frame while we play: what we played one echo path
        ago, mic, output; `judged`: the canceller has converged (what it removes before
        is not counted)."""
        noise = self._noise
        loud = mic_db > noise + AUDIBLE_OVER_NOISE_DB
        audible = (ref_db > REF_PLAYING_DBFS) & loud
        if not audible.any():
            return
        coupling = (mic_db - ref_db)[audible]
        self._audible = _put(self._coupling, self._audible, coupling)
        known = self._coupling[: min(self._audible, COUPLING_BLOCKS)]
        floor = float(np.percentile(known, COUPLING_PERCENTILE))
        clear = (mic_db - noise)[audible] >= JUDGED_OVER_NOISE_DB
        echo_only = (coupling <= floor + ECHO_ONLY_DB) & clear
        if judged and echo_only.any():
            removed = (mic_db - out_db)[audible][echo_only]
            self._echo_only = _put(self._removed, self._echo_only, removed)
        if self._echo_only >= MIN_BLOCKS:
            n = min(self._echo_only, WINDOW_BLOCKS)
            self.erle_db = float(np.median(self._removed[:n]))


def _put(ring: Levels, count: int, values: Levels) -> int:
    """Append `values` to a ring that has seen `count`; the new count."""
    slots = (count + np.arange(len(values))) % len(ring)
    ring[slots] = values
    return count + len(values)


@dataclass(frozen=True, slots=True)
class FallbackState:
    reason: Reason | None  # None: full duplex
    since: float  # monotonic time it fell back (or returned)


class Fallback:
    """Full duplex or the gate: the reference's presence, the path, the canceller."""

    def __init__(
        self,
        audible_until: Callable[[], float],
        on_fall_back: Callable[[Reason, bool], None],
        figures: Callable[[], str],
    ):
        self._audible_until = audible_until
        self._figures = figures
        self._on_fall_back = on_fall_back
        self.state = FallbackState(None, 0.0)
        self._unreferenced_since: float | None = None
        self._played_s = 0.0  # audible playing since the path was last lost

    def restart(self) -> None:
        """The echo path must be found again (a new output stream)."""
        self._played_s = 0.0

    @property
    def active(self) -> bool:
        return self.state.reason is not None

    def update(
        self, frame: Span, cancelling: bool | None, *, referenced: bool, found: bool, loud: bool
    ) -> None:
        """After each frame (capture time, seconds): `cancelling` whether the canceller
        takes our echo out (None: it converges, or it cannot be told), `referenced`
        whether the reference's time line reaches the frame (something, silence included,
        was handed to the speaker then), `found` whether the echo path is known, `loud`
        whether the microphone heard something over the room's noise."""
        captured_at, seconds = frame
        audible = captured_at < self._audible_until()
        if referenced or not audible:
            self._unreferenced_since = None
        elif self._unreferenced_since is None:
            self._unreferenced_since = captured_at
        if audible and loud and not found:
            self._played_s += seconds
        reason = self._reason(captured_at, cancelling, found)
        if reason != self.state.reason:
            self._switch(reason, captured_at)

    def _reason(self, captured_at: float, cancelling: bool | None, found: bool) -> Reason | None:
        unreferenced = self._unreferenced_since
        if unreferenced is not None and captured_at - unreferenced >= MISSING_S:
            return Reason.NO_REFERENCE
        if not found:
            return Reason.NO_PATH if self._played_s >= PATH_WAIT_S else None
        self._played_s = 0.0
        if cancelling is False:
            return Reason.NOT_CANCELLING
        if self.state.reason is Reason.NOT_CANCELLING and cancelling is None:
            return Reason.NOT_CANCELLING
        return None

    def gating(self, captured_at: float, delay_s: float | None) -> bool:
        """Silence this frame: fallen back, and our speech (or its echo) may be heard."""
        if not self.active:
            return False
        path = delay_s if delay_s is not None and delay_s > 0 else MAX_UNKNOWN_PATH_S
        return captured_at < self._audible_until() + path + TAIL_S

    def _switch(self, reason: Reason | None, at: float) -> None:
        """A fallback is logged and counted once, however often its reason changes
        (no reference, then no path found) before the canceller cancels again."""
        if reason is not None and self.active:
            log.debug("echo fallback goes on: %s", reason.value)
            self._on_fall_back(reason, False)
        elif reason is not None:
            figures = self._figures()
            log.warning(
                "echo canceller fell back to gating the microphone (%s): people who"
                " talk over the translation are not heard until it cancels again",
                figures if reason.value in figures else f"{reason.value}; {figures}",
            )
            self._on_fall_back(reason, True)
        else:
            log.info("echo canceller cancels again (%s): full duplex", self._figures())
        self.state = FallbackState(reason, at)
