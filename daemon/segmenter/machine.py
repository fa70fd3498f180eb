"""Segmenter: a QUIET/SPEAKING state machine cutting judged frames into utterances.

Each frame is judged first (`Voicing`: DC/rumble high-pass, level, room noise, the speech
detector; see daemon/segmenter/voicing.py). QUIET keeps a short history (pre-roll + start
window); speech starts when the share of voiced frames in the start window reaches
`start_ratio`, and the utterance begins `pre_roll_ms` before the first voiced frame of
that window. SPEAKING ends after `hangover_ms` of unvoiced frames; the clip keeps
`post_roll_ms` after the last voiced frame. Clips with less than `min_speech_ms` of
voiced frames are noise (dropped, counted). A clip reaching `max_utterance_s` is split at
the quietest frame of its last `split_search_s`, and the rest carries on as the next
utterance (held to no minimum). Clips carry the conditioned audio.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from daemon.config import LiveRoom, SegmenterSettings
from daemon.counters import Counters
from daemon.segmenter.confirm import Confirmer, make_confirmer
from daemon.segmenter.voicing import FrameJudge, Judged, Voicing
from daemon.values import Frame, Utterance, UtteranceStats, dbfs


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The segmenter heard speech begin (for the 'hearing' state)."""

    start: int


SegmentEvent = SpeechStarted | Utterance


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
        confirm: Confirmer | Literal["settings"] | None = "settings",
    ) -> None:
        self.s = settings
        self._room = room
        self._counters = counters
        self._wall_time = wall_time
        self._next_id = first_id
        self._judge = judge if judge is not None else Voicing(settings, room)
        self._confirm = make_confirmer(settings) if confirm == "settings" else confirm
        self._confirm_frames = -(-settings.confirm_speech_ms // settings.frame_ms)
        self._frame_ms = settings.frame_ms
        self._window = max(1, settings.start_window_ms // self._frame_ms)
        self._pre_roll = settings.pre_roll_ms // self._frame_ms
        self._hangover = max(1, settings.hangover_ms // self._frame_ms)
        self._post_roll = settings.post_roll_ms // self._frame_ms
        self._min_voiced = settings.min_speech_ms // self._frame_ms
        self._max_frames = int(settings.max_utterance_s * 1000) // self._frame_ms
        self._search = max(1, int(settings.split_search_s * 1000) // self._frame_ms)
        self._history: deque[Judged] = deque(maxlen=self._pre_roll + self._window)
        self._recent_voiced: deque[bool] = deque(maxlen=self._window)
        self._current: list[Judged] = []
        self._confirmed: list[bool] = []  # per frame of _current: the confirmer heard speech
        self._silence_run = 0
        self._speaking = False
        self._continued = False  # the clip in progress continues a split one
        self._split_sent = False  # ... and that split one was sent (not dropped as noise)

    @property
    def speaking(self) -> bool:
        return self._speaking

    def push(self, frame: Frame) -> list[SegmentEvent]:
        scored = self._judge.judge(frame)
        if self._speaking:
            return self._push_speaking(scored)
        return self._push_quiet(scored)

    def flush(self) -> list[SegmentEvent]:
        """End of input: close the utterance in progress, if any."""
        if not self._speaking:
            return []
        return self._end_utterance()

    def _push_quiet(self, scored: Judged) -> list[SegmentEvent]:
        self._history.append(scored)
        self._recent_voiced.append(scored.voiced)
        if sum(self._recent_voiced) < self.s.start_ratio * self._window:
            return []
        history = list(self._history)
        window_start = len(history) - len(self._recent_voiced)
        first_voiced = next(i for i in range(window_start, len(history)) if history[i].voiced)
        self._current = history[max(0, first_voiced - self._pre_roll) :]
        if self._confirm is not None:
            self._confirm.reset()
            self._confirmed = [self._confirm.confirms(j.frame.pcm) for j in self._current]
        self._history.clear()
        self._recent_voiced.clear()
        self._silence_run = 0
        self._speaking = True
        return [SpeechStarted(self._current[0].frame.start)]

    def _push_speaking(self, scored: Judged) -> list[SegmentEvent]:
        self._current.append(scored)
        if self._confirm is not None:
            self._confirmed.append(self._confirm.confirms(scored.frame.pcm))
        self._silence_run = 0 if scored.voiced else self._silence_run + 1
        if self._silence_run >= self._hangover:
            return self._end_utterance()
        if len(self._current) >= self._max_frames:
            return self._split()
        return []

    def _end_utterance(self) -> list[SegmentEvent]:
        frames = self._current
        last_voiced = max((i for i, s in enumerate(frames) if s.voiced), default=-1)
        cut = min(len(frames), last_voiced + 1 + self._post_roll)
        clip, rest = frames[:cut], frames[cut:]
        confirmed = sum(self._confirmed[:cut])
        self._current, self._confirmed = [], []
        self._speaking = False
        self._silence_run = 0
        continued, self._continued = self._continued, False
        for leftover in rest[-self._history.maxlen :] if self._history.maxlen else []:
            self._history.append(leftover)
        return self._emit(clip, confirmed, split=False, continued=continued)

    def _split(self) -> list[SegmentEvent]:
        frames = self._current
        tail = range(len(frames) - self._search, len(frames))
        quietest = min(tail, key=lambda i: frames[i].level)
        clip, self._current = frames[: quietest + 1], frames[quietest + 1 :]
        confirmed = sum(self._confirmed[: quietest + 1])
        self._confirmed = self._confirmed[quietest + 1 :]
        self._silence_run = 0
        for i in range(len(self._current) - 1, -1, -1):
            if self._current[i].voiced:
                break
            self._silence_run += 1
        continued, self._continued = self._continued, True
        events = self._emit(clip, confirmed, split=True, continued=continued)
        self._split_sent = bool(events)
        return events

    def _emit(
        self, clip: list[Judged], confirmed: int, *, split: bool, continued: bool = False
    ) -> list[SegmentEvent]:
        """An utterance of `clip`; a short one is noise unless it is part of a split, and
        one the confirmer heard too little speech in is noise."""
        voiced = sum(1 for s in clip if s.voiced)
        if voiced == 0 and continued:
            return []  # only the silence after a split: nothing was said
        if not clip or (voiced < self._min_voiced and not (split or continued)):
            self._counters.add("noise_dropped")
            return []
        vouched = continued and self._split_sent  # the end of a confirmed utterance
        if self._confirm is not None and confirmed < self._confirm_frames and not vouched:
            self._counters.add("noise_dropped")
            self._counters.add("noise_unconfirmed")
            return []
        pcm = np.concatenate([s.frame.pcm for s in clip])
        levels = [s.level for s in clip]
        start, end = clip[0].frame.start, clip[-1].frame.end
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
            ),
            wall_start=self._wall_time(start),
            wall_end=self._wall_time(end),
        )
        utterance.timeline.speech_end_detected = time.monotonic()
        self._next_id += 1
        self._counters.add("utterances")
        return [utterance]
