"""Our echo that the canceller left in a clip to be sent, turned down before it is sent.

AEC3 leaves some of our echo in its output while it learns a path that moved, in a
reverberant room, or under a loudspeaker's distortion; a clip with a person in it is
sent all the same (the own-speech guard judges whether a person is there, not how much
of us is left). What is left still follows what we played, band by band: `share.py`
estimates its power in each 10 ms block and band of the clip (`echo_cells`, the fit the
guard's echo share is made of). Each cell is turned down by the power gain
`1 - OVER * echo / power`, at least `FLOOR`: a cell that is mostly our echo goes, a
person's syllable over it stays. `OVER` makes up for what the fit leaves out of our echo
(its intercept takes whatever does not move with what we played; in double talk a
share of our echo with it).

`OVER` and `FLOOR` were chosen on the calibration half of the room matrix: the largest
`OVER` at which the median person clip keeps at least 90% of the person's energy; the
figures on both halves are in `docs/testing.md`. The gains are applied on the same
512-sample frames, 10 ms apart, that the band powers are measured on (Hann window,
weighted overlap-add), so a clip with nothing of us in it comes out as it went in.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from daemon.echo.share import HOP, LAGS, N_FFT, band_matrix, band_powers, echo_cells, spread
from daemon.values import Pcm

OVER = 4.0  # the echo's estimated power is taken this many times over
FLOOR = 0.01  # a cell keeps at least this much of its power (-20 dB)
LEAD_BLOCKS = max(LAGS)  # of the reference before the clip

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Residual:
    """A clip to be sent (the canceller's output) and what we played one echo path
    earlier, from `LEAD_BLOCKS` blocks before it."""

    cleaned: Pcm
    reference: Pcm

    def suppressed(self) -> tuple[Pcm, float]:
        """The clip with our echo turned down, and the share of the clip's energy taken out."""
        y = band_powers(self.cleaned)
        echo = echo_cells(y, spread(band_powers(self.reference)))
        if not echo.any():
            return self.cleaned, 0.0
        y = y[: len(echo)]
        gains = np.clip(1.0 - OVER * echo / np.maximum(y, 1e-20), FLOOR, 1.0)
        x = self.cleaned.astype(np.float64)
        out = _apply(x, np.sqrt(gains) @ _bins_of_bands().T)
        pcm = np.clip(np.round(out), -32768, 32767).astype(np.int16)
        before, after = float(np.dot(x, x)), float(np.dot(out, out))
        return pcm, max(0.0, 1.0 - after / before) if before > 0 else 0.0


@functools.cache
def _bins_of_bands() -> Floats:
    """(bins, bands): each FFT bin takes its band's gain; bins under the lowest band the
    lowest's, over the highest the highest's."""
    matrix = band_matrix()
    outside = ~matrix.any(axis=1)
    nearest = np.where(np.arange(len(matrix)) < len(matrix) // 2, 0, matrix.shape[1] - 1)
    matrix[outside, nearest[outside]] = 1.0
    return matrix


def _apply(x: Floats, gains: Floats) -> Floats:
    """`x` with each bin of each frame of `band_powers`' framing scaled by `gains` (frames,
    bins; frames past the last keep the last's), by weighted overlap-add."""
    frames = -(-(len(x) + N_FFT - HOP) // HOP)
    padded = np.concatenate((np.zeros(N_FFT - HOP), x, np.zeros(frames * HOP + HOP - len(x))))
    window = np.hanning(N_FFT)
    spans = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:frames]
    scale = np.concatenate((gains, np.repeat(gains[-1:], frames - len(gains), axis=0)))
    frames_out = np.fft.irfft(np.fft.rfft(spans * window, axis=1) * scale, n=N_FFT, axis=1)
    out = np.zeros(len(padded))
    weight = np.zeros(len(padded))
    index = np.arange(frames)[:, None] * HOP + np.arange(N_FFT)
    np.add.at(out, index, frames_out * window)
    np.add.at(weight, index, np.broadcast_to(window * window, index.shape))
    start = N_FFT - HOP
    kept = out[start : start + len(x)]
    norm = weight[start : start + len(x)]
    return np.where(norm > 1e-6, kept / np.maximum(norm, 1e-6), x)
