"""Keeping pace: translated speech that has to wait is played faster, its pitch kept.

`Pace` time-stretches one utterance's 24 kHz audio on the event loop as it is fed (never
in the audio callback) with Sonic (the `libsonic` package: pitch-synchronous overlap-add
made for speech, streaming, its speed changeable between any two writes). The rate
follows the wait, the audio queued ahead of the new audio (see `Playback._wait_s`), on
one of two curves. While more is coming (someone speaks, another translation is on its
way: that will wait until the speaker is free), every queued second delays it: 1.0 with
nothing queued, rising smoothly to `max_rate` at `BEHIND.full_s`. Otherwise only a long
wait is worth hurrying: 1.0 up to `WAITING.calm_s`, `max_rate` from `WAITING.full_s`.
The rate moves by at most `SLEW_PER_S` per second of speech, set afresh for every
`STEP_S` of it (eased in and out); an utterance queued behind another starts at that
one's rate.

Until the rate first leaves 1.0 the audio passes through untouched. From then on the
rest of the utterance goes through the stretch, which holds back about 30 ms of it
until more comes or the utterance ends (`finish`); its output is the input's length over
the rate, every sample of the input accounted for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from libsonic import SonicStream

from daemon.values import Pcm

SLEW_PER_S = 0.5  # the rate changes by at most this per second of speech
STEP_S = 0.05  # the rate is set afresh for every this much of the input
DEFAULT_MAX_RATE = 1.4
SCALE = 32768.0

Floats = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Curve:
    """The rate over the wait: 1.0 up to `calm_s`, `max_rate` from `full_s` (smoothstep)."""

    calm_s: float
    full_s: float


WAITING = Curve(1.0, 4.0)  # nothing more coming: only the audio's own wait counts
BEHIND = Curve(0.0, 0.5)  # more coming: it waits for all that is queued


def target_rate(wait_s: float, max_rate: float, curve: Curve = WAITING) -> float:
    """The rate for audio that waits `wait_s` before it plays."""
    x = min(max((wait_s - curve.calm_s) / (curve.full_s - curve.calm_s), 0.0), 1.0)
    return 1.0 + (max_rate - 1.0) * x * x * (3.0 - 2.0 * x)


class Pace:
    """The time-stretch of one utterance (24 kHz mono int16 in and out)."""

    def __init__(self, sample_rate: int, max_rate: float, rate: float = 1.0) -> None:
        """`rate`: where the rate starts (the previous utterance's, if it plays just
        before this one)."""
        self._sr = sample_rate
        self._max_rate = max_rate
        self._step = max(1, round(STEP_S * sample_rate))
        self.rate = min(max(rate, 1.0), max_rate)  # the rate of the audio written last
        self.stretched_s = 0.0  # input seconds played faster than 1.0
        self._stream: SonicStream | None = None  # from the first audio not at 1.0 on

    def feed(self, pcm: Pcm, wait_s: float, *, more_coming: bool = False) -> Pcm:
        """The audio to queue now for `pcm`, which plays after `wait_s` of queued audio
        (with `more_coming`, on the `BEHIND` curve)."""
        target = target_rate(wait_s, self._max_rate, BEHIND if more_coming else WAITING)
        if self._stream is None and self.rate == 1.0 and target == 1.0:
            return pcm  # as spoken: untouched
        if self._stream is None:
            self._stream = SonicStream(self._sr, 1)
        for offset in range(0, len(pcm), self._step):
            piece = pcm[offset : offset + self._step]
            self._ease(target, len(piece))
            self._stream.set_speed(self.rate)
            self._stream.write(piece.astype(np.float32) / np.float32(SCALE))
        return self._read()

    def finish(self) -> Pcm:
        """The audio the stretch still holds (the utterance has ended)."""
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        self._stream.flush()
        return self._read()

    def _ease(self, target: float, samples: int) -> None:
        step = SLEW_PER_S * samples / self._sr
        self.rate = min(max(target, self.rate - step), self.rate + step)
        if self.rate > 1.0:
            self.stretched_s += samples / self._sr

    def _read(self) -> Pcm:
        assert self._stream is not None
        available = self._stream.available_frames()
        if not available:
            return np.zeros(0, dtype=np.int16)
        out = np.asarray(self._stream.read(available), dtype=np.float32)
        return np.clip(np.round(out * np.float32(SCALE)), -32768, 32767).astype(np.int16)
