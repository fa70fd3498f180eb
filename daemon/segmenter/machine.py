"""Segmenter: a QUIET/SPEAKING state machine cutting judged frames into utterances.

Each frame is judged first (`Voicing`: DC/rumble high-pass, level, room noise, the speech
detector; see daemon/segmenter/voicing.py). QUIET keeps a short history (pre-roll, start
window and a hangover's worth); speech starts when the share of voiced frames in the
start window reaches `start_ratio`, and the utterance begins `pre_roll_ms` before the
first voiced frame of that window, or where the last clip ended if that was at most
`hangover_ms` earlier (a pause in the talk: nothing between two clips is left out of
both, such as quiet speech the detector missed). SPEAKING ends after `hangover_ms` of
unvoiced frames; the clip keeps `post_roll_ms` after the last voiced frame. Clips with
less than `min_speech_ms` of voiced frames are noise (dropped, counted). A clip already
`split_after_s` long ends in its last pause of `split_pause_ms` (`post_roll_ms` into it)
once `split_rest_ms` of speech has followed that pause, and what followed is the next
clip: a long turn is translated while it goes on, and no fragment (a last word, a breath,
the echo of our speech in a pause) is cut off on its own. Pauses are cut only while
`may_cut()` (the service account has requests to spare); otherwise the clip runs on,
counted as `pause_cuts_held`: fewer, longer requests. A clip reaching `max_utterance_s`
is split at the quietest frame of its last `split_search_s`. The rest of a cut or split
clip carries on as the next utterance, held to no minimum, and vouched for by its first
part when that was sent. Clips carry the conditioned audio.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from daemon.config import LiveRoom, SegmenterSettings
from daemon.counters import Counters
from daemon.segmenter.confirm import Confirmer, ConfirmerFactory, make_confirmer
from daemon.segmenter.voicing import FrameJudge, Judged, Voicing
from daemon.values import Frame, Utterance, UtteranceStats, dbfs


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The segmenter heard speech begin (for the 'hearing' state)."""

    start: int


SegmentEvent = SpeechStarted | Utterance


class SegmenterState(Enum):
    QUIET = "quiet"
    SPEAKING = "speaking"


class Continues(Enum):
    """What the clip in progress continues."""

    NOTHING = "nothing"  # a new utterance
    DROPPED_PART = "dropped_part"  # the rest of a split clip that was dropped as noise
    SENT_PART = "sent_part"  # the rest of a split clip that was sent


@dataclass(frozen=True, slots=True)
class _Heard:
    """A frame of the clip in progress."""

    judged: Judged
    confirmed: bool  # the confirmer heard speech in it (False without a confirmer)


@dataclass(slots=True)
class _Utt:
    """The clip in progress (SPEAKING)."""

    frames: list[_Heard] = field(default_factory=list)
    continues: Continues = Continues.NOTHING
    silence_run: int = 0  # unvoiced frames at its end
    pause_cut: int | None = None  # where it ends if enough speech follows its last pause
    voiced_after: int = 0  # voiced frames since that pause


class Segmenter:
    """Push frames in, get SpeechStarted and Utterance events out (synchronous, fast)."""

    def __init__(
        self,
        settings: SegmenterSettings,
        room: LiveRoom,
        counters: Counters,
        wall_time: Callable[[int], float],
        first_id: int = 1,
        *,
        judge: FrameJudge | None = None,
        confirmer: ConfirmerFactory = make_confirmer,
        may_cut: Callable[[], bool] = lambda: True,
    ) -> None:
        self.s = settings
        self._room = room
        self._counters = counters
        self._wall_time = wall_time
        self._may_cut = may_cut
        self._next_id = first_id
        self._judge = judge if judge is not None else Voicing(settings, room)
        self._confirm: Confirmer | None = confirmer(settings)
        self._confirm_frames = -(-settings.confirm_speech_ms // settings.frame_ms)
        self._frame_ms = settings.frame_ms
        self._window = max(1, settings.start_window_ms // self._frame_ms)
        self._pre_roll = settings.pre_roll_ms // self._frame_ms
        self._hangover = max(1, settings.hangover_ms // self._frame_ms)
        self._split_pause = max(1, settings.split_pause_ms // self._frame_ms)
        self._split_after = int(settings.split_after_s * 1000) // self._frame_ms
        self._split_rest = max(1, settings.split_rest_ms // self._frame_ms)
        self._post_roll = settings.post_roll_ms // self._frame_ms
        self._min_voiced = settings.min_speech_ms // self._frame_ms
        self._max_frames = int(settings.max_utterance_s * 1000) // self._frame_ms
        self._search = max(1, int(settings.split_search_s * 1000) // self._frame_ms)
        history = self._pre_roll + self._window + self._hangover  # holds the last clip's end
        self._history: deque[Judged] = deque(maxlen=history)
        self._recent_voiced: deque[bool] = deque(maxlen=self._window)
        self._after_end: int | None = None  # history frames since the last clip's end
        self._state = SegmenterState.QUIET
        self._utt = _Utt()

    @property
    def state(self) -> SegmenterState:
        return self._state

    @property
    def speaking(self) -> bool:
        return self._state is SegmenterState.SPEAKING

    def push(self, frame: Frame) -> list[SegmentEvent]:
        scored = self._judge.judge(frame)
        if self._state is SegmenterState.SPEAKING:
            return self._push_speaking(scored)
        return self._push_quiet(scored)

    def flush(self) -> list[SegmentEvent]:
        """End of input: close the utterance in progress, if any."""
        if self._state is SegmenterState.QUIET:
            return []
        return self._end_utterance()

    def _heard(self, judged: Judged) -> _Heard:
        confirm = self._confirm
        return _Heard(judged, confirm is not None and confirm.confirms(judged.frame.pcm))

    def _push_quiet(self, scored: Judged) -> list[SegmentEvent]:
        self._history.append(scored)
        self._recent_voiced.append(scored.voiced)
        if self._after_end is not None:
            self._after_end += 1
            if self._after_end > len(self._history):
                self._after_end = None
        if sum(self._recent_voiced) < self.s.start_ratio * self._window:
            return []
        history = list(self._history)
        window_start = len(history) - len(self._recent_voiced)
        first_voiced = next(i for i in range(window_start, len(history)) if history[i].voiced)
        if self._confirm is not None:
            self._confirm.reset()
        begin = max(0, first_voiced - self._pre_roll)
        if self._after_end is not None:  # no gap after the last clip
            begin = min(begin, len(history) - self._after_end)
        start = history[begin:]
        self._utt = _Utt([self._heard(judged) for judged in start])
        self._history.clear()
        self._recent_voiced.clear()
        self._after_end = None
        self._state = SegmenterState.SPEAKING
        return [SpeechStarted(start[0].frame.start)]

    def _push_speaking(self, scored: Judged) -> list[SegmentEvent]:
        utt = self._utt
        utt.frames.append(self._heard(scored))
        utt.silence_run = 0 if scored.voiced else utt.silence_run + 1
        if utt.silence_run >= self._hangover:
            return self._end_utterance()  # what followed the pause was too little to cut off
        if utt.silence_run == self._split_pause and len(utt.frames) >= self._split_after:
            if self._may_cut():
                pause = len(utt.frames) - utt.silence_run
                utt.pause_cut = pause + min(self._post_roll, utt.silence_run)
                utt.voiced_after = 0
            else:
                self._counters.add("pause_cuts_held")
        elif scored.voiced and utt.pause_cut is not None:
            utt.voiced_after += 1
            if utt.voiced_after >= self._split_rest:
                return self._split_at_pause(utt.pause_cut)
        if len(utt.frames) >= self._max_frames:
            return self._split()
        return []

    def _split_at_pause(self, cut: int) -> list[SegmentEvent]:
        """End the clip at `cut`, in its last pause; the speech since carries on as the
        next clip."""
        frames = self._utt.frames
        events = self._emit(frames[:cut], split=False, continues=self._utt.continues, pause=True)
        continues = Continues.SENT_PART if events else Continues.DROPPED_PART
        self._utt = _Utt(frames[cut:], continues)
        return events

    def _end_utterance(self) -> list[SegmentEvent]:
        utt, self._utt = self._utt, _Utt()
        self._state = SegmenterState.QUIET
        frames = utt.frames
        last_voiced = max((i for i, h in enumerate(frames) if h.judged.voiced), default=-1)
        cut = min(len(frames), last_voiced + 1 + self._post_roll)
        clip, rest = frames[:cut], frames[cut:]
        kept = rest[-self._history.maxlen :] if self._history.maxlen else []
        for leftover in kept:
            self._history.append(leftover.judged)
        self._after_end = len(kept) if len(kept) == len(rest) else None
        return self._emit(clip, split=False, continues=utt.continues)

    def _split(self) -> list[SegmentEvent]:
        utt = self._utt
        frames = utt.frames
        tail = range(len(frames) - self._search, len(frames))
        quietest = min(tail, key=lambda i: frames[i].judged.level)
        clip, rest = frames[: quietest + 1], frames[quietest + 1 :]
        silence_run = 0
        for heard in reversed(rest):
            if heard.judged.voiced:
                break
            silence_run += 1
        events = self._emit(clip, split=True, continues=utt.continues)
        continues = Continues.SENT_PART if events else Continues.DROPPED_PART
        self._utt = _Utt(rest, continues, silence_run)
        return events

    def _emit(
        self, clip: list[_Heard], *, split: bool, continues: Continues, pause: bool = False
    ) -> list[SegmentEvent]:
        """An utterance of `clip`; a short one is noise unless it is part of a split, and
        one the confirmer heard too little speech in is noise (unless it is the rest of
        a split clip that was sent)."""
        voiced = sum(1 for h in clip if h.judged.voiced)
        continued = continues is not Continues.NOTHING
        if voiced == 0 and continued:
            return []  # only the silence after a split: nothing was said
        if not clip or (voiced < self._min_voiced and not (split or continued)):
            self._counters.add("noise_dropped")
            return []
        confirmed = sum(1 for h in clip if h.confirmed)
        vouched = continues is Continues.SENT_PART  # the end of a confirmed utterance
        if self._confirm is not None and confirmed < self._confirm_frames and not vouched:
            self._counters.add("noise_dropped")
            self._counters.add("noise_unconfirmed")
            return []
        pcm = np.concatenate([h.judged.frame.pcm for h in clip])
        levels = [h.judged.level for h in clip]
        start, end = clip[0].judged.frame.start, clip[-1].judged.frame.end
        utterance = Utterance(
            id=self._next_id,
            start=start,
            end=end,
            pcm=pcm,
            stats=UtteranceStats(
                voiced_frames=voiced,
                frames=len(clip),
                mean_dbfs=dbfs(pcm),
                peak_dbfs=max(levels),
                split=split,
                pause_cut=pause,
            ),
            wall_start=self._wall_time(start),
            wall_end=self._wall_time(end),
        )
        utterance.timeline.speech_end_detected = time.monotonic()
        self._next_id += 1
        self._counters.add("utterances")
        return [utterance]
