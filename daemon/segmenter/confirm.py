"""Clip confirmation: a second, stricter opinion on every clip before it is sent.

The per-frame detector (webrtcvad by default) finds speech readily, quiet far-field
speech included, but it also calls fans, hum and babble speech. So while the segmenter
is SPEAKING (never while the room is quiet: no cost then), each frame of the clip is
also scored by Silero VAD, from the clip's first (pre-roll) frame on, with a fresh model
state per clip. A clip in which Silero heard less than `confirm_speech_ms` of speech
is noise: dropped and counted (`noise_dropped`, `noise_unconfirmed`), never billed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from daemon.config import SegmenterSettings
from daemon.segmenter.detectors import SileroScorer, ThresholdDetector
from daemon.values import Pcm


class Confirmer(Protocol):
    def reset(self) -> None: ...

    def confirms(self, pcm: Pcm) -> bool: ...


class SileroConfirmer:
    def __init__(self, threshold: float) -> None:
        self._detector = ThresholdDetector(SileroScorer(), threshold)

    def reset(self) -> None:
        self._detector.reset()

    def confirms(self, pcm: Pcm) -> bool:
        return self._detector.is_speech(pcm)


ConfirmerFactory = Callable[[SegmenterSettings], Confirmer | None]


def make_confirmer(settings: SegmenterSettings) -> Confirmer | None:
    match settings.confirm:
        case "silero":
            return SileroConfirmer(settings.silero_threshold)
        case "off":
            return None
