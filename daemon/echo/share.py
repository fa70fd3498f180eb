"""How much of a clip is our own echo: one estimated quantity for the own-speech guard.

What the speaker played, placed one echo path later (`daemon/echo/delay.py`), is what our
echo in the microphone follows, band by band, whatever the room and whatever the
canceller left of it: its power rises and falls with our syllables, smeared by the
room's reverberation. A person's speech does not follow it.

Per band (`BANDS` between `LOW_HZ` and `HIGH_HZ`) and 10 ms block, the clip's power `Y`
is fitted as `Σ g_k · R_k + c`, `R_k` the reference's power spread by reverberation
tails of `DECAYS_S`, at the best of the `LAGS` blocks after the tracked path, by least
squares with an intercept: a person's power, which does not move with ours, lands in
`c` and not in the gains `g_k ≥ 0`. The echo in the clip is `min(Σ g_k · R_k, Y)`, and
`echo_share` its share of the clip's energy: ~1 for our residual alone, ~0 for a person
alone, in between for a person over our echo.
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
DECAYS_S = (0.0, 0.05, 0.2)  # the reverberation's power decays (1/e) fitted together
LAGS = (0, 1, 2, 3, 4, 6, 8)  # blocks the echo may come after the tracked path
MIN_BLOCKS = 20

Floats = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]


def band_powers(pcm: Pcm) -> Floats:
    """Power per 10 ms block (rows) and band (columns)."""
    x = pcm.astype(np.float64) / 32768.0
    blocks = len(x) // HOP
    if blocks == 0:
        return np.zeros((0, BANDS))
    padded = np.concatenate((np.zeros(N_FFT - HOP), x[: blocks * HOP]))
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:blocks]
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(N_FFT), axis=1)) ** 2
    return spectrum @ band_matrix()


def band_matrix() -> Floats:
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    edges = np.geomspace(LOW_HZ, HIGH_HZ, BANDS + 1)
    return np.stack(
        [(freqs >= lo) & (freqs < hi) for lo, hi in itertools.pairwise(edges)],
        axis=1,
    ).astype(np.float64)


def spread(power: Floats) -> Floats:
    """The reference's power as the room spreads it, one exponential tail per decay:
    (blocks, bands, decays)."""
    decays = np.array([np.exp(-0.01 / d) if d else 0.0 for d in DECAYS_S])
    out = np.empty((*power.shape, len(decays)))
    acc = np.zeros((power.shape[1], len(decays)))
    for t in range(len(power)):
        acc = acc * decays + power[t][:, None]
        out[t] = acc
    return out


def echo_share(clip: Pcm, reference: Pcm) -> float:
    """The share of `clip`'s energy that is our echo; `reference` is what we played, one
    echo path earlier, for the same samples plus `max(LAGS)` blocks before them."""
    return echo_share_of(band_powers(clip), spread(band_powers(reference)))


def echo_share_of(y: Floats, r: Floats) -> float:
    """`echo_share` from the clip's band powers `y` and the spread reference `r` (`spread`,
    starting `max(LAGS)` blocks before the clip)."""
    echo = echo_cells(y, r)
    total = float(y[: len(echo)].sum())
    return float(echo.sum()) / total if len(echo) and total > 0.0 else 0.0


def echo_cells(y: Floats, r: Floats) -> Floats:
    """Our echo's power in each block and band of `y` (`echo_share_of`'s arguments), at
    the lag that explains the most; no rows when the clip is too short to fit."""
    lead = max(LAGS)
    blocks = min(len(y), len(r) - lead)
    if blocks < MIN_BLOCKS:
        return np.zeros((0, y.shape[1]))
    y = y[:blocks]
    fits = (_explained(y, r[lead - lag : lead - lag + blocks]) for lag in LAGS)
    return max(fits, key=lambda echo: float(echo.sum()))


def _explained(y: Floats, r: Floats) -> Floats:
    """The power of `y` (blocks, bands) explained by non-negative gains on the spread
    reference `r` (blocks, bands, decays), per band by least squares with an intercept."""
    return np.stack(
        [np.minimum(_fit(y[:, band], r[:, band, :]), y[:, band]) for band in range(y.shape[1])],
        axis=1,
    )


def _fit(y: Floats, x: Floats) -> Floats:
    """The non-negative part `x @ g` of the least-squares fit `y ≈ x @ g + c`, g >= 0."""
    gains = non_negative_fit(x - x.mean(axis=0), y - y.mean())
    echo: Floats = x @ gains
    return echo


def non_negative_fit(x: Floats, y: Floats, start: Mask | None = None) -> Floats:
    """Least squares `y ≈ x @ g` with g >= 0, by Lawson and Hanson's active set on the
    normal equations: columns enter one at a time, the one the residual pulls hardest
    first, and one whose gain would turn negative leaves; the exact optimum, usually
    after as many small solves as columns with a gain. `start`: the columns with a gain
    in a fit like this one (the guard refits with new weights): when their
    unconstrained solution is all positive it is where the search starts, usually one
    or two solves from the optimum (else it starts from none)."""
    scale = float(np.abs(x).max()) or 1.0
    xs = x / scale
    gram, target = xs.T @ xs, xs.T @ y
    columns = x.shape[1]
    gains = np.zeros(columns)
    used = np.zeros(columns, dtype=bool) if start is None else start.copy()
    if used.any():
        gains = _inside(gram, target, gains, used)
    tolerance = 1e-10 * max(1.0, float(np.abs(target).max()))
    for _ in range(3 * columns):
        pull = np.where(used, -np.inf, target - gram @ gains)
        best = int(np.argmax(pull))
        if pull[best] <= tolerance:
            break
        used[best] = True
        gains = _inside(gram, target, gains, used)
    return gains / scale


def _inside(gram: Floats, target: Floats, gains: Floats, used: Mask) -> Floats:
    """Lawson-Hanson's inner loop: the unconstrained solution on the `used` columns, moved
    towards from `gains` only as far as every gain stays >= 0; a column reaching 0 leaves
    (`used` is updated in place)."""
    for _ in range(len(gains)):
        keep = np.flatnonzero(used)
        solution = np.zeros_like(gains)
        solution[keep] = _solve(gram[np.ix_(keep, keep)], target[keep])
        if (solution[keep] > 0).all():
            return solution
        negative = keep[solution[keep] <= 0]
        steps = gains[negative] / np.maximum(gains[negative] - solution[negative], 1e-300)
        gains = gains + float(steps.min()) * (solution - gains)
        used &= gains > 0
        used[negative[int(np.argmin(steps))]] = False
        gains[~used] = 0.0
    return gains


def _solve(a: Floats, b: Floats) -> Floats:
    try:
        return np.asarray(np.linalg.solve(a, b), dtype=np.float64)
    except np.linalg.LinAlgError:  # a singular set of columns (a reference all zeros)
        return np.asarray(np.linalg.lstsq(a, b, rcond=None)[0], dtype=np.float64)
