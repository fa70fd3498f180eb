"""The own-speech guard: a clip that is our own translation coming back is never sent.

One measure decides: how much of what the microphone heard over the clip the echo of
what we played cannot explain; a clip that passes as ours is still sent when what would
be sent does not carry our echo.

The microphone hears our echo, the people and the room's noise; their powers add. Our
echo's power in each band follows what the speaker played one echo path earlier
(`daemon/echo/delay.py`), spread by the room's reverberation, whatever the canceller
then removes of it. So, per band (`daemon/echo/share.py`'s bands and reverberation
tails) and 10 ms block, the microphone's power over the clip is predicted as the room's
noise (`noise_of`) plus non-negative gains on the spread
reference at the tracked path and a few blocks after it, and on what we played clipped
at `CLIP_AT` of its peak (a loudspeaker driven into distortion puts harmonics of our
speech in bands it leaves empty), fitted by least squares in which each block counts
by its error relative to its power (`_predict`): fitted in plain power, the loud blocks
of our speech would decide the gains alone and the reverberation's decay after a
translation ends, 20-50 dB further down, would be left unexplained. Blocks far above
the prediction (`OUTLIER`) are left out and it is fitted again, so that a person does
not inflate the gains. The fit is made twice: at the tracked path,
and where the clip's level envelope follows what we played best within `SEARCH_BLOCKS`
after it (the path is not found in the first seconds after a start, and a path that
just moved is found again only seconds later); the lower share counts.

The measure is the share of the clip's loud cells (a band in a block, `LOUD_DB` over the
band's noise) that lie more than `FOREIGN_DB` above that prediction: someone else's
sound. Speech is sparse in time and frequency, so a person's syllables stand out in many
cells even 6-10 dB under our echo; our echo alone, partly cancelled or not, leaves
almost none (the prediction of a power that follows ours). It is judged on the
microphone, not on the canceller's output: the canceller's non-linear suppression makes
what it leaves of our echo follow no reference, while the microphone is plain physics.

A clip of which less than `OURS_BELOW` is foreign is ours (`Verdict`), however little of
our echo the canceller left in it: sending what is left (the room's noise, our residual)
makes a translation that plays, is heard and is cut again, and the room does not come to
rest (the rig's loud-loudspeaker meeting fed back so). A clip that is ours is not sent, counted
(`echo_dropped`) and ends as dropped with reason `echo`. The threshold, the two
levels above, the clipping level and the fit's range (`RANGE_DB`) were chosen on the
calibration half of the room matrix (`scripts/bench_echo.py --matrix`) by its ROC; the
figures on the other half are in `docs/testing.md`. A clip too short to judge (under
`MIN_BLOCKS`), or over which nothing played, is sent.

What a clip is judged on is copied when it is cut (`Evidence`: the histories move on);
`Evidence.measure` is pure and takes up to ~150 ms here (the fits), so the daemon runs
it on a worker thread (`daemon/echo/screening.py`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from daemon.echo.share import HOP, LAGS, band_powers, echo_share_of, non_negative_fit, spread
from daemon.values import SAMPLE_RATE, Pcm

OURS_BELOW = 0.06  # a clip with less of its loud cells foreign is our own voice
FOREIGN_DB = 6.0  # a cell this far above the echo's prediction is someone else's
LOUD_DB = 10.0  # a cell this far over the band's noise is judged at all
OUTLIER = 4.0  # cells above this times the prediction are left out of the next fit
RANGE_DB = 40.0  # the fit weighs blocks down to this far under the band's loudest
FITS = 8  # at most; the fit stops sooner when the prediction is settled:
SETTLED = 0.01  # no block's prediction moved by this much of it
MIN_BLOCKS = 20
SEARCH_BLOCKS = 100  # before the path is found, the echo may come up to 1 s late
LEAD_BLOCKS = SEARCH_BLOCKS + max(LAGS)  # of the reference before the clip
CLIP_AT = 0.3  # of the reference's peak: where the loudspeaker's distortion is modelled
CLIP_LAGS = (0, 2)
BEFORE_S = 5.0  # a clip is widened back at most this far to where someone else began
NOISE_PERCENTILE = 5.0  # of a band's powers over the clip: where the room's noise is read
WINDOW_BLOCKS = 50  # judged as a clip is, window by window, back from the clip's start
STEP_BLOCKS = 10

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Measures:
    """A clip's figures."""

    foreign_share: float | None  # None: not judged (too short, nothing loud or played)
    echo_share: float  # the share of the cleaned clip's energy estimated our echo (share.py)
    heard_before: int = 0  # samples before the clip someone else was heard (`heard_before`)

    @property
    def ours(self) -> bool:
        return self.foreign_share is not None and self.foreign_share < OURS_BELOW


@dataclass(frozen=True, slots=True)
class Verdict:
    """A clip judged our own speech, with its figures."""

    foreign_share: float
    echo_share: float

    def describe(self) -> str:
        return (
            f"{self.foreign_share:.0%} of its loud sound foreign (under {OURS_BELOW:.0%}),"
            f" {self.echo_share:.0%} of what the canceller left estimated our echo"
        )


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a clip is judged on: the cleaned clip, the microphone over the same samples,
    and what we played one echo path earlier from `LEAD_BLOCKS` blocks before them (None:
    nothing played)."""

    cleaned: Pcm
    mic: Pcm
    reference: Pcm | None
    before: tuple[Pcm, Pcm] | None = None  # the microphone over the `BEFORE_S` before
    # the clip and what we played one echo path earlier from `LEAD_BLOCKS` before that
    # (None: not asked, the clip is not widened back)

    def measure(self) -> Measures:
        if self.reference is None:
            return Measures(None, 0.0)
        played = band_powers(self.reference)
        r = spread(played)
        y = band_powers(self.mic)
        foreign = _foreign_share(y, played, r, clipped(self.reference), search=True)
        share = echo_share_of(band_powers(self.cleaned), r[LEAD_BLOCKS - max(LAGS) :])
        measures = Measures(foreign, share)
        if self.before is None or measures.ours:  # (a clip judged ours is not widened)
            return measures
        return Measures(foreign, share, heard_before(*self.before))


def clipped(reference: Pcm) -> Floats:
    """The spread band powers of `reference` clipped at `CLIP_AT` of its peak: the fit's
    model of a loudspeaker's distortion (harmonics in bands our speech leaves empty)."""
    peak = float(np.abs(reference.astype(np.float64)).max()) * CLIP_AT
    return spread(band_powers(np.clip(reference, -peak, peak).astype(np.int16)))


def foreign_share(mic: Pcm, reference: Pcm, *, search: bool) -> float | None:
    """The share of the loud cells of `mic` that our echo does not explain; `reference` is
    what we played one echo path earlier, for the same samples plus `LEAD_BLOCKS` blocks
    before them (with `search`, when that is not under `OURS_BELOW`, also fitted where the
    clip's envelope places our echo; the lower share counts). None when the clip is too
    short to judge or nothing in it is loud."""
    played = band_powers(reference)
    y = band_powers(mic)
    return _foreign_share(y, played, spread(played), clipped(reference), search=search)


def _foreign_share(
    y: Floats,
    played: Floats,
    r: Floats,
    distorted: Floats,
    *,
    search: bool,
) -> float | None:
    """`foreign_share` from the band powers of the microphone `y` and of the reference
    `played`, the spread reference `r` and its `clipped` version `distorted`."""
    cells = _foreign_cells(y, played, r, distorted, search=search)
    return None if cells is None else _share(*cells)


def heard_before(mic: Pcm, reference: Pcm) -> int:
    """How many samples before a clip (`mic`: the microphone over the stretch before it;
    `reference` as for `foreign_share`) someone else was heard without a break: from the
    clip's start back in steps of `STEP_BLOCKS`, as long as the last `WINDOW_BLOCKS`
    would not be judged ours (at least `OURS_BELOW` of their loud cells foreign), and
    the window where that ends. AEC3's suppressor can keep a person who starts over our
    speech under the VAD for seconds; their clip is widened back to where the
    microphone heard them begin."""
    played = band_powers(reference)
    cells = _foreign_cells(band_powers(mic), played, spread(played), clipped(reference))
    if cells is None:
        return 0
    foreign, loud = cells
    f = np.concatenate(([0], np.cumsum(foreign.sum(axis=1))))
    n = np.concatenate(([0], np.cumsum(loud.sum(axis=1))))
    end = len(foreign)
    while end >= WINDOW_BLOCKS:
        f_w, n_w = f[end] - f[end - WINDOW_BLOCKS], n[end] - n[end - WINDOW_BLOCKS]
        if n_w == 0 or f_w < OURS_BELOW * n_w:
            break
        end -= STEP_BLOCKS
    if end == len(foreign):
        return 0
    return (len(foreign) - max(end - WINDOW_BLOCKS, 0)) * HOP  # (the onset is in that window)


Cells = npt.NDArray[np.bool_]


def _share(foreign: Cells, loud: Cells) -> float:
    return float(foreign.sum() / loud.sum())


def _foreign_cells(
    y: Floats,
    played: Floats,
    r: Floats,
    distorted: Floats,
    *,
    search: bool = True,
) -> tuple[Cells, Cells] | None:
    """The foreign and the loud cells of `y` (`_foreign_share`'s arguments), fitted at
    the tracked path and, with `search` when that is not judged ours, also where the
    level envelope places our echo (the fit with the lower share counts); None when too
    short to judge or nothing is loud."""
    blocks = min(len(y), len(played) - LEAD_BLOCKS)
    if blocks < MIN_BLOCKS:
        return None
    y = y[:blocks]
    noise = noise_of(y)
    loud = y > noise * 10.0 ** (LOUD_DB / 10.0)
    if not loud.any():
        return None
    foreign = _foreign(y, r, distorted, later=0, noise=noise, loud=loud)
    if not search or _share(foreign, loud) < OURS_BELOW:
        return foreign, loud
    later = _later(y, played)
    if later == 0:
        return foreign, loud
    moved = _foreign(y, r, distorted, later=later, noise=noise, loud=loud)
    return (moved if _share(moved, loud) < _share(foreign, loud) else foreign), loud


def _foreign(
    y: Floats,
    r: Floats,
    distorted: Floats,
    *,
    later: int,
    noise: Floats,
    loud: Cells,
) -> Cells:
    """The loud cells above the echo predicted `later` blocks after the path."""
    blocks = len(y)
    first = LEAD_BLOCKS - later
    columns = [r[first - lag : first - lag + blocks] for lag in LAGS]
    columns += [distorted[first - lag : first - lag + blocks] for lag in CLIP_LAGS]
    x = np.concatenate(columns, axis=2)
    predicted = np.stack([_predict(y[:, b], x[:, b, :], noise[b]) for b in range(y.shape[1])], 1)
    foreign: Cells = loud & (y > predicted * 10.0 ** (FOREIGN_DB / 10.0))
    return foreign


def noise_of(y: Floats) -> Floats:
    """The room noise's mean power per band under the band powers `y`: their
    `NOISE_PERCENTILE`th percentile (the quietest blocks, where neither our echo nor a
    person is), scaled to the mean by `noise_scale`."""
    return np.percentile(y, NOISE_PERCENTILE, axis=0) / noise_scale()


@functools.cache
def noise_scale() -> Floats:
    """Per band, the `NOISE_PERCENTILE`th percentile of a steady noise's 10 ms band powers
    over their mean, from a minute of white noise (a fixed seed: the same figures on
    every start). A band two or three FFT bins wide scatters like a chi-square of a few
    degrees of freedom: its 5th percentile lies 8-9 dB under its mean (the widest band:
    1.5 dB), and a quarter of a steady noise's blocks in it would be `LOUD_DB` over the
    percentile, each one foreign where our echo is weak there (the room matrix's clips of
    our voice alone sent, most of them, once nobody talks). Over the mean, almost none."""
    noise = np.random.default_rng(0).standard_normal(60 * SAMPLE_RATE) * 3000.0
    y = band_powers(noise.astype(np.int16))
    scale: Floats = np.percentile(y, NOISE_PERCENTILE, axis=0) / y.mean(axis=0)
    return scale


def _later(y: Floats, played: Floats) -> int:
    """How many blocks (0..`SEARCH_BLOCKS`) after the path the reference is placed at the
    clip's level envelope follows what we played best: the path is not found yet in the
    first seconds after a start or a reopen, and a path that just moved is found again
    only after a few seconds."""
    heard = np.log10(y.sum(axis=1) + 1e-10)
    level = np.log10(played.sum(axis=1) + 1e-10)
    windows = np.lib.stride_tricks.sliding_window_view(level, len(heard))
    windows = windows[max(LAGS) : LEAD_BLOCKS + 1]  # starting LEAD_BLOCKS - later
    heard = heard - heard.mean()
    centred = windows - windows.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred**2).sum(axis=1) * (heard**2).sum()) + 1e-12
    correlation = (centred @ heard) / norms
    return LEAD_BLOCKS - (max(LAGS) + int(np.argmax(correlation)))


def _predict(y: Floats, x: Floats, noise: float) -> Floats:
    """The band's power predicted from the spread reference `x` (blocks, columns) and the
    noise: each block weighed by the inverse of its power (a block's band power scatters
    in proportion to its mean, so each counts by its relative error; a power under the
    noise or more than `RANGE_DB` under the band's loudest counts as that), the
    microphone's power the first time and the prediction after; blocks far over the
    prediction (`OUTLIER`) are left out of the next fit."""
    floor = max(float(y.max()) * 10.0 ** (-RANGE_DB / 10.0), noise, 1e-30)
    predicted = np.full_like(y, noise)
    scale = np.maximum(y, floor)
    fitted = np.ones(len(y), dtype=bool)
    support = None  # the columns with a gain in the last fit: where the next one starts
    for _ in range(FITS):
        if fitted.sum() <= x.shape[1]:
            break
        weight = 1.0 / scale[fitted]
        gains = non_negative_fit(x[fitted] * weight[:, None], (y[fitted] - noise) * weight, support)
        support = gains > 0
        before, predicted = predicted, x @ gains + noise
        kept = y < predicted * OUTLIER
        if (kept == fitted).all() and np.allclose(predicted, before, rtol=SETTLED, atol=0.0):
            break
        fitted, scale = kept, np.maximum(predicted, floor)
    return predicted
