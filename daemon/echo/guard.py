"""The own-speech guard: a clip that is our own translation coming back is never sent.

Even with the canceller, the segmenter can cut a clip that is mostly our own voice: the
residual echo of a loud passage, or the echo heard before the canceller has converged
(the first seconds after start or after a device reopen). Such a clip is judged from two
signals the echo stage records per 10 ms block on the capture clock (`EchoLedger`):

- **envelope correlation**: the clip's level envelope (after the canceller) against the
  envelope of what the speaker played, over acoustic delays of 0–`MAX_LAG_S`. Our voice
  coming back follows our syllables whatever its level (converged or not); a person's
  speech does not, even while our translation plays underneath it.
- **foreign blocks** (while the canceller converges): at the best lag, the share of the
  microphone's audible 10 ms blocks that are more than `FOREIGN_DB` louder than the
  envelope fit predicts: someone talking in our pauses. A raw mix of a person and our
  equally loud echo correlates well too; the foreign blocks keep it from being dropped.
  (After the canceller's non-linear suppression the cleaned residual looks "foreign"
  itself, so this test is not used on cleaned clips.)

(The canceller's removal, mic level minus output level, is logged but not used: AEC3
turns a person who talks over us down by 15–20 dB too, so it cannot tell them apart.)

After convergence a third signal catches **our residual**: when the echo path shifts
(seen on the rig under load, whose room streams stall: the echo arrives tens of ms
later, in steps), AEC3 leaks bursts of our voice while it re-adapts, and even a
converged canceller leaves a residual 35–60 dB down that the VAD can cut while our
speech plays. Its envelope no longer follows ours, but the microphone's does, and the
canceller kept almost nothing of what the microphone heard. Two figures measure that:

- `kept`: the share of the mic's audible blocks the output keeps within `KEPT_DB`:
  0–1% for our residual on the rig (2–15% in composed rooms whose echo path jumps by
  150 ms), 5–30% for a person 10 dB under our echo, 30–90% for one as loud;
- `drop`: how far the output's loudest blocks lie under the microphone's (95th
  percentiles): our residual 30–60 dB on the rig, a person 1–5 dB there and at most
  21 dB in composed rooms when 10 dB under our echo.

A clip whose loudest blocks came through at least `RESIDUAL_DROP_DB` under the
microphone's is ours (nobody spoke over us, or 25 dB under our echo). So is one whose
microphone envelope passes the raw test and whose output kept at most `MAX_KEPT_SHARE`,
or whose microphone envelope is our echo's almost exactly (`ECHO_ONLY_CORRELATION`: a
person 10 dB under our echo reaches 0.90, our partly cancelled echo on the rig 0.98).
So is a cleaned clip that follows our envelope fairly well
(`CORRELATION_CLEANED_LOW_KEPT`) of which the canceller kept little
(`MAX_KEPT_SHARE_CLEANED`): on the rig our residual fed back after a meeting at 0.69 with
14% kept; people reach 0.51 in composed rooms, 0.62 on the rig with 32% kept. A clip
judged ours does not stop the next clip's double-talk widening: a person's first word
at the end of our residual is sent with the person.

The other way round, a clip of which the canceller kept most (`KEPT_AS_MICROPHONE`: it
is not cancelling, e.g. while it re-adapts) is judged like one while it converges: on
the microphone, with the foreign test. Measured on the rig under load, a person's whole
turn over our uncancelled echo has a cleaned envelope correlation of 0.82; only the
foreign blocks tell them apart.

While the canceller converges (its first `CONVERGE_S` of our speech after a start or a
device reopen) its output is close to the raw microphone, and what is judged is the
microphone's envelope, with a stricter limit on foreign blocks (`MAX_FOREIGN_SHARE_RAW`):
measured, our echo alone has none there, a person at the echo's level 8-17%. Only a
clip during which the speaker played for at least `MIN_PLAYING_SHARE` of its length is
judged by its envelope; a shorter one only by its loudest blocks (`RESIDUAL_DROP_DB`):
the last syllables of our speech, cancelled, that the VAD cut after it ended (on the
rig, a 0.3 s burst 29 dB under the microphone's, after a meeting on a busy machine).
Thresholds were set on composed rooms (see `scripts/bench_echo.py`) with a margin on
both sides; a dropped clip is counted (`echo_dropped`) and ends as dropped with reason
`echo`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from daemon.values import SAMPLE_RATE, Pcm, Utterance

BLOCK = SAMPLE_RATE // 100  # 10 ms
LEDGER_S = 120.0  # how far back clips can be judged (max utterance + queue wait)
SILENT_DB = -100.0
FLOOR_DB = -75.0  # envelope floor: silence does not dominate the correlation
REF_PLAYING_DBFS = -60.0
MIN_PLAYING_SHARE = 0.3
MAX_LAG_S = 0.4
CORRELATION_RAW = 0.6  # measured: our echo alone 0.74-0.93
CORRELATION_CLEANED = 0.7  # measured: residual clips 0.62-0.71, people 0-0.55
FOREIGN_DB = 10.0  # a block this much louder than our echo predicts is someone else
MAX_FOREIGN_SHARE_RAW = 0.04
MIN_WITHIN = 0.3  # the envelope follows our syllables too, not only our start and stop
KEPT_DB = 10.0  # an output block within this of the microphone's: the canceller kept it
MAX_KEPT_SHARE = 0.03  # measured: our residual 0-15% (rig 0-1%), people 5-90%
CORRELATION_CLEANED_LOW_KEPT = 0.6  # measured: people <= 0.51 (composed), 0.62 kept 32% (rig)
MAX_KEPT_SHARE_CLEANED = 0.2  # ... with at most this kept (rig residual: 0.69, kept 14%)
RESIDUAL_DROP_DB = 25.0  # measured: people <= 21 dB (composed), 1-5 dB (rig); residual 30-60
ECHO_ONLY_CORRELATION = 0.95  # measured: people <= 0.90 (10 dB under our echo), rig
ECHO_ONLY_WITHIN = 0.8  # residual 0.95-0.99 (0.83-0.95 while we played)
KEPT_AS_MICROPHONE = 0.5  # the canceller kept this much: judged like the microphone
MIC_AUDIBLE_DBFS = -60.0
MIN_BLOCKS = 10

Levels = npt.NDArray[np.float32]
log = logging.getLogger(__name__)


def block_levels(pcm: Pcm) -> Levels:
    """Level (dBFS) of each 10 ms block of `pcm` (whose length is a multiple of BLOCK)."""
    blocks = pcm.reshape(-1, BLOCK).astype(np.float32)
    power = np.einsum("ij,ij->i", blocks, blocks) / np.float32(BLOCK * 32768.0 * 32768.0)
    levels: Levels = (10.0 * np.log10(power + np.float32(1e-10))).astype(np.float32)
    return levels


class EchoLedger:
    """Reference and microphone levels per 10 ms block, indexed by the capture clock."""

    def __init__(self, seconds: float = LEDGER_S) -> None:
        size = round(seconds * SAMPLE_RATE / BLOCK)
        self._ref: Levels = np.full(size, SILENT_DB, dtype=np.float32)
        self._mic: Levels = np.full(size, SILENT_DB, dtype=np.float32)
        self._next = 0  # block index one past the newest noted

    def note(self, start: int, ref_db: Levels, mic_db: Levels) -> None:
        first = start // BLOCK
        self._clear(self._next, first)  # blocks skipped by a clock jump: unknown
        size = len(self._ref)
        slots = np.arange(first, first + len(ref_db)) % size
        self._ref[slots] = ref_db
        self._mic[slots] = mic_db
        self._next = max(self._next, first + len(ref_db))

    def realign(self, start: int, ref_db: Levels) -> None:
        """Replace the reference levels of blocks noted from `start` on (a new shift)."""
        first = start // BLOCK
        known = np.arange(first, first + len(ref_db))
        keep = (known < self._next) & (known >= self._next - len(self._ref))
        self._ref[known[keep] % len(self._ref)] = ref_db[keep]

    def levels(self, start: int, end: int) -> tuple[Levels, Levels]:
        """(reference, microphone) levels of the blocks of samples [start, end)."""
        first, last = start // BLOCK, end // BLOCK
        size = len(self._ref)
        known = np.arange(first, last)
        slots = known % size
        valid = (known < self._next) & (known >= self._next - size)
        ref = np.where(valid, self._ref[slots], SILENT_DB).astype(np.float32)
        mic = np.where(valid, self._mic[slots], SILENT_DB).astype(np.float32)
        return ref, mic

    def _clear(self, first: int, last: int) -> None:
        size = len(self._ref)
        if last - first >= size:
            self._ref.fill(SILENT_DB)
            self._mic.fill(SILENT_DB)
        elif last > first:
            slots = np.arange(first, last) % size
            self._ref[slots] = SILENT_DB
            self._mic[slots] = SILENT_DB


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a clip was judged to be our own speech, with the figures."""

    correlation: float
    within: float
    foreign_share: float
    removal_db: float
    playing_share: float
    converged: bool
    kept_share: float
    drop_db: float  # the output's loudest blocks under the microphone's (95th percentiles)
    signal: str  # what judged: "cleaned", "microphone" (converging), "residual", "share"

    def describe(self) -> str:
        what = {
            "cleaned": "cleaned",
            "microphone": "microphone" + ("" if self.converged else " (canceller converging)"),
            "residual": "microphone (residual)",
            "share": "estimated echo share over half, cleaned",
        }[self.signal]
        return (
            f"{what} envelope correlation {self.correlation:.2f} ({self.within:.2f} while we"
            f" played), foreign {self.foreign_share:.0%}, canceller removed"
            f" {self.removal_db:.0f} dB and kept {self.kept_share:.0%} (loudest"
            f" {self.drop_db:.0f} dB under the microphone's),"
            f" played during {self.playing_share:.0%} of it"
        )


class OwnSpeechGuard:
    """Judges clips from the ledger; `judge` is None for a clip that may be sent."""

    def __init__(self, ledger: EchoLedger) -> None:
        self._ledger = ledger
        self.last: Verdict | None = None  # the last clip's figures, ours or not

    def judge(self, utt: Utterance, *, converged: bool) -> Verdict | None:
        """`converged`: the canceller had converged for the whole clip. Before that its
        output is close to the raw microphone, and the microphone's envelope is judged
        (stricter on foreign blocks); after, the cleaned clip's, then our residual's."""
        self.last = None
        ref_db, mic_db = self._ledger.levels(utt.start, utt.end)
        blocks = min(len(ref_db), len(utt.pcm) // BLOCK)
        if blocks < MIN_BLOCKS:
            return None
        ref_db, mic_db = ref_db[:blocks], mic_db[:blocks]
        out_db = block_levels(utt.pcm[: blocks * BLOCK])
        playing = ref_db > REF_PLAYING_DBFS
        share = float(playing.mean())
        drop = loudest_drop(mic_db, out_db)
        kept = kept_share(mic_db, out_db)
        if share >= MIN_PLAYING_SHARE:
            own, signal, figures = _judged(
                mic_db, ref_db, out_db, (kept, drop), converged=converged
            )
        elif drop >= RESIDUAL_DROP_DB:  # the end of our speech, all of it cancelled
            own, signal, figures = True, "residual", envelope_match(mic_db, ref_db)
        else:
            return None
        removal = float(np.median(mic_db[playing] - out_db[playing])) if playing.any() else 0.0
        verdict = Verdict(*figures, removal, share, converged, kept, drop, signal)
        self.last = verdict
        log.info(
            "utterance %d %s: %s",
            utt.id,
            "is our own speech" if own else "passes",
            verdict.describe(),
        )
        return verdict if own else None


def _judged(
    mic_db: Levels,
    ref_db: Levels,
    out_db: Levels,
    removed: tuple[float, float],
    *,
    converged: bool,
) -> tuple[bool, str, tuple[float, float, float]]:
    """(own speech?, the signal judged, its envelope figures); `removed` is what the
    canceller did: (kept share, drop of the loudest blocks in dB)."""
    kept, drop = removed
    raw = envelope_match(mic_db, ref_db)
    raw_own = _follows(raw, CORRELATION_RAW, MAX_FOREIGN_SHARE_RAW)
    if not converged or kept >= KEPT_AS_MICROPHONE:  # the output is close to the mic's
        return raw_own, "microphone", raw
    cleaned = envelope_match(out_db, ref_db)  # its residual is not linear: no foreign test
    little_kept = kept <= MAX_KEPT_SHARE_CLEANED  # then following us fairly well is enough
    threshold = CORRELATION_CLEANED_LOW_KEPT if little_kept else CORRELATION_CLEANED
    if _follows(cleaned, threshold, 1.0):
        return True, "cleaned", cleaned
    residual = (
        drop >= RESIDUAL_DROP_DB  # nothing loud came through: nobody spoke over us
        or _echo_only(raw)  # nobody added to what the microphone heard of us
        or (raw_own and kept <= MAX_KEPT_SHARE)  # it heard us, and nothing of it was kept
    )
    return (True, "residual", raw) if residual else (False, "cleaned", cleaned)


def _echo_only(raw: tuple[float, float, float]) -> bool:
    """The microphone's envelope is our echo's almost exactly: no person adds to it."""
    return raw[0] >= ECHO_ONLY_CORRELATION and raw[1] >= ECHO_ONLY_WITHIN


def _follows(figures: tuple[float, float, float], threshold: float, limit: float) -> bool:
    correlation, within, foreign = figures
    return correlation >= threshold and within >= MIN_WITHIN and foreign <= limit


def kept_share(mic_db: Levels, out_db: Levels) -> float:
    """The share of the microphone's audible blocks the canceller's output kept (within
    KEPT_DB of the microphone's level): some of a person's always survive; of our residual
    none do."""
    audible = mic_db > MIC_AUDIBLE_DBFS
    if not audible.any():
        return 0.0
    return float(np.mean(out_db[audible] >= mic_db[audible] - KEPT_DB))


def loudest_drop(mic_db: Levels, out_db: Levels) -> float:
    """How far the output's loudest blocks lie under the microphone's (dB, 95th
    percentiles): a person's loudest syllables come through the canceller; of our
    residual nothing loud does."""
    return float(np.percentile(mic_db, 95) - np.percentile(out_db, 95))


def envelope_match(out_db: Levels, ref_db: Levels) -> tuple[float, float, float]:
    """How well the clip's level envelope follows what the speaker played.

    Returns (correlation, within, foreign): the best Pearson correlation of the two
    envelopes with `out` lagging `ref` by 0 to MAX_LAG_S (the acoustic path and the
    canceller's delay); at that lag the correlation over the blocks where we played only
    (our syllables, not just our starting and stopping: a steady tone starting with a
    person correlates with them, it does not follow them); and the share of the clip's
    audible blocks that are more than FOREIGN_DB louder than the envelope fit predicts:
    someone else talking while we paused. Our own voice coming back has high
    correlations and almost no foreign blocks; a person talking over our speech, even
    when our echo is as loud, does not.
    """
    out = np.maximum(out_db, FLOOR_DB).astype(np.float64)
    ref = np.maximum(ref_db, FLOOR_DB).astype(np.float64)
    best, best_lag = 0.0, 0
    for lag in range(round(MAX_LAG_S * 100) + 1):
        a, b = out[lag:], ref[: len(ref) - lag]
        if len(a) < MIN_BLOCKS:
            break
        if a.std() < 1e-6 or b.std() < 1e-6:
            continue
        r = float(np.corrcoef(a, b)[0, 1])
        if r > best:
            best, best_lag = r, lag
    if best <= 0.0:
        return 0.0, 0.0, 1.0
    a, b = out[best_lag:], ref[: len(ref) - best_lag]
    playing = b > REF_PLAYING_DBFS
    within = 0.0
    if playing.sum() >= MIN_BLOCKS and a[playing].std() > 1e-6 and b[playing].std() > 1e-6:
        within = float(np.corrcoef(a[playing], b[playing])[0, 1])
    slope, offset = np.polyfit(b, a, 1)
    residual = a - (slope * b + offset)
    audible = a > FLOOR_DB + 10.0
    if not audible.any():
        return best, within, 0.0
    return best, within, float(np.mean(residual[audible] > FOREIGN_DB))
