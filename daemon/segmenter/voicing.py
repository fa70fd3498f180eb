"""Is this frame speech? Conditioning, level, room noise, and the speech detector.

Per frame, in this order:
1. `HighPass` removes DC and rumble (`highpass_hz`); the frame the segmenter keeps and
   the clip it sends are the conditioned audio.
2. Its level (RMS dBFS of the conditioned samples).
3. `NoiseFloor` tracks the room's steady noise.
4. The detector (`detector`: webrtc | earshot | silero) judges EVERY frame: detectors adapt to
   what they are fed, and fed only the loud frames they turn stricter.
5. A frame is voiced when the detector says speech AND it is above `energy_floor_dbfs`
   AND at least `noise_margin_db` above the tracked noise (0 turns that test off).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

from daemon.config import LiveRoom, SegmenterSettings
from daemon.segmenter.condition import SILENCE_DBFS, HighPass
from daemon.segmenter.detectors import (
    Detector,
    EarshotScorer,
    SileroScorer,
    ThresholdDetector,
    WebrtcDetector,
)
from daemon.values import SAMPLE_RATE, Frame, Pcm


@dataclass(frozen=True, slots=True)
class Judged:
    """A frame as the segmenter keeps it: conditioned PCM, speech or not, level."""

    frame: Frame
    voiced: bool
    level: float  # dBFS


class FrameJudge(Protocol):
    """What the segmenter asks of each frame (swappable: benchmarks plug in baselines)."""

    def judge(self, frame: Frame) -> Judged: ...


class NoiseFloor:
    """The room's steady noise level (dBFS): the quietest frame of the last `window` frames.

    Quieter noise is followed at once and louder noise (a fan switched on) within the
    window. While people talk, the dips between their syllables and words keep it at the
    noise under the speech. It starts from the first frame (a room that is noisy from the
    start is known as noisy at once) and from the first dip when a recording opens on
    speech. Monotonic deque: O(1) per frame.
    """

    def __init__(self, window: int) -> None:
        self._window = max(1, window)
        self._count = 0
        self._minima: deque[tuple[int, float]] = deque()  # (frame index, level) increasing

    @property
    def level(self) -> float:
        return self._minima[0][1] if self._minima else SILENCE_DBFS

    def update(self, frame_level: float) -> float:
        minima = self._minima
        while minima and minima[-1][1] >= frame_level:
            minima.pop()
        minima.append((self._count, frame_level))
        if minima[0][0] <= self._count - self._window:
            minima.popleft()
        self._count += 1
        return minima[0][1]


def make_detector(settings: SegmenterSettings, mode: int) -> Detector:
    match settings.detector:
        case "webrtc":
            return WebrtcDetector(mode)
        case "earshot":
            return ThresholdDetector(EarshotScorer(), settings.earshot_threshold, mode)
        case "silero":
            return ThresholdDetector(SileroScorer(), settings.silero_threshold, mode)


class Voicing:
    """The product's `FrameJudge` (see the module docstring)."""

    def __init__(self, settings: SegmenterSettings, room: LiveRoom) -> None:
        self.s = settings
        self._room = room
        frame_samples = SAMPLE_RATE * settings.frame_ms // 1000
        self._highpass = HighPass(settings.highpass_hz, frame_samples)
        self._detector = make_detector(settings, room.current.vad_mode)
        self._mode_version = room.version
        self._noise = NoiseFloor(round(settings.noise_window_s * 1000 / settings.frame_ms))

    @property
    def noise_dbfs(self) -> float:
        return self._noise.level

    def judge(self, frame: Frame) -> Judged:
        if self._room.version != self._mode_version:
            self._mode_version = self._room.version
            self._detector.set_mode(self._room.current.vad_mode)
        pcm, level = self._highpass.process(frame.pcm)
        speech = self._detector.is_speech(pcm)
        noise = self._noise.update(level)
        loud = level >= self.s.energy_floor_dbfs and (
            self.s.noise_margin_db == 0 or level >= noise + self.s.noise_margin_db
        )
        kept = frame if pcm is frame.pcm else Frame(frame.start, pcm)
        return Judged(kept, speech and loud, level)


def conditioned(pcm: Pcm, settings: SegmenterSettings) -> Pcm:
    """`pcm` (whole frames) as the segmenter conditions it (for tests and benchmarks)."""
    import numpy as np

    n = SAMPLE_RATE * settings.frame_ms // 1000
    highpass = HighPass(settings.highpass_hz, n)
    parts = [highpass.process(pcm[i : i + n])[0] for i in range(0, len(pcm) - n + 1, n)]
    out: Pcm = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
    return out
