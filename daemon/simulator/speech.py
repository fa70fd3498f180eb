"""The simulator's translation of a clip: its caption and its speech, both derived from
the clip's PCM so that what comes out tells which clip went in; and its billed tokens."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

OUT_RATE = 24000
TONE_AMPLITUDE = 0.25
FADE_S = 0.010
TOKENS_PER_AUDIO_S = 12.5
Pcm = npt.NDArray[np.int16]


def clip_digest(pcm: Pcm) -> str:
    """First 8 hex digits of sha256 over the clip's mono int16 little-endian PCM."""
    data = np.ascontiguousarray(pcm, dtype="<i2").tobytes()
    return hashlib.sha256(data).hexdigest()[:8]


def caption_text(target: str, duration_s: float, digest: str) -> str:
    """The simulated translation of a clip."""
    return f"[{target}] clip {duration_s:.2f}s #{digest}"


def tone_hz(digest: str) -> int:
    """Frequency of the simulated speech for a clip: 300..1050 Hz in 50 Hz steps."""
    return 300 + (int(digest, 16) % 16) * 50


def tone_samples(digest: str, duration_s: float) -> Pcm:
    """Simulated speech: 24 kHz mono int16 sine, 0.25 full scale, 10 ms linear fades."""
    n = round(duration_s * OUT_RATE)
    t = np.arange(n, dtype=np.float64) / OUT_RATE
    wave = TONE_AMPLITUDE * np.sin(2.0 * np.pi * tone_hz(digest) * t)
    fade_n = min(round(FADE_S * OUT_RATE), n // 2)
    if fade_n > 0:
        ramp = np.arange(fade_n, dtype=np.float64) / fade_n
        wave[:fade_n] *= ramp
        wave[n - fade_n :] *= ramp[::-1]
    return np.round(wave * 32767.0).astype(np.int16)


SPEECH_RMS = 0.1  # recordings used as speech are levelled to this RMS (-20 dBFS)


@functools.lru_cache(maxsize=4)
def speech_library(directory: str) -> tuple[Pcm, ...]:
    """The WAV recordings of `directory` (not `noise_*`), 24 kHz mono int16, levelled."""
    import soxr

    voices: list[Pcm] = []
    for path in sorted(Path(directory).glob("*.wav")):
        if path.name.startswith("noise_"):
            continue
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        mono = data.mean(axis=1)
        if rate != OUT_RATE:
            mono = soxr.resample(mono, rate, OUT_RATE)
        rms = float(np.sqrt(np.mean(mono * mono))) if len(mono) else 0.0
        if rms > 1e-4:
            voices.append(
                np.clip(np.round(mono / rms * SPEECH_RMS * 32767), -32768, 32767).astype(np.int16)
            )
    if not voices:
        raise ValueError(f"no speech recordings (*.wav) in {directory}")
    return tuple(voices)


def speech_samples(digest: str, duration_s: float, library: tuple[Pcm, ...]) -> Pcm:
    """Simulated speech from real recordings: as long as the clip, chosen by its digest."""
    n = round(duration_s * OUT_RATE)
    value = int(digest, 16)
    voice = library[value % len(library)]
    reps = -(-n // len(voice)) + 1
    looped = np.tile(voice, reps)
    start = (value // len(library)) % len(voice)
    return looped[start : start + n].copy()


def audio_tokens(duration_s: float) -> int:
    """Billed tokens for audio: 12.5 per second, at least one second."""
    return round(TOKENS_PER_AUDIO_S * max(1.0, duration_s))


def text_pieces(text: str) -> list[str]:
    """Split on spaces, keeping each space at the end of its piece."""
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]
