#!/usr/bin/env python3
"""Benchmark: file source → segmenter over ≥ 10 minutes of the shared real recordings.

    .venv/bin/python scripts/bench_pipeline.py [--audio-dir ../shared/audio] [--seconds 600]

All of `--audio-dir`/*.wav are concatenated (16 kHz mono, resampled/downmixed if needed),
looped to at least `--seconds`, written to one temporary WAV and run as fast as possible
(no pacing) through:

1. FileSource + Segmenter (the whole file path: read, convert, frame, high-pass, VAD, state
   machine, Silero clip confirmation while speech is being cut);
2. the Segmenter alone on pre-decoded frames (the default settings);
3. the Segmenter alone without the clip confirmation (`confirm = "off"`): what every frame
   costs, the path that runs all day in a quiet room;
4. a bare webrtcvad loop over the same frames (`vad.is_speech(frame_bytes, 16000)` only,
   bytes prepared beforehand): the floor.

The verdict compares 3 with 4 (the per-frame path against the bare VAD); 2 minus 3 is
what the confirmation adds, spread over all frames (it only runs while speech is cut).
Each figure is the median of `--runs` runs in this process. Exits 0 whatever the verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr
import webrtcvad

from daemon.config import LiveRoom, RoomSettings, SegmenterSettings
from daemon.counters import Counters
from daemon.filesource import FileSource
from daemon.segmenter import Segmenter
from daemon.values import SAMPLE_RATE, Frame, Pcm, Utterance

DEFAULT_AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "audio"
TARGET_RATIO = 10.0  # segmenter time per frame over bare VAD time per frame


@dataclass(frozen=True)
class Timing:
    name: str
    wall_s: float  # median over the runs
    frames: int
    audio_s: float
    utterances: int

    @property
    def us_per_frame(self) -> float:
        return self.wall_s / self.frames * 1e6

    @property
    def rtf(self) -> float:
        return self.audio_s / self.wall_s


# ----------------------------------------------------------------------------- audio


def read_mono16k(path: Path) -> Pcm:
    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono: npt.NDArray[np.float32] = samples.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    clipped = np.clip(mono, -1.0, 1.0 - 1.0 / 32768.0)
    out: Pcm = np.round(clipped * 32768.0).astype(np.int16)
    return out


def corpus(audio_dir: Path, seconds: float) -> tuple[Pcm, int]:
    """All WAVs of `audio_dir` in name order, looped to ≥ `seconds`; and the file count."""
    paths = sorted(audio_dir.glob("*.wav"))
    if not paths:
        raise SystemExit(f"no .wav files in {audio_dir}")
    one_pass = np.concatenate([read_mono16k(p) for p in paths])
    loops = max(1, int(np.ceil(seconds * SAMPLE_RATE / len(one_pass))))
    return np.tile(one_pass, loops), len(paths)


def to_frames(pcm: Pcm, frame_samples: int) -> list[Frame]:
    """Frames as FileSource cuts them: consecutive, the last one zero-padded."""
    whole = -(-len(pcm) // frame_samples) * frame_samples
    padded = np.zeros(whole, dtype=np.int16)
    padded[: len(pcm)] = pcm
    return [
        Frame(start, padded[start : start + frame_samples].copy())
        for start in range(0, whole, frame_samples)
    ]


# ----------------------------------------------------------------------------- runs


def new_segmenter(settings: SegmenterSettings, wall_time: Callable[[int], float]) -> Segmenter:
    return Segmenter(settings, LiveRoom(RoomSettings()), Counters(), wall_time)


def count_utterances(events: list[object]) -> int:
    return sum(isinstance(e, Utterance) for e in events)


async def _file_path(path: Path, settings: SegmenterSettings) -> tuple[float, int, int]:
    source = FileSource(path, SAMPLE_RATE * settings.frame_ms // 1000)
    segmenter = new_segmenter(settings, source.wall_time)
    frames = utterances = 0
    began = time.perf_counter()
    async for frame in source.frames():
        utterances += count_utterances(list(segmenter.push(frame)))
        frames += 1
    utterances += count_utterances(list(segmenter.flush()))
    return time.perf_counter() - began, frames, utterances


def run_file_path(path: Path, settings: SegmenterSettings) -> tuple[float, int, int]:
    return asyncio.run(_file_path(path, settings))


def run_segmenter(frames: list[Frame], settings: SegmenterSettings) -> tuple[float, int, int]:
    segmenter = new_segmenter(settings, lambda sample: sample / SAMPLE_RATE)
    utterances = 0
    began = time.perf_counter()
    for frame in frames:
        utterances += count_utterances(list(segmenter.push(frame)))
    utterances += count_utterances(list(segmenter.flush()))
    return time.perf_counter() - began, len(frames), utterances


def run_bare_vad(payloads: list[bytes], mode: int) -> tuple[float, int, int]:
    vad = webrtcvad.Vad(mode)
    voiced = 0
    began = time.perf_counter()
    for payload in payloads:
        voiced += vad.is_speech(payload, SAMPLE_RATE)
    return time.perf_counter() - began, len(payloads), 0


def median_of(
    name: str, runs: int, audio_s: float, once: Callable[[], tuple[float, int, int]]
) -> Timing:
    results = [once() for _ in range(runs)]
    walls = [wall for wall, _, _ in results]
    _, frames, utterances = results[-1]
    return Timing(name, statistics.median(walls), frames, audio_s, utterances)


# ----------------------------------------------------------------------------- report


def peak_rss_mb() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024 if sys.platform != "darwin" else kib / 1024 / 1024


def report(timings: list[Timing], runs: int) -> None:
    print(f"{'path':<28}{'frames':>8}{'µs/frame':>11}{'RTF':>10}{'wall s':>9}{'utts':>6}")
    for t in timings:
        print(
            f"{t.name:<28}{t.frames:>8}{t.us_per_frame:>11.1f}{t.rtf:>10.0f}"
            f"{t.wall_s:>9.3f}{t.utterances:>6}"
        )
    print(f"(each figure the median of {runs} runs; RTF = audio seconds / wall seconds)")


def verdict(segmenter: Timing, bare: Timing) -> None:
    ratio = segmenter.us_per_frame / bare.us_per_frame
    status = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"segmenter / bare VAD: {ratio:.1f}x (target ≤ {TARGET_RATIO:.0f}x): {status}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--audio-dir", type=Path, default=DEFAULT_AUDIO_DIR)
    parser.add_argument("--seconds", type=float, default=600.0, help="at least this much audio")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    return parser.parse_args(argv)


def bench(
    path: Path, frames: list[Frame], settings: SegmenterSettings, runs: int, audio_s: float
) -> list[Timing]:
    mode = RoomSettings().vad_mode
    payloads = [f.pcm.tobytes() for f in frames]
    unconfirmed = settings.model_copy(update={"confirm": "off"})
    cases: dict[str, Callable[[], tuple[float, int, int]]] = {
        "1 FileSource + Segmenter": lambda: run_file_path(path, settings),
        "2 Segmenter alone": lambda: run_segmenter(frames, settings),
        "3 Segmenter, confirm off": lambda: run_segmenter(frames, unconfirmed),
        f"4 bare webrtcvad (mode {mode})": lambda: run_bare_vad(payloads, mode),
    }
    return [median_of(name, runs, audio_s, once) for name, once in cases.items()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = SegmenterSettings()
    pcm, files = corpus(args.audio_dir, args.seconds)
    audio_s = len(pcm) / SAMPLE_RATE
    print(f"audio: {files} files from {args.audio_dir}, {audio_s:.1f} s at 16 kHz mono")
    frames = to_frames(pcm, SAMPLE_RATE * settings.frame_ms // 1000)
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        path = Path(tmp) / "corpus.wav"
        sf.write(str(path), pcm, SAMPLE_RATE, subtype="PCM_16")
        timings = bench(path, frames, settings, args.runs, audio_s)
    report(timings, args.runs)
    verdict(timings[2], timings[3])
    extra = timings[1].us_per_frame - timings[2].us_per_frame
    print(f"Silero clip confirmation: +{extra:.1f} µs per frame over the whole corpus")
    print(f"peak RSS: {peak_rss_mb():.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
