"""Values that cross stage boundaries: frames, utterances, translation events, outcomes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16_000  # the pipeline's clock: mono int16 at 16 kHz
OUTPUT_RATE = 24_000  # the service's speech: mono int16 at 24 kHz

Pcm = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class Frame:
    """One VAD frame of 16 kHz mono int16 PCM; `start` is its first sample on the clock."""

    start: int
    pcm: Pcm

    @property
    def end(self) -> int:
        return self.start + len(self.pcm)


@dataclass(frozen=True, slots=True)
class UtteranceStats:
    voiced_frames: int
    frames: int
    mean_dbfs: float
    peak_dbfs: float
    split: bool  # cut at the maximum length rather than ended by silence
    pause_cut: bool = False  # ended in a pause of the talk, the speech after it the next clip


@dataclass(slots=True)
class Timeline:
    """Monotonic timestamps (time.monotonic()) of one utterance's way through the daemon."""

    speech_end_detected: float = 0.0
    request_sent: float = 0.0
    first_text: float = 0.0
    first_audio: float = 0.0
    first_sample_to_device: float = 0.0
    last_sample_drained: float = 0.0


@dataclass(frozen=True, slots=True)
class Utterance:
    """A clip of speech cut by the segmenter."""

    id: int
    start: int  # first sample, on the source clock
    end: int  # one past the last sample
    pcm: Pcm
    stats: UtteranceStats
    wall_start: float  # wall-clock time (time.time()) of `start`
    wall_end: float
    timeline: Timeline = field(default_factory=Timeline, compare=False)

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class AudioChunk:
    pcm: Pcm  # 24 kHz mono int16


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    input_audio_tokens: int
    output_audio_tokens: int


OutcomeKind = Literal["translated", "failed", "dropped"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an utterance ended; every utterance gets exactly one."""

    kind: OutcomeKind
    reason: str = ""  # why it failed or was dropped ("" when translated)
    detail: str = ""  # human-readable detail, never a secret
    attempts: int = 0
    text: str = ""  # the translated text (complete, or what arrived before a failure)
    usage: Usage | None = None
    at: float = field(default_factory=time.monotonic, compare=False)


@dataclass(frozen=True, slots=True)
class Retrying:
    """An attempt failed with a transient error; another follows after `delay_s`."""

    kind: str
    delay_s: float
    attempt: int


TranslationEvent = TextDelta | AudioChunk | Usage | Retrying | Outcome


def dbfs(pcm: Pcm) -> float:
    """RMS level of int16 PCM in dB relative to full scale (-120 for silence)."""
    if len(pcm) == 0:
        return -120.0
    samples = pcm.astype(np.float32)
    rms = float(np.sqrt(np.mean(samples * samples)))
    return -120.0 if rms < 1e-3 else 20.0 * float(np.log10(rms / 32768.0))
