"""The echo path's bulk delay, found from what we played and what the microphone heard.

The reference is placed on the capture clock by the delays the devices report
(`reference.py`); real devices misreport (a speakerphone's DSP, a sound server whose
buffer grew after an underrun, HDMI or Bluetooth audio, an amplifier with DSP), and AEC3
only searches about half a second. So while we play, `DelayTracker` measures where our
echo really is: the generalised cross-correlation with phase transform (GCC-PHAT) of the
microphone against the reference, at 8 kHz, over the last `WINDOW_S`, for echo delays of
`MIN_LAG_S` to `MAX_LAG_S` after the reference says the sound left the speaker. The phase
transform whitens both signals, so the peak is the path's first strong arrival, sharp
even in a reverberant room, and a person talking over us adds noise to the correlation
but no peak of their own.

An estimate is taken every `EVERY_S` of playing, from the correlation smoothed over the
last few estimates (`SMOOTHING`). Each lag's correlation is divided by the spread it
has when nothing of our echo is in it (`_seen`): the whitened microphone's energy times
the whitened reference's over that lag's overlap. Our speech starts, pauses and ends
within the reference's span, and the people within the microphone's window, so without
this the lags facing the loudest stretches stand out with no echo at all. The confidence
is how far the peak then stands above the other lags, in robust standard deviations
(`prominence`): with no echo, about four, at most 6.6 in the calibration half of
`scripts/bench_echo_path.py`; our echo at its path 10 in the median. The tracked delay
moves to a new estimate when it is confident (`CONFIDENT`) and the estimate before it,
confident or not, put the path within `AGREE_S` of it (a first one at once when it is
`CERTAIN`): where the peak is confirms, as its height does not, and a short first
translation with someone talking over it gives only a few estimates, the first ones
weak (on the rig: 6.3 then 8.9 at the same lag); more than `NEAR_S` from the
tracked path, only after `FAR_STREAK` agreeing estimates in a row and once that path no
longer stands out (a translation that repeats itself gives a second peak while the first
is still there); a new output stream starts the search afresh (`restart`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from daemon.values import SAMPLE_RATE, Pcm

RATE = SAMPLE_RATE // 2  # the correlation runs at 8 kHz: speech, not its top octave
WINDOW_S = 1.5  # microphone audio correlated per estimate
MIN_LAG_S = -0.25  # the echo may come before the reported DAC time (a late stamp) ...
MAX_LAG_S = 1.5  # ... or this long after it
EVERY_S = 0.25  # of playing between two estimates
MIN_PLAYING_S = 1.0  # of playing in the reference an estimate looks at
SMOOTHING = 0.3  # weight of the older correlation per estimate
SEARCH_SMOOTHING = 0.9  # the same, for the slow correlation that finds a path under talk
BAND_HZ = (200.0, 3600.0)
CONFIDENT = 7.0  # peak prominence (robust sigmas) of an estimate that moves the delay
CERTAIN = 15.0  # a first estimate this prominent is taken at once
AGREE_S = 0.005
NEAR_S = 0.02  # a move this small follows a drifting path at once
FAR_STREAK = 3  # estimates in a row (0.75 s) that a far new path needs
LEAK_AFTER_S = 0.02  # the canceller's output lags its input (8 ms): searched this far on
EARLY_S = 0.1  # of the path's response (after its first arrival) the removal is taken on
REF_FLOOR = 1e-3  # bins 30 dB under the reference's mean power are left out
MIN_BAND_SHARE = 0.2  # of the band's bins the reference must reach for an estimate
PLAYING_RMS = 30.0  # int16 RMS of a 10 ms reference block that counts as playing (-60 dBFS)

REACH_S = 0.48  # a path within this is left to AEC3 (offline: 0.50 s cancelled, 0.52 s not)
SLACK_S = 0.04  # a path found outside it at once: AEC3 is left this much to find
MOVE_S = 0.004  # the shift moves when it is off by more than this (one AEC3 block)

Floats = npt.NDArray[np.float32]
Floats64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class DelayEstimate:
    delay_s: float  # the echo comes this long after the reference says it sounded
    confidence: float  # the peak's prominence, robust standard deviations


class DelayTracker:
    """GCC-PHAT between the reference and the microphone, on stretches where we play."""

    def __init__(self) -> None:
        self._lags = round((MAX_LAG_S - MIN_LAG_S) * RATE)
        self._window = round(WINDOW_S * RATE)
        self._span = self._window + self._lags  # reference samples one estimate needs
        self._nfft = 1 << int(np.ceil(np.log2(self._span)))
        freqs = np.fft.rfftfreq(self._nfft, 1.0 / RATE)
        self._band = (freqs >= BAND_HZ[0]) & (freqs <= BAND_HZ[1])
        self._ref: Floats = np.zeros(self._span, dtype=np.float32)
        self._mic: Floats = np.zeros(self._span, dtype=np.float32)
        self._out: Floats = np.zeros(self._span, dtype=np.float32)  # the canceller's output
        self._g_out: Floats64 | None = None
        self.leak: float | None = None  # our echo's prominence in the output, at the path
        self.removal_db: float | None = None  # how much of our echo the canceller removed
        self._coupling: tuple[float, float] | None = None  # (microphone, output), smoothed
        self._playing = np.zeros(self._span // (RATE // 100), dtype=bool)
        self._g: Floats64 | None = None
        self._g_search: Floats64 | None = None  # smoothed over ~10 estimates
        self._searched: int | None = None  # the slow correlation's last confident peak
        self._since = 0  # 8 kHz samples of playing since the last estimate
        self._candidate: DelayEstimate | None = None
        self._streak = 0  # estimates in a row that agreed with each other
        self.delay_s: float | None = None  # the tracked delay (None: not found yet)
        self.last: DelayEstimate | None = None  # the newest estimate, confident or not

    def restart(self) -> None:
        """A new output stream or a gap in the capture clock: search afresh."""
        self._ref.fill(0.0)
        self._mic.fill(0.0)
        self._out.fill(0.0)
        self._g_out = None
        self.leak = None
        self.removal_db = None
        self._coupling = None
        self._playing.fill(False)
        self._g = None
        self._g_search = None
        self._searched = None
        self._since = 0
        self._candidate = None
        self._streak = 0
        self.delay_s = None
        self.last = None

    def push(self, ref: Pcm, mic: Pcm, out: Pcm) -> DelayEstimate | None:
        """One frame of the reference (unshifted: what the devices say sounded while the
        frame was captured), of the microphone and of the canceller's output; a new
        estimate when one was taken."""
        ref8, mic8 = _decimate(ref), _decimate(mic)
        blocks = len(ref8) // (RATE // 100)
        playing = _block_rms(ref, blocks) > PLAYING_RMS
        self._shift_in(ref8, mic8, playing)
        self._out[: -len(ref8)] = self._out[len(ref8) :]
        self._out[-len(ref8) :] = _decimate(out)
        if playing.any():
            self._since += len(ref8)
        if self._since < EVERY_S * RATE or not self._enough_playing():
            return None
        self._since = 0
        return self._estimate()

    def _shift_in(self, ref8: Floats, mic8: Floats, playing: npt.NDArray[np.bool_]) -> None:
        n = len(ref8)
        for buf, new in ((self._ref, ref8), (self._mic, mic8)):
            buf[:-n] = buf[n:]
            buf[-n:] = new
        k = len(playing)
        self._playing[:-k] = self._playing[k:]
        self._playing[-k:] = playing

    def _enough_playing(self) -> bool:
        """We played in enough of the reference the window's echo can come from."""
        return bool(self._playing.sum() >= MIN_PLAYING_S * 100)

    def _estimate(self) -> DelayEstimate:
        # The microphone's window ends -MIN_LAG_S before the reference's newest sample,
        # so that an echo heard before its reported DAC time is inside the reference.
        first = round(MAX_LAG_S * RATE)
        mic = self._mic[first : first + self._window]
        mic_spec = np.fft.rfft(mic - mic.mean(), self._nfft)
        ref_spec = np.fft.rfft(self._ref - self._ref.mean(), self._nfft)
        power = np.abs(ref_spec) ** 2
        # only where we played something: a bin without reference is noise, and a tone
        # (a few bins) then correlates periodically, with no prominent peak
        used = self._band & (power >= REF_FLOOR * power[self._band].mean())
        ref_white = self._white_power(ref_spec, used)
        seen = self._seen(self._white_power(mic_spec, used), ref_white)
        raw = self._correlate(mic_spec, ref_spec, used, seen)
        self._g = g = _smoothed(self._g, raw, SMOOTHING)
        self._g_search = _smoothed(self._g_search, raw, SEARCH_SMOOTHING)
        peak = int(np.argmax(g))
        broadband = used.sum() >= MIN_BAND_SHARE * self._band.sum()  # not a tone, a hum
        prominence = _prominence(g, peak, peak) if broadband else 0.0
        estimate = DelayEstimate(MIN_LAG_S + peak / RATE, prominence)
        self.last = estimate
        self._follow(estimate, self._prominence_at_path(g, 0.0) >= CONFIDENT)
        if self.delay_s is None and broadband:
            self._search(self._g_search)
        self._leak(mic_spec, ref_spec, used, ref_white, first)
        return estimate

    def _white_power(
        self, spec: npt.NDArray[np.complex128], used: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.complex128]:
        """The spectrum of the whitened signal's power over time (for `_seen`)."""
        white = np.where(used, spec / (np.abs(spec) + 1e-12), 0.0)
        power: npt.NDArray[np.complex128] = np.fft.rfft(np.fft.irfft(white, self._nfft) ** 2)
        return power

    def _seen(self, heard: npt.NDArray[np.complex128], ref: npt.NDArray[np.complex128]) -> Floats64:
        """Per echo delay (as `g`), the spread a correlation with no echo in it has at
        that lag: the root of the whitened window's energy times the whitened
        reference's, sample by sample, over the lag's overlap (`_white_power` of each)."""
        faced = np.fft.irfft(np.conj(heard) * ref, self._nfft)[: self._lags + 1]
        faced = np.maximum(faced, 0.0)
        seen: Floats64 = np.sqrt(faced + 1e-3 * faced.mean() + 1e-30)[::-1]
        return seen

    def _correlate(
        self,
        spec: npt.NDArray[np.complex128],
        ref_spec: npt.NDArray[np.complex128],
        used: npt.NDArray[np.bool_],
        seen: Floats64,
    ) -> Floats64:
        """The PHAT correlation by echo delay, each lag divided by its `seen` spread:
        index j is the delay MIN_LAG_S + j. (g[k] = sum_n x[n] ref[n + k], the window's
        first sample MAX_LAG_S after the reference's: a delay d peaks at
        k = MAX_LAG_S - d.)"""
        cross = np.conj(spec) * ref_spec
        cross[~used] = 0.0
        cross /= np.abs(cross) + 1e-9
        g: Floats64 = np.fft.irfft(cross, self._nfft)[: self._lags + 1][::-1] / seen
        return g

    def _search(self, g: Floats64) -> None:
        """No path found yet: the slow correlation's peak is taken when it is confident
        twice in a row at the same lag. A sound that never stops (people talking over our
        echo all along, a fan) adds noise to each estimate; over ten of them it averages
        down, and an echo far under it can stand out where no single estimate shows it."""
        peak = int(np.argmax(g))
        if _prominence(g, peak, peak) < CONFIDENT:
            self._searched = None
            return
        previous, self._searched = self._searched, peak
        if previous is not None and abs(previous - peak) <= round(AGREE_S * RATE):
            self.delay_s = MIN_LAG_S + peak / RATE

    def _prominence_at_path(self, g: npt.NDArray[np.float64], after_s: float) -> float:
        """How far the tracked path (to `after_s` later) stands out in `g` (0 if none)."""
        if self.delay_s is None:
            return 0.0
        at = round((self.delay_s - MIN_LAG_S) * RATE)
        near = round(AGREE_S * RATE)
        return _prominence(g, max(0, at - near), at + near + round(after_s * RATE))

    def _leak(
        self,
        mic_spec: npt.NDArray[np.complex128],
        ref_spec: npt.NDArray[np.complex128],
        used: npt.NDArray[np.bool_],
        ref_white: npt.NDArray[np.complex128],
        first: int,
    ) -> None:
        """Our echo still in the canceller's output: its correlation with the reference
        at the tracked path (a canceller that cancels leaves none there; a person, noise
        and what its suppressor leaves do not correlate), and `removal_db`."""
        if self.delay_s is None:
            self.leak = self.removal_db = None
            return
        out = self._out[first : first + self._window]
        out_spec = np.fft.rfft(out - out.mean(), self._nfft)
        seen = self._seen(self._white_power(out_spec, used), ref_white)
        raw = self._correlate(out_spec, ref_spec, used, seen)
        self._g_out = g = _smoothed(self._g_out, raw, SMOOTHING)
        self.leak = self._prominence_at_path(g, LEAK_AFTER_S)
        at = round((self.delay_s - MIN_LAG_S) * RATE)
        early = slice(max(0, at - round(AGREE_S * RATE)), at + round(EARLY_S * RATE))
        self._removal(
            *(
                float(np.sum(self._plain(spec, ref_spec, used)[early] ** 2))
                for spec in (mic_spec, out_spec)
            )
        )

    def _plain(
        self,
        spec: npt.NDArray[np.complex128],
        ref_spec: npt.NDArray[np.complex128],
        used: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.float64]:
        """The unwhitened correlation with the reference by echo delay (as `_correlate`)."""
        cross = np.conj(spec) * ref_spec
        cross[~used] = 0.0
        g: npt.NDArray[np.float64] = np.fft.irfft(cross, self._nfft)[: self._lags + 1][::-1]
        return g

    def _removal(self, mic: float, out: float) -> None:
        """How much of our echo the canceller removed (dB): the energy of the plain
        (unwhitened) correlation with the reference over the path's early response, in
        the microphone (`mic`) against in the output (`out`), smoothed like the
        cross-spectrum. Whatever does not follow the reference (a person, noise) averages
        out of both, so however loud our echo is against the room, this is the
        canceller's own figure: a leak in a loud room that cancels 30 dB is still
        cancelling."""
        if self._coupling is not None:
            mic = SMOOTHING * self._coupling[0] + (1.0 - SMOOTHING) * mic
            out = SMOOTHING * self._coupling[1] + (1.0 - SMOOTHING) * out
        self._coupling = (mic, out)
        self.removal_db = 10.0 * float(np.log10((mic + 1e-9) / (out + 1e-9)))

    def _follow(self, estimate: DelayEstimate, still_there: bool) -> None:
        """Move to a confident estimate that the one before it (confident or not)
        confirms; far from the tracked path only after `FAR_STREAK` confident ones and
        once that path has gone (speech that repeats itself, a translation played twice,
        gives a second peak while the first is still there)."""
        candidate, self._candidate = self._candidate, estimate
        if estimate.confidence < CONFIDENT:
            self._streak = 0
            return
        agreed = candidate is not None and abs(candidate.delay_s - estimate.delay_s) <= AGREE_S
        self._streak = self._streak + 1 if agreed else 1
        if self.delay_s is None:
            if agreed or estimate.confidence >= CERTAIN:
                self.delay_s = estimate.delay_s
        elif abs(estimate.delay_s - self.delay_s) <= NEAR_S:
            if agreed:
                self.delay_s = estimate.delay_s
        elif self._streak >= FAR_STREAK and not still_there:
            self.delay_s = estimate.delay_s


def _smoothed(old: Floats64 | None, new: Floats64, weight: float) -> Floats64:
    """`new` with `weight` of the `old` smoothed correlation."""
    return new if old is None else weight * old + (1.0 - weight) * new


def _prominence(g: npt.NDArray[np.float64], lo: int, hi: int) -> float:
    """The peak of g[lo..hi] in robust standard deviations of all of g."""
    median = float(np.median(g))
    spread = 1.4826 * float(np.median(np.abs(g - median))) + 1e-12
    return (float(g[lo : hi + 1].max()) - median) / spread


def _decimate(pcm: Pcm) -> Floats:
    x = pcm.astype(np.float32)
    out: Floats = 0.5 * (x[0::2] + x[1::2])
    return out


def _block_rms(pcm: Pcm, blocks: int) -> npt.NDArray[np.float64]:
    x = pcm[: blocks * (SAMPLE_RATE // 100)].reshape(blocks, -1).astype(np.float64)
    rms: npt.NDArray[np.float64] = np.sqrt(np.mean(x * x, axis=1))
    return rms


class ReferenceShift:
    """How far the reference is shifted (16 kHz samples) for the tracked delay.

    AEC3 finds a path within `REACH_S` by itself, and re-learns it when it moves there;
    the reference is shifted only when the path lies outside that reach (before the
    reference, or later than `REACH_S`): then by as much as brings AEC3 back to the
    delay it last cancelled at (`SLACK_S` for a path found outside its reach at once),
    so that it need not re-learn the path. A canceller that starts afresh learns anew
    whatever it is left, so it is left `SLACK_S` (`afresh`): it failed to cancel at the
    delay it was left.
    """

    def __init__(self) -> None:
        self.samples = 0
        self._learnt = round(SLACK_S * SAMPLE_RATE)  # the delay AEC3 was last left
        self._afresh = False

    def afresh(self) -> None:
        """The canceller starts afresh: at the next tracked delay, it is left `SLACK_S`."""
        self._learnt = round(SLACK_S * SAMPLE_RATE)
        self._afresh = True

    def reaches(self, delay_s: float) -> bool:
        """AEC3 finds a path `delay_s` after the reported DAC time at today's shift."""
        return 0 <= round(delay_s * SAMPLE_RATE) - self.samples <= REACH_S * SAMPLE_RATE

    def follow(self, delay_s: float | None) -> bool:
        """Follow a tracked delay; True when the shift moved."""
        if delay_s is None:
            return False
        delay = round(delay_s * SAMPLE_RATE)
        afresh, self._afresh = self._afresh, False
        if not afresh and self.reaches(delay_s):
            self._learnt = delay - self.samples  # what AEC3 is left to find today
            return False
        target = max(0, delay - self._learnt)
        if abs(target - self.samples) <= MOVE_S * SAMPLE_RATE:
            return False
        self.samples = target
        self._learnt = delay - target
        return True
