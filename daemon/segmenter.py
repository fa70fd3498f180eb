"""Segmenter: WebRTC VAD + a QUIET/SPEAKING state machine cutting speech into utterances.

Per frame: webrtcvad (mode 0–3, from the live room settings) AND an energy test decide
whether the frame is voiced: above the fixed floor `energy_floor_dbfs` and at least
`noise_margin_db` above the tracked steady noise of the room (`NoiseFloor`).

QUIET keeps a short history (pre-roll + start window); speech starts when the share of
voiced frames in the start window reaches `start_ratio`, and the utterance begins
`pre_roll_ms` before the first voiced frame of that window. SPEAKING ends after
`hangover_ms` of unvoiced frames; the clip keeps `post_roll_ms` after the last voiced
frame. Clips with less than `min_speech_ms` of voiced frames are noise (dropped,
counted). A clip reaching `max_utterance_s` is split at the quietest frame of its last
`split_search_s`, and the rest carries on as the next utterance (held to no minimum).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import webrtcvad

from daemon.config import LiveRoom, SegmenterSettings
from daemon.counters import Counters
from daemon.values import SAMPLE_RATE, Frame, Utterance, UtteranceStats, dbfs


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The segmenter heard speech begin (for the 'hearing' state)."""

    start: int


SegmentEvent = SpeechStarted | Utterance


class NoiseFloor:
    """Minimum-tracking estimate of the room's steady noise level (dBFS).

    It drops to any quieter frame at once and rises by at most `rise_per_frame` dB per
    frame, so the short dips between syllables keep it at the noise under speech, while
    a fan switched on is learned within seconds.
    """

    def __init__(self, rise_per_frame: float, start: float = -120.0) -> None:
        self._rise = rise_per_frame
        self._level = start
        self._primed = False

    @property
    def level(self) -> float:
        return self._level

    def update(self, frame_level: float) -> float:
        if not self._primed:
            self._level, self._primed = frame_level, True
        elif frame_level < self._level:
            self._level = frame_level
        else:
            self._level = min(frame_level, self._level + self._rise)
        return self._level


@dataclass(slots=True)
class _Scored:
    frame: Frame
    voiced: bool
    level: float  # dBFS


class Segmenter:
    """Push frames in, get SpeechStarted and Utterance events out (synchronous, fast)."""

    def __init__(
        self,
        settings: SegmenterSettings,
        room: LiveRoom,
        counters: Counters,
        wall_time: Callable[[int], float],
        first_id: int = 1,
    ) -> None:
        self.s = settings
        self._room = room
        self._counters = counters
        self._wall_time = wall_time
        self._next_id = first_id
        self._vad = webrtcvad.Vad(room.current.vad_mode)
        self._vad_version = room.version
        self._noise = NoiseFloor(settings.noise_rise_db_per_s * settings.frame_ms / 1000)
        self._frame_ms = settings.frame_ms
        self._window = max(1, settings.start_window_ms // self._frame_ms)
        self._pre_roll = settings.pre_roll_ms // self._frame_ms
        self._hangover = max(1, settings.hangover_ms // self._frame_ms)
        self._post_roll = settings.post_roll_ms // self._frame_ms
        self._min_voiced = settings.min_speech_ms // self._frame_ms
        self._max_frames = int(settings.max_utterance_s * 1000) // self._frame_ms
        self._search = max(1, int(settings.split_search_s * 1000) // self._frame_ms)
        self._history: deque[_Scored] = deque(maxlen=self._pre_roll + self._window)
        self._recent_voiced: deque[bool] = deque(maxlen=self._window)
        self._current: list[_Scored] = []
        self._silence_run = 0
        self._speaking = False
        self._continued = False  # the clip in progress continues a split one

    @property
    def speaking(self) -> bool:
        return self._speaking

    def _score(self, frame: Frame) -> _Scored:
        if self._room.version != self._vad_version:
            self._vad_version = self._room.version
            self._vad.set_mode(self._room.current.vad_mode)
        level = dbfs(frame.pcm)
        noise = self._noise.update(level)
        loud = level >= self.s.energy_floor_dbfs and (
            self.s.noise_margin_db == 0 or level >= noise + self.s.noise_margin_db
        )
        voiced = loud and self._vad.is_speech(frame.pcm.tobytes(), SAMPLE_RATE)
        return _Scored(frame, voiced, level)

    def push(self, frame: Frame) -> list[SegmentEvent]:
        scored = self._score(frame)
        if self._speaking:
            return self._push_speaking(scored)
        return self._push_quiet(scored)

    def flush(self) -> list[SegmentEvent]:
        """End of input: close the utterance in progress, if any."""
        if not self._speaking:
            return []
        return self._end_utterance()

    def _push_quiet(self, scored: _Scored) -> list[SegmentEvent]:
        self._history.append(scored)
        self._recent_voiced.append(scored.voiced)
        if sum(self._recent_voiced) < self.s.start_ratio * self._window:
            return []
        history = list(self._history)
        window_start = len(history) - len(self._recent_voiced)
        first_voiced = next(i for i in range(window_start, len(history)) if history[i].voiced)
        self._current = history[max(0, first_voiced - self._pre_roll) :]
        self._history.clear()
        self._recent_voiced.clear()
        self._silence_run = 0
        self._speaking = True
        return [SpeechStarted(self._current[0].frame.start)]

    def _push_speaking(self, scored: _Scored) -> list[SegmentEvent]:
        self._current.append(scored)
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
        self._current = []
        self._speaking = False
        self._silence_run = 0
        continued, self._continued = self._continued, False
        for leftover in rest[-self._history.maxlen :] if self._history.maxlen else []:
            self._history.append(leftover)
        return self._emit(clip, split=False, continued=continued)

    def _split(self) -> list[SegmentEvent]:
        frames = self._current
        tail = range(len(frames) - self._search, len(frames))
        quietest = min(tail, key=lambda i: frames[i].level)
        clip, self._current = frames[: quietest + 1], frames[quietest + 1 :]
        self._silence_run = 0
        for i in range(len(self._current) - 1, -1, -1):
            if self._current[i].voiced:
                break
            self._silence_run += 1
        continued, self._continued = self._continued, True
        return self._emit(clip, split=True, continued=continued)

    def _emit(
        self, clip: list[_Scored], *, split: bool, continued: bool = False
    ) -> list[SegmentEvent]:
        """An utterance of `clip`; a short one is noise unless it is part of a split."""
        voiced = sum(1 for s in clip if s.voiced)
        if voiced == 0 and continued:
            return []  # only the silence after a split: nothing was said
        if not clip or (voiced < self._min_voiced and not (split or continued)):
            self._counters.add("noise_dropped")
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
