"""Input conditioning before any level or speech decision: DC and rumble out.

A cheap USB microphone may add a DC offset; rooms add rumble (air conditioning, traffic,
footsteps) and mains hum far below the voice band. Both lift every frame's level, so
the noise tracking and the energy floor see "loud" where nothing is said (a 0.05 DC
offset is -26 dBFS on every frame). `HighPass` removes them: two cascaded first-order
high-pass sections (a DC blocker each, 12 dB/octave below the cut-off), so DC is gone
completely, 50 Hz hum is about 8 dB down and the voice band (≥ 150 Hz) passes.

Each section is `y[n] = a·y[n-1] + g·(x[n] - x[n-1])`. The recursion is solved in closed
form per frame, `y[n] = aⁿ·(a·y[-1] + Σₖ₌₀..ₙ g·a⁻ᵏ·d[k])` with `d` the sample differences
(see `_Section.run`), so a frame is a handful of vectorised numpy operations on
preallocated buffers instead of a Python loop over samples. The state carries over from
frame to frame: a stream is filtered exactly as if it were one long array.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from daemon.values import SAMPLE_RATE, Pcm

Floats = npt.NDArray[np.float64]
_FULL_SCALE_POWER = 32768.0 * 32768.0
SILENCE_DBFS = -120.0


class _Section:
    """One first-order high-pass section over fixed-size blocks."""

    def __init__(self, cutoff_hz: float, block: int) -> None:
        a = math.exp(-2.0 * math.pi * cutoff_hz / SAMPLE_RATE)
        self._a = a
        self._g = (1.0 + a) / 2.0  # unity gain at Nyquist
        k = np.arange(block, dtype=np.float64)
        self._down: Floats = a**k  # aⁿ
        self._up: Floats = self._g * a ** (-k)  # g·a⁻ᵏ (≤ 1e5 for a 30 ms block at 60 Hz)
        self._diff: Floats = np.zeros(block)
        self._x_prev = 0.0
        self._y_prev = 0.0

    def run(self, x: Floats, out: Floats) -> None:
        """`out[n] = a·out[n-1] + g·(x[n] - x[n-1])`, continuing from the last block."""
        d = self._diff
        d[0] = x[0] - self._x_prev
        np.subtract(x[1:], x[:-1], out=d[1:])
        np.multiply(d, self._up, out=d)
        np.cumsum(d, out=out)
        out += self._a * self._y_prev
        np.multiply(out, self._down, out=out)
        self._x_prev = float(x[-1])
        self._y_prev = float(out[-1])


class HighPass:
    """DC and rumble removal for a stream of `block`-sample int16 frames.

    `process(pcm)` returns the filtered frame as new int16 PCM and its RMS level in
    dBFS (computed on the filtered samples, so the level is free). `cutoff_hz` is the
    -6 dB point (each section's -3 dB point); 0 turns filtering off (the level is still
    computed, on the raw samples).
    """

    def __init__(self, cutoff_hz: float, block: int) -> None:
        if block < 2:
            raise ValueError("block must be at least 2 samples")
        self._block = block
        self._sections = (
            [_Section(cutoff_hz, block), _Section(cutoff_hz, block)] if cutoff_hz > 0 else []
        )
        self._x: Floats = np.zeros(block)
        self._y: Floats = np.zeros(block)
        self._z: Floats = np.zeros(block)

    def process(self, pcm: Pcm) -> tuple[Pcm, float]:
        if len(pcm) != self._block:
            raise ValueError(f"frames of {self._block} samples expected, got {len(pcm)}")
        if not self._sections:
            x = self._x
            np.copyto(x, pcm)
            return pcm, level_dbfs(x)
        np.copyto(self._x, pcm)
        first, second = self._sections
        first.run(self._x, self._y)
        second.run(self._y, self._z)
        level = level_dbfs(self._z)
        np.rint(self._z, out=self._z)
        np.clip(self._z, -32768.0, 32767.0, out=self._z)
        return self._z.astype(np.int16), level


def level_dbfs(samples: Floats) -> float:
    """RMS level in dBFS of int16-scaled float samples (-120 for silence)."""
    power = float(np.dot(samples, samples)) / len(samples) if len(samples) else 0.0
    if power < 1e-6:
        return SILENCE_DBFS
    return 10.0 * math.log10(power / _FULL_SCALE_POWER)
