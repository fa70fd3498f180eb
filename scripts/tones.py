"""Steady tones in a recording of the rig's speaker, in order, with their edges.

Without a speech directory the simulator speaks each translation as a tone whose frequency
comes from the clip (`daemon.simulator.speech.tone_hz`), so the tones a recording holds
tell which translations played, in what order and when.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf

from scripts.procs import stop_process

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Tone:
    """One steady tone found in a recording."""

    hz: float
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


WINDOW_S = 0.05  # analysis window
ON_DBFS = -45.0  # a window quieter than this holds no tone
SAME_HZ = 20.0  # windows within this of a run's frequency continue the run
MIN_WINDOWS = 3  # shorter runs are clicks/transients, not tones
PAD = 4  # FFT zero padding factor: 5 Hz bins at 48 kHz
EDGE_BLOCK_S = 0.005  # resolution of the refined tone edges
EDGE_FRACTION = 0.5  # an edge is where the 5 ms RMS crosses this share of the tone's RMS


def _windows(x: FloatArray, win: int) -> FloatArray:
    count = len(x) // win
    return x[: count * win].reshape(count, win)


def window_levels(x: FloatArray, rate: int) -> tuple[FloatArray, FloatArray]:
    """(dominant frequency, RMS) of each 50 ms window of `x` (float, full scale 1.0)."""
    frames = _windows(x, round(rate * WINDOW_S))
    if len(frames) == 0:
        return np.zeros(0), np.zeros(0)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    taper = np.hanning(frames.shape[1])
    size = frames.shape[1] * PAD
    peaks = np.concatenate(
        [
            np.argmax(np.abs(np.fft.rfft(frames[i : i + 256] * taper, n=size, axis=1)), axis=1)
            for i in range(0, len(frames), 256)
        ]
    )
    return peaks * rate / size, rms


def tone_runs(hz: FloatArray, rms: FloatArray) -> list[tuple[float, int, int]]:
    """Runs of loud windows with one dominant frequency: (hz, first, last window)."""
    runs: list[tuple[float, int, int]] = []
    current: list[int] = []

    def close() -> None:
        if len(current) >= MIN_WINDOWS:
            runs.append((float(np.median(hz[current])), current[0], current[-1]))
        current.clear()

    loud = rms >= 10 ** (ON_DBFS / 20)
    for i in range(len(hz)):
        if current and (not loud[i] or abs(hz[i] - np.median(hz[current])) > SAME_HZ):
            close()
        if loud[i]:
            current.append(i)
    close()
    return runs


def _refine(x: FloatArray, rate: int, lo: int, hi: int, level: float) -> tuple[float, float]:
    """Start and end (s) of the tone in x[lo:hi], where its 5 ms RMS passes `level`/2."""
    block = round(rate * EDGE_BLOCK_S)
    env = np.sqrt(np.mean(_windows(x[lo:hi], block) ** 2, axis=1))
    on = np.flatnonzero(env >= level * EDGE_FRACTION)
    if len(on) == 0:
        return lo / rate, hi / rate
    return float(lo + on[0] * block) / rate, float(lo + (on[-1] + 1) * block) / rate


def detect_tones(pcm: npt.NDArray[Any], rate: int) -> list[Tone]:
    """The sequence of steady tones in a recording, in order, with refined edges."""
    x = pcm.astype(np.float64)
    if pcm.dtype == np.int16:
        x /= 32768.0
    hz, rms = window_levels(x, rate)
    runs = tone_runs(hz, rms)
    win = round(rate * WINDOW_S)
    tones: list[Tone] = []
    for index, (freq, first, last) in enumerate(runs):
        lo = max((first - 1) * win, runs[index - 1][2] * win + win if index else 0)
        hi = min((last + 2) * win, runs[index + 1][1] * win if index + 1 < len(runs) else len(x))
        level = float(np.median(rms[first : last + 1]))
        start, end = _refine(x, rate, lo, hi, level)
        tones.append(Tone(freq, float(start), float(end)))
    return tones


def tones_in_wav(path: Path) -> list[Tone]:
    pcm, rate = sf.read(str(path), dtype="int16", always_2d=True)
    return detect_tones(pcm.mean(axis=1), int(rate))


class SpeakerRecording:
    """What the rig's speaker plays, recorded (parecord of spk.monitor) into a WAV."""

    def __init__(self, rig: Any, path: Path) -> None:
        self.path = path
        self.started_at = time.monotonic()
        self._proc: subprocess.Popen[bytes] = rig.record_speaker(path)

    def stop(self) -> Path:
        """Stop parecord (SIGTERM: it finalises the WAV header) and return the file."""
        stop_process(self._proc, 3.0)
        return self.path

    def stop_and_detect(self) -> list[Tone]:
        return tones_in_wav(self.stop())
