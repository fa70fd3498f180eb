"""The segmenter's frame decision as it was before issue 7, as a baseline to measure against.

webrtcvad only on frames that passed the energy gates (so it adapted to loud frames only),
a -55 dBFS floor, a 6 dB margin over a noise floor primed by the very first frame that
rose at 3 dB/s, no DC/rumble filter.
Plug it in with `Segmenter(..., judge=LegacyJudge(settings, room))`.
"""

from __future__ import annotations

import webrtcvad

from daemon.config import LiveRoom, SegmenterSettings
from daemon.segmenter import Judged
from daemon.values import SAMPLE_RATE, Frame, dbfs

LEGACY_FLOOR_DBFS = -55.0
LEGACY_RISE_DB_PER_S = 3.0
LEGACY_MARGIN_DB = 6.0


class _PrimedFloor:
    def __init__(self, rise_per_frame: float) -> None:
        self._rise = rise_per_frame
        self._level = -120.0
        self._primed = False

    def update(self, level: float) -> float:
        if not self._primed:
            self._level, self._primed = level, True
        elif level < self._level:
            self._level = level
        else:
            self._level = min(level, self._level + self._rise)
        return self._level


class LegacyJudge:
    def __init__(self, settings: SegmenterSettings, room: LiveRoom) -> None:
        self.s = settings
        self._vad = webrtcvad.Vad(room.current.vad_mode)
        self._noise = _PrimedFloor(LEGACY_RISE_DB_PER_S * settings.frame_ms / 1000)

    def judge(self, frame: Frame) -> Judged:
        level = dbfs(frame.pcm)
        noise = self._noise.update(level)
        loud = level >= LEGACY_FLOOR_DBFS and level >= noise + LEGACY_MARGIN_DB
        voiced = loud and self._vad.is_speech(frame.pcm.tobytes(), SAMPLE_RATE)
        return Judged(frame, voiced, level)
