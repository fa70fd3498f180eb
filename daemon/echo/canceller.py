"""The acoustic echo canceller stage (`echo_guard = "aec"`): full duplex.

Each microphone frame goes through WebRTC's AEC3 (`pywebrtc_audio.AudioProcessor`, with
its high-pass filter) together with the reference of exactly what the speaker played
while the frame was captured (`ReferenceAligner`). What comes out is the room without our
own voice: people who talk over the translation are kept (AEC3 turns them down by a few
dB while it cancels), our speech is removed by ~30 dB once the canceller has converged.

The canceller adds `AEC_DELAY_SAMPLES` (8 ms) of delay; the frame keeps its clock, so clip
times are 8 ms late, far inside the segmenter's pre-roll. While nothing has played for
`IDLE_AFTER_S` it is bypassed (the same delay, no processing): a quiet room costs
nothing, and the canceller keeps what it learnt of the room for the next translation.

The stage keeps what the microphone heard and what we played one echo path earlier on
the capture clock; the own-speech guard (`daemon/echo/guard.py`) judges each clip from
them before anything is sent (`screen`), and what our echo left in a clip to be sent is
turned down (`residual`, `daemon/echo/residual.py`).

Double talk (`double_talk()` is true while our speech plays): while it cancels our
speech, AEC3's suppressor also turns down a person who talks over it, most at their
first and last syllables (measured: 20–30 dB for up to ~0.5 s when our playback and the
person start together, up to ~0.75 s on a loaded machine, 1.1 s seen once), so the VAD
opens late and closes early. A clip during which our speech played is therefore widened from the
cleaned audio the stage keeps (`HISTORY_S`): `DT_PRE_ROLL_S` earlier, or further back to
where the microphone heard someone else begin (`guard.heard_before`: a person can stay
under the VAD for 2.6 s; never into the clip sent before; a clip judged our own speech
was not sent) and up to
`DT_POST_ROLL_S` later (audio the segmenter's hangover has already seen, so no latency is
added). The clip keeps its id; its times move with it.
The same suppression makes the segmenter's Silero clip confirmation doubt a person talking
over us (measured: a 1.8 s stretch of a turn dropped as "noise"), so frames in double talk
count as confirmed (`DoubleTalkConfirmer`): the own-speech guard judges those clips.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from daemon.counters import Counters
from daemon.echo.delay import CONFIDENT, MOVE_S, DelayTracker, ReferenceShift
from daemon.echo.fallback import CancellationMonitor, Fallback, Reason
from daemon.echo.guard import BEFORE_S, LEAD_BLOCKS, Evidence, Measures, Verdict
from daemon.echo.history import PcmHistory
from daemon.echo.ledger import BLOCK, SILENT_DB, EchoLedger, Levels, block_levels
from daemon.echo.reference import ReferenceAligner
from daemon.echo.residual import LEAD_BLOCKS as RESIDUAL_LEAD
from daemon.echo.residual import Residual
from daemon.segmenter.confirm import Confirmer
from daemon.values import SAMPLE_RATE, Frame, Pcm, Utterance

log = logging.getLogger(__name__)

AEC_DELAY_SAMPLES = 128  # pywebrtc_audio 0.2's AEC3 output lags its input by this much
IDLE_AFTER_S = 5.0  # no reference for this long: bypass the canceller
REF_ACTIVE_DBFS = -60.0  # a reference block above this level counts as playing
REMOVAL_SMOOTHING = 0.02  # per active block, for the status figure
HISTORY_S = 20.0  # cleaned audio kept for widening (longer than max_utterance_s)
DT_PRE_ROLL_S = 2.0  # (in a dense meeting the clip sent before is nearer)
DT_POST_ROLL_S = 0.45  # at most hangover_ms - post_roll_ms of the default segmenter
DT_EDGE_S = 0.3  # our speech played this close to a clip edge: widen that edge
CONVERGE_S = 2.0  # of our speech processed before the canceller counts as converged
DOUBLE_TALK_S = 0.5  # our speech played this recently: the frame is in double talk
LEAKING = CONFIDENT  # our echo this prominent in the canceller's output: leaking ...
CANCELLING_DB = 10.0  # ... unless it removed this much of it (converged: 30-60 dB; a
# person talking over us makes it read 12-20; re-learning a moved path: 3-8)
AFRESH_AFTER_S = 2.0  # (a short translation's echo can leak while AEC3 still converges)
LEAK_HOLD_S = 6.0  # shorter leaks (AEC3 re-learning a moved path) are left to the guard
REALIGN_S = 2.5  # on a shift, the guard's reference levels are realigned this far back


class EchoCanceller:
    """AEC3 between capture and the VAD, with the played audio as its reference."""

    def __init__(
        self,
        reference: ReferenceAligner,
        counters: Counters,
        audible_until: Callable[[], float],
    ) -> None:
        from pywebrtc_audio import AudioProcessor

        self._processor: Any = AudioProcessor(
            sample_rate=SAMPLE_RATE, echo_cancellation=True, high_pass_filter=True
        )
        self._reference = reference
        self._counters = counters
        self._ledger = EchoLedger()
        self._delay: Pcm = np.zeros(AEC_DELAY_SAMPLES, dtype=np.int16)
        self._history = PcmHistory(round(HISTORY_S * SAMPLE_RATE))  # cleaned, by clock
        self._mic = PcmHistory(round(HISTORY_S * SAMPLE_RATE))  # what the microphone heard
        self._last_sent_end = 0  # of the last clip sent (widening stops there)
        self._gated_end = 0  # of the last frame gated (widening stops there too)
        self._gate_began = 0  # the first frame of the last stretch gated
        self._generation = -1  # the playback stream the canceller has learnt
        self._next_start = 0  # clock position the next frame should start at
        self._learnt_blocks = 0  # blocks of our speech processed since the last restart
        self._converged = False  # CONVERGE_S of our speech processed since the last restart
        self._active = False
        self._captured_at = 0.0
        self._last_played: float | None = 0.0  # capture time our speech last sounded
        self._removal_db = 0.0
        self._at_path = PcmHistory(round(HISTORY_S * SAMPLE_RATE))  # what we played, one
        self.last_judgement: dict[str, Any] | None = None  # echo path later, by clock
        self._tracker = DelayTracker()
        self._leaking_since: float | None = None
        self._afresh = False  # started afresh in this leak already
        self._shift = ReferenceShift()
        self._monitor = CancellationMonitor()
        self._fallback = Fallback(audible_until, self._fell_back, self._figures)

    @property
    def mode(self) -> str:
        return "aec"

    def process(self, frame: Frame, captured_at: float) -> Frame:
        if len(frame.pcm) % BLOCK:
            raise ValueError(f"frames must be a multiple of {BLOCK} samples")
        played = self._reference.reference_for(captured_at, len(frame.pcm))
        self._captured_at = captured_at
        self._follow_restarts(frame)
        ref = self._aligned(played, frame.start)
        if played.any() or ref.any():
            self._last_played = captured_at
        active = self._last_played is not None and captured_at - self._last_played < IDLE_AFTER_S
        if active != self._active:
            self._active = active
            log.debug("echo canceller %s", "active" if active else "idle (bypassed)")
        if active:
            out: Pcm = self._processor.process(frame.pcm, ref)
            self._counters.add("echo_cancelled_frames")
        else:
            out = self._delayed(frame.pcm)
        self._note(frame.start, ref, self._path_pcm(ref), frame.pcm, out)
        if active or played.any():
            self._track(played, frame, out)
        self._fallback.update(
            (captured_at, len(frame.pcm) / SAMPLE_RATE),
            self._cancelling(),
            referenced=self._reference.covers(captured_at),
            found=self._tracker.delay_s is not None,
            loud=self._monitor.loud,
        )
        self._history.write(frame.start, out)
        self._mic.write(frame.start, frame.pcm)
        if self._fallback.gating(captured_at, self._tracker.delay_s):
            # silenced, and not widened into: the canceller was not trusted here
            if self._gated_end != frame.start:
                self._gate_began = frame.start
            self._gated_end = frame.end
            self._counters.add("echo_gated_frames")
            return Frame(frame.start, np.zeros_like(out))
        return Frame(frame.start, out)

    def _track(self, played: Pcm, frame: Frame, out: Pcm) -> None:
        """Feed the path tracker (what the devices say we played, the microphone, the
        canceller's output); a path that moved realigns what clips are judged against."""
        found = self._tracker.delay_s
        self._tracker.push(played, frame.pcm, out)
        delay = self._tracker.delay_s
        if delay is not None and (found is None or abs(delay - found) > MOVE_S):
            log.info("echo path: %.0f ms after the reported DAC time", delay * 1000)
            self._realign_path(frame, delay)
            if found is None:
                self._reopen_gate(frame, delay)

    def _reopen_gate(self, frame: Frame, delay: float) -> None:
        """The path just found while the stage gated for want of it: where it lies
        within AEC3's reach at the reference's shift and the canceller removed at least
        `CANCELLING_DB` of our echo over the tracker's window, the gate was a precaution
        (AEC3 had our echo where it searches all along: the rig's first translation, a
        person talking over it from its first syllable, gives only weak estimates for
        seconds). A clip may then be widened back into the gated stretch, as far as the
        guard's reference was realigned (`REALIGN_S`): a person who talked through the
        gate is heard from where they began."""
        removal = self._tracker.removal_db
        if self._fallback.state.reason is not Reason.NO_PATH or not self._shift.reaches(delay):
            return
        if removal is None or removal < CANCELLING_DB:
            return
        back = max(self._gate_began, frame.end - min(round(REALIGN_S * SAMPLE_RATE), frame.end))
        if back < self._gated_end:
            log.info(
                "the gate of the last %.1f s reopened: the canceller removed %.0f dB of our"
                " echo at the path found",
                (self._gated_end - back) / SAMPLE_RATE,
                removal,
            )
            self._counters.add("echo_gates_reopened")
            self._gated_end = back

    def _fell_back(self, reason: Reason, new: bool) -> None:
        """Counted when `new`; a canceller that has the path and does not cancel starts
        afresh."""
        if new:
            self._counters.add("echo_fallbacks")
        if reason is Reason.NOT_CANCELLING:
            self._start_afresh()

    def _figures(self) -> str:
        """What the fallback logs: the path, what the canceller removes, what it leaves."""
        delay, erle, leak = self._tracker.delay_s, self._monitor.erle_db, self._tracker.leak
        removal = self._tracker.removal_db
        figures = [
            "echo path not found" if delay is None else f"echo path {delay * 1000:.0f} ms",
            "ERLE unknown" if erle is None else f"ERLE {erle:.0f} dB",
        ]
        if leak is not None:
            figures.append(f"our echo in its output {leak:.0f} σ at the path")
        if removal is not None:
            figures.append(f"{removal:.0f} dB of it removed")
        return ", ".join(figures)

    def _cancelling(self) -> bool | None:
        """Whether the canceller takes our echo out: False once our echo has stood out
        in its output at the path, and it removed less than CANCELLING_DB of it
        (`DelayTracker.removal_db`: in a loud room a cancelled echo still stands out
        over the room's noise), for LEAK_HOLD_S (re-adapting to a moved path, AEC3
        leaks for a second or two: the guard judges those clips), True once it no longer
        does (None while it converges, or while that cannot be told). A converged
        canceller that still leaks after AFRESH_AFTER_S starts afresh, once: on the rig
        AEC3 now and then stays diverged from its first seconds; afresh, it converges
        within about two."""
        leak, removal = self._tracker.leak, self._tracker.removal_db
        if not self._converged or leak is None:
            return None
        removes = removal is not None and removal >= CANCELLING_DB  # however loud the room
        if leak < LEAKING or removes:
            self._leaking_since = None
            return True if leak < LEAKING / 2 or removes else None
        if self._leaking_since is None:
            self._leaking_since, self._afresh = self._captured_at, False
        leaking_s = self._captured_at - self._leaking_since
        if leaking_s >= AFRESH_AFTER_S and not self._afresh:
            self._afresh = True
            self._start_afresh()
        return None if leaking_s < LEAK_HOLD_S else False

    def _start_afresh(self) -> None:
        log.info(
            "echo canceller starts afresh: our echo still in its output after %.0f s",
            AFRESH_AFTER_S,
        )
        self._processor.reset()
        self._counters.add("echo_canceller_resets")
        self._shift.afresh()
        self._restart_convergence()

    def _aligned(self, played: Pcm, start: int) -> Pcm:
        """The reference shifted by the tracked bulk delay of the echo path
        (`ReferenceShift`)."""
        was = self._shift.samples
        if self._shift.follow(self._tracker.delay_s):
            log.info(
                "the reference is shifted by %.0f ms (was %.0f ms): AEC3 is left %.0f ms",
                self._shift.samples / SAMPLE_RATE * 1000,
                was / SAMPLE_RATE * 1000,
                (self._tracker.delay_s or 0.0) * 1000 - self._shift.samples / SAMPLE_RATE * 1000,
            )
            self._counters.add("echo_delay_moves")
            self._restart_convergence()
            self._realign(start)
        if self._shift.samples == 0:
            return played
        return self._reference.earlier(self._shift.samples, len(played))

    def _realign_path(self, frame: Frame, delay: float) -> None:
        """What we played one (new) echo path ago, for the last REALIGN_S up to this
        frame's end: the path moved within the tracker's window, and a clip there is
        judged against it."""
        span = min(round(REALIGN_S * SAMPLE_RATE), frame.end)
        back = round(max(delay, 0.0) * SAMPLE_RATE) + span - len(frame.pcm)
        self._at_path.rewrite(frame.end - span, self._reference.earlier(back, span))

    def _realign(self, start: int) -> None:
        """The guard's reference levels of the last REALIGN_S at the new shift: the path
        moved within the tracker's window, and a clip there is judged against it."""
        span = min(round(REALIGN_S * SAMPLE_RATE), start)
        span -= span % BLOCK
        if span:
            ref = self._reference.earlier(self._shift.samples + span, span)
            self._ledger.realign(start - span, block_levels(ref))

    def double_talk(self) -> bool:
        """Our speech played around the last frame processed (its clip is judged by the
        own-speech guard: the segmenter's noise confirmation need not doubt it)."""
        if self._last_played is None or self._fallback.active:
            return False
        return self._captured_at - self._last_played < DOUBLE_TALK_S

    def evidence(self, utt: Utterance) -> Evidence:
        """What `utt` is judged on, copied from the histories now."""
        lead = LEAD_BLOCKS * BLOCK
        reference = self._at_path.read(utt.start - lead, len(utt.pcm) + lead)
        mic = self._mic.read(utt.start - AEC_DELAY_SAMPLES, len(utt.pcm))
        return Evidence(utt.pcm, mic, reference if reference.any() else None, self._before(utt))

    def _before(self, utt: Utterance) -> tuple[Pcm, Pcm] | None:
        """What the microphone heard over the `BEFORE_S` before `utt` (not before
        `_widen_limit`) and what we played one path earlier, when our speech played at
        its start (it is widened back); else None."""
        if not self._played_at_start(utt):
            return None
        first = max(utt.start - round(BEFORE_S * SAMPLE_RATE), self._widen_limit)
        span = max(utt.start - first, 0) // BLOCK * BLOCK
        lead = LEAD_BLOCKS * BLOCK
        mic = self._mic.read(utt.start - span - AEC_DELAY_SAMPLES, span)
        return mic, self._at_path.read(utt.start - span - lead, span + lead)

    def residual(self, utt: Utterance) -> Residual | None:
        """What our echo left in `utt` is taken out from, copied from the histories now."""
        lead = RESIDUAL_LEAD * BLOCK
        reference = self._at_path.read(utt.start - lead, len(utt.pcm) + lead)
        return Residual(utt.pcm, reference) if reference.any() else None

    def screen(self, utt: Utterance, measures: Measures | None = None) -> Utterance | Verdict:
        """A verdict when `utt` is our own speech (it must not be sent), else the clip to
        send: widened at an edge where our speech played (double talk). `measures`: those
        of `evidence(utt)`, measured elsewhere (None: measured now)."""
        m = measures if measures is not None else self.evidence(utt).measure()
        foreign = m.foreign_share
        delay = self._tracker.delay_s
        delay_ms = None if delay is None else round(delay * 1000)
        self.last_judgement = {
            "foreign_share": None if foreign is None else round(foreign, 4),
            "echo_share": round(m.echo_share, 4),
            "path_found": delay_ms is not None,
            "delay_ms": delay_ms,
            "seconds": round(len(utt.pcm) / SAMPLE_RATE, 2),
            "fallback": self._fallback.active,
        }
        log.info(
            "utterance %d: %s of its loud sound foreign, %.0f%% of it our echo (estimated;"
            " echo path %s)",
            utt.id,
            "-" if foreign is None else f"{foreign:.0%}",
            m.echo_share * 100,
            "not found" if delay_ms is None else f"{delay_ms} ms",
        )
        if foreign is not None and m.ours:
            return Verdict(foreign, m.echo_share)  # not sent: the next clip may widen into it
        widened = self._widen(utt, m.heard_before)
        self._last_sent_end = max(self._last_sent_end, widened.end)
        return widened

    def describe(self) -> dict[str, Any]:
        estimate = self._tracker.last
        delay = self._tracker.delay_s
        erle = self._monitor.erle_db
        reason = self._fallback.state.reason
        return {
            "mode": "aec",
            "canceller": "active" if self._active else "idle",
            "converged": self._converged,
            "removal_db": round(self._removal_db, 1),
            "delay_ms": None if delay is None else round(delay * 1000),
            "delay_confidence": None if estimate is None else round(estimate.confidence, 1),
            "erle_db": None if erle is None else round(erle, 1),
            "fallback": None if reason is None else reason.value,
        }

    def _follow_restarts(self, frame: Frame) -> None:
        """A new output stream or a gap in the capture clock: the echo path must be
        learnt again, so clips until then are judged as unconverged."""
        generation = self._reference.generation
        if generation != self._generation or frame.start != self._next_start:
            self._generation = generation
            self._tracker.restart()
            self._fallback.restart()
            self._next_start = frame.start
            self._restart_convergence()
        self._next_start = frame.end

    def _restart_convergence(self) -> None:
        self._learnt_blocks = 0
        self._monitor.restart()
        self._converged = False

    @property
    def _widen_limit(self) -> int:
        """No clip is widened back before this sample: the end of the clip sent before
        it, or of a gated stretch (what the canceller put out there may be our echo)."""
        return max(self._last_sent_end, self._gated_end)

    def _widen(self, utt: Utterance, heard_before: int) -> Utterance:
        """Double-talk edges widened (the start back to where someone else was heard,
        `heard_before` samples, when that is further), never before `_widen_limit`."""
        pre = max(round(DT_PRE_ROLL_S * SAMPLE_RATE), heard_before)
        post = round(DT_POST_ROLL_S * SAMPLE_RATE)
        edge = round(DT_EDGE_S * SAMPLE_RATE)
        start, end = utt.start, utt.end
        if self._played_at_start(utt):
            start = max(utt.start - pre, self._history.oldest)
        if self._played(utt.end - edge, utt.end + post):
            end = min(utt.end + post, self._history.end)
        start = min(max(start - start % BLOCK, self._widen_limit), utt.start)
        end = max(end, utt.end)  # (the history no longer holds the audio: not widened)
        log.log(
            logging.DEBUG if (start, end) == (utt.start, utt.end) else logging.INFO,
            "utterance %d widened by %.2f s before, %.2f s after (sent up to %.2f s before it)",
            utt.id,
            (utt.start - start) / SAMPLE_RATE,
            (end - utt.end) / SAMPLE_RATE,
            (utt.start - self._last_sent_end) / SAMPLE_RATE,
        )
        if start == utt.start and end == utt.end:
            return utt
        if start < utt.start:
            pcm = np.concatenate((self._history.read(start, utt.start - start), utt.pcm))
        else:
            pcm = utt.pcm[start - utt.start :]
        pcm = np.concatenate((pcm, self._history.read(utt.end, end - utt.end)))
        self._counters.add("echo_widened_clips")
        return dataclasses.replace(
            utt,
            start=start,
            end=end,
            pcm=pcm,
            wall_start=utt.wall_start - (utt.start - start) / SAMPLE_RATE,
            wall_end=utt.wall_end + (end - utt.end) / SAMPLE_RATE,
        )

    def _played_at_start(self, utt: Utterance) -> bool:
        pre, edge = round(DT_PRE_ROLL_S * SAMPLE_RATE), round(DT_EDGE_S * SAMPLE_RATE)
        return self._played(utt.start - pre, utt.start + edge)

    def _played(self, start: int, end: int) -> bool:
        ref_db = self._ledger.levels(max(start, 0), max(end, 0))
        return bool(np.any(ref_db > REF_ACTIVE_DBFS))

    def _delayed(self, pcm: Pcm) -> Pcm:
        """The input delayed like the canceller's output, so bypassing keeps the clock."""
        joined = np.concatenate((self._delay, pcm))
        self._delay = joined[len(pcm) :]
        return joined[: len(pcm)]

    def _path_pcm(self, ref: Pcm) -> Pcm:
        """What we played one echo path ago: what the microphone hears of us in this
        frame (the reference AEC3 got while the path is not found)."""
        delay = self._tracker.delay_s
        if not self._active or delay is None:
            return ref
        return self._reference.earlier(round(max(delay, 0.0) * SAMPLE_RATE), len(ref))

    def _note(self, start: int, ref: Pcm, at_path: Pcm, mic: Pcm, out: Pcm) -> None:
        ref_db = _levels(ref)
        mic_db = block_levels(mic)
        self._ledger.note(start, ref_db)
        self._at_path.write(start, at_path)
        out_db = block_levels(out)
        self._monitor.hear(mic_db)
        if self._active and self._tracker.delay_s is not None:
            self._monitor.note(_levels(at_path), mic_db, out_db, judged=self._converged)
        playing = ref_db > REF_ACTIVE_DBFS
        if not self._converged and self._active:
            self._learnt_blocks += int(playing.sum())
            if self._learnt_blocks * BLOCK >= CONVERGE_S * SAMPLE_RATE:
                self._converged = True
        if self._active and playing.any():
            removal = float(np.mean(mic_db[playing] - out_db[playing]))
            self._removal_db += REMOVAL_SMOOTHING * (removal - self._removal_db)


def _levels(pcm: Pcm) -> Levels:
    return block_levels(pcm) if pcm.any() else np.full(len(pcm) // BLOCK, SILENT_DB, np.float32)


class DoubleTalkConfirmer:
    """The segmenter's clip confirmer, with every frame in double talk confirmed."""

    def __init__(self, inner: Confirmer, double_talk: Callable[[], bool]) -> None:
        self._inner = inner
        self._double_talk = double_talk

    def reset(self) -> None:
        self._inner.reset()

    def confirms(self, pcm: Pcm) -> bool:
        return self._double_talk() or self._inner.confirms(pcm)
