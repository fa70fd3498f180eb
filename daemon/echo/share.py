"""How much of a clip is our own echo: one estimated quantity for the own-speech guard.

What the speaker played, placed one echo path later (`daemon/echo/delay.py`), is what our
echo in the microphone follows, band by band, whatever the room and whatever the
canceller left of it: its power rises and falls with our syllables, smeared by the
room's reverberation. A person's speech does not follow it.

Per band (`BANDS` between `LOW_HZ` and `HIGH_HZ`) and 10 ms block, the clip's power `Y`
is fitted as `g · R + c`, `R` the reference's power spread by the room's reverberation
(`DECAY_S`), over the `LAGS` blocks around the tracked path, by least squares with an
intercept: a person's power, which does not move with ours, lands in `c` and not in
the gain `g ≥ 0`. The echo in the clip is `min(g · R, Y)`, and `echo_share` its share of
the clip's energy: ~1 for our residual alone, ~0 for a person alone, in between for a
person over our echo.
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt

from daemon.values import SAMPLE_RATE, Pcm

HOP = SAMPLE_RATE // 100  # 10 ms blocks
N_FFT = 512
LOW_HZ, HIGH_HZ = 150.0, 6000.0
BANDS = 12
DECAY_S = 0.1  # the reverberation's power decay (1/e), of the spread reference
LAGS = (0, 1, 2, 3, 4, 6, 8)  # blocks the echo may come after the tracked path
MIN_BLOCKS = 20

Floats = npt.NDArray[np.float64]


def band_powers(pcm: Pcm) -> Floats:
    """Power per 10 ms block (rows) and band (columns)."""
    x = pcm.astype(np.float64) / 32768.0
    blocks = len(x) // HOP
    if blocks == 0:
        return np.zeros((0, BANDS))
    padded = np.concatenate((np.zeros(N_FFT - HOP), x[: blocks * HOP]))
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:blocks]
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(N_FFT), axis=1)) ** 2
    return spectrum @ _band_matrix()


def _band_matrix() -> Floats:
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    edges = np.geomspace(LOW_HZ, HIGH_HZ, BANDS + 1)
    return np.stack(
        [(freqs >= lo) & (freqs < hi) for lo, hi in itertools.pairwise(edges)],
        axis=1,
    ).astype(np.float64)


def _spread(power: Floats) -> Floats:
    """The reference's power as the room spreads it: an exponential tail per band."""
    decay = np.exp(-0.01 / DECAY_S)
    out = np.empty_like(power)
    acc = np.zeros(power.shape[1])
    for t in range(len(power)):
        acc = acc * decay + power[t]
        out[t] = acc
    return out


def echo_share(clip: Pcm, reference: Pcm) -> float:
    """The share of `clip`'s energy that is our echo; `reference` is what we played, one
    echo path earlier, for the same samples plus `max(LAGS)` blocks before them."""
    y = band_powers(clip)
    r = _spread(band_powers(reference))
    lead = max(LAGS)
    blocks = min(len(y), len(r) - lead)
    if blocks < MIN_BLOCKS:
        return 0.0
    y = y[:blocks]
    total = float(y.sum())
    if total <= 0.0:
        return 0.0
    best = 0.0
    for lag in LAGS:
        ref = r[lead - lag : lead - lag + blocks]
        best = max(best, _explained(y, ref) / total)
    return best


def _explained(y: Floats, r: Floats) -> float:
    """Energy of `y` explained by `g · r` per band (least squares with an intercept)."""
    rc = r - r.mean(axis=0)
    yc = y - y.mean(axis=0)
    var = np.einsum("tb,tb->b", rc, rc)
    gain = np.where(var > 0, np.einsum("tb,tb->b", rc, yc) / np.maximum(var, 1e-30), 0.0)
    echo = np.maximum(gain, 0.0) * r
    return float(np.minimum(echo, y).sum())
