"""Compose speech scenarios from the shared real recordings, and run the segmenter on files.

A scenario is a list of parts, each (recording name or 16 kHz int16 array, gap seconds
before it). The clips are placed on a silent (or noisy) 16 kHz mono track at known offsets,
so the ground truth is what was placed:

    scene = compose([("de_pv_leopard", 2.0), ("fr_pv_leopard", 2.0)], noise="noise_cafe_short",
                    snr_db=15.0)
    path = write(scene.pcm, tmp_path / "scene.flac", rate=44_100, channels=2)
    run = await segment_file(path)
    assert len(run.utterances) == len(scene.truth)

The recordings are read from ../shared/audio (never copied into the project).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from daemon.config import LiveRoom, RoomSettings, SegmenterSettings
from daemon.counters import Counters
from daemon.filesource import FileSource
from daemon.segmenter import FrameJudge, Segmenter, SegmentEvent, SpeechStarted, conditioned
from daemon.values import SAMPLE_RATE, Frame, Pcm, Utterance, dbfs
from scripts.paths import AUDIO_DIR

TRIM_FRAME = SAMPLE_RATE // 100  # 10 ms frames for the energy trim
TRIM_BELOW_PEAK_DB = 35.0  # leading/trailing 10 ms frames this far below the peak are cut
WRITE_BLOCK = 16_384  # frames per write call

Source = str | Pcm
Part = tuple[Source, float]  # (recording name or 16 kHz mono int16 array, gap before it, s)
Span = tuple[float, float]  # (start_s, end_s) on the scenario's clock


# ----------------------------------------------------------------------------- clips


@functools.cache
def _load_cached(name: str) -> Pcm:
    path = AUDIO_DIR / (name if name.endswith(".wav") else f"{name}.wav")
    pcm, rate = sf.read(str(path), dtype="int16", always_2d=True)
    mono: Pcm = pcm.mean(axis=1).round().astype(np.int16)
    if rate != SAMPLE_RATE:
        mono = to_int16(soxr.resample(to_float(mono), rate, SAMPLE_RATE, quality="HQ"))
    mono.setflags(write=False)
    return mono


def load(name: str) -> Pcm:
    """A shared recording as 16 kHz mono int16 (read-only array; copy to modify)."""
    return _load_cached(name)


def to_float(pcm: Pcm) -> npt.NDArray[np.float32]:
    return pcm.astype(np.float32) / 32768.0


def to_int16(samples: npt.NDArray[np.floating[Any]]) -> Pcm:
    clipped = np.clip(samples.astype(np.float64), -1.0, 1.0 - 1.0 / 32768.0)
    out: Pcm = np.round(clipped * 32768.0).astype(np.int16)
    return out


def frame_levels(pcm: Pcm, frame: int = TRIM_FRAME) -> npt.NDArray[np.float64]:
    """dBFS of each whole `frame`-sample frame of `pcm`."""
    count = len(pcm) // frame
    return np.array([dbfs(pcm[i * frame : (i + 1) * frame]) for i in range(count)])


def trim(pcm: Pcm, below_peak_db: float = TRIM_BELOW_PEAK_DB) -> Pcm:
    """`pcm` without its leading/trailing 10 ms frames quieter than peak - `below_peak_db`.

    Levels are measured above the segmenter's high-pass cut-off (a recording's hum or
    rumble tail is not speech), the returned samples are the recording's own.
    """
    whole = len(pcm) // TRIM_FRAME * TRIM_FRAME
    settings = SegmenterSettings(frame_ms=10)
    levels = frame_levels(conditioned(pcm[:whole], settings)) if whole else frame_levels(pcm)
    if len(levels) == 0:
        return pcm
    loud = np.flatnonzero(levels >= levels.max() - below_peak_db)
    return pcm[loud[0] * TRIM_FRAME : (loud[-1] + 1) * TRIM_FRAME]


def cut(source: Source, start_s: float, seconds: float) -> Pcm:
    """`seconds` of a recording from `start_s` on."""
    pcm = load(source) if isinstance(source, str) else source
    start = round(start_s * SAMPLE_RATE)
    return pcm[start : start + round(seconds * SAMPLE_RATE)]


def gain_to(pcm: Pcm, level_dbfs: float) -> Pcm:
    """`pcm` scaled so that its RMS level is `level_dbfs`."""
    gain = 10.0 ** ((level_dbfs - dbfs(pcm)) / 20.0)
    return to_int16(to_float(pcm) * gain)


def noise_track(name: str, samples: int, level_dbfs: float) -> Pcm:
    """A noise recording looped to `samples` samples at an RMS level of `level_dbfs`."""
    noise = load(name)
    looped = np.resize(noise, samples)
    return gain_to(looped, level_dbfs)


# ----------------------------------------------------------------------------- compose


@dataclass(frozen=True)
class Scenario:
    """A composed 16 kHz mono track and where its speech clips were placed."""

    pcm: Pcm
    truth: list[Span]
    speech_dbfs: float  # RMS level of the placed speech alone
    noise_dbfs: float | None = None

    @property
    def seconds(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


def _clip(source: Source, *, trimmed: bool, speech_dbfs: float | None) -> Pcm:
    pcm = load(source) if isinstance(source, str) else source
    if trimmed:
        pcm = trim(pcm)
    return pcm if speech_dbfs is None else gain_to(pcm, speech_dbfs)


def _place(clips: Sequence[tuple[Pcm, float]], tail_s: float) -> tuple[Pcm, list[Span]]:
    offsets: list[int] = []
    cursor = 0
    for clip, gap_s in clips:
        cursor += round(gap_s * SAMPLE_RATE)
        offsets.append(cursor)
        cursor += len(clip)
    track = np.zeros(cursor + round(tail_s * SAMPLE_RATE), dtype=np.int16)
    truth: list[Span] = []
    for (clip, _), offset in zip(clips, offsets, strict=True):
        track[offset : offset + len(clip)] = clip
        truth.append((offset / SAMPLE_RATE, (offset + len(clip)) / SAMPLE_RATE))
    return track, truth


def _speech_level(track: Pcm, truth: Sequence[Span]) -> float:
    parts = [track[round(a * SAMPLE_RATE) : round(b * SAMPLE_RATE)] for a, b in truth]
    return dbfs(np.concatenate(parts)) if parts else -120.0


def _noise_level(speech: float, snr_db: float | None, noise_dbfs: float | None) -> float | None:
    if snr_db is not None and noise_dbfs is not None:
        raise ValueError("give snr_db or noise_dbfs, not both")
    if snr_db is not None:
        return speech - snr_db
    return noise_dbfs


def compose(
    parts: Sequence[Part],
    *,
    tail_s: float = 1.0,
    noise: str | None = None,
    snr_db: float | None = None,
    noise_dbfs: float | None = None,
    speech_dbfs: float | None = None,
    trimmed: bool = True,
) -> Scenario:
    """Place each clip after its gap (digital silence, or `noise` at `snr_db` / `noise_dbfs`).

    Clips are energy-trimmed (`trimmed`) so the truth spans start and end on speech, and
    each scaled to an RMS of `speech_dbfs` if given. The SNR is the placed speech's RMS over
    the noise's RMS. The track ends `tail_s` after the last clip.
    """
    clips = [(_clip(src, trimmed=trimmed, speech_dbfs=speech_dbfs), gap) for src, gap in parts]
    track, truth = _place(clips, tail_s)
    speech = _speech_level(track, truth)
    level = _noise_level(speech, snr_db, noise_dbfs)
    if noise is None or level is None:
        return Scenario(track, truth, speech)
    mixed = to_float(track) + to_float(noise_track(noise, len(track), level))
    return Scenario(to_int16(mixed), truth, speech, level)


def write(
    pcm: Pcm,
    path: Path,
    *,
    rate: int = SAMPLE_RATE,
    channels: int = 1,
    subtype: str | None = None,
) -> Path:
    """Write 16 kHz mono `pcm` at `rate` with `channels` equal channels; format from suffix."""
    samples = to_float(pcm)
    if rate != SAMPLE_RATE:
        samples = soxr.resample(samples, SAMPLE_RATE, rate, quality="HQ").astype(np.float32)
    multi = np.repeat(samples[:, None], channels, axis=1)
    if subtype is None and path.suffix.lower() in {".wav", ".flac"}:
        subtype = "PCM_16"
    path.parent.mkdir(parents=True, exist_ok=True)
    # In blocks: libvorbis allocas the whole write on the stack and overflows on long
    # single writes (libsndfile/libsndfile#1095, bastibe/python-soundfile#233).
    with sf.SoundFile(str(path), "w", rate, channels, subtype=subtype) as fh:
        for offset in range(0, len(multi), WRITE_BLOCK):
            fh.write(multi[offset : offset + WRITE_BLOCK])
    return path


# ----------------------------------------------------------------------------- run


@dataclass
class SegmentRun:
    """What came out of one pass of the segmenter over a source."""

    utterances: list[Utterance] = field(default_factory=list)
    started: list[int] = field(default_factory=list)  # SpeechStarted sample positions
    counters: Counters = field(default_factory=Counters)
    frames: int = 0

    @property
    def spans(self) -> list[Span]:
        return [(u.start / SAMPLE_RATE, u.end / SAMPLE_RATE) for u in self.utterances]

    def count(self, name: str) -> float:
        return self.counters.get(name)


FrameHook = Callable[[int, Frame], None]  # (frame index, frame) before the frame is pushed


def _collect(run: SegmentRun, events: Sequence[SegmentEvent]) -> None:
    for event in events:
        if isinstance(event, SpeechStarted):
            run.started.append(event.start)
        else:
            run.utterances.append(event)


def make_segmenter(
    settings: SegmenterSettings | None = None,
    room: LiveRoom | None = None,
    counters: Counters | None = None,
    judge: FrameJudge | None = None,
) -> Segmenter:
    return Segmenter(
        settings or SegmenterSettings(),
        room or LiveRoom(RoomSettings()),
        counters or Counters(),
        wall_time=lambda sample: sample / SAMPLE_RATE,
        judge=judge,
    )


class FakeTime:
    """A clock that moves only when someone sleeps on it."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._now += seconds
        await asyncio.sleep(0)


async def segment_file(
    path: Path,
    settings: SegmenterSettings | None = None,
    room: LiveRoom | None = None,
    *,
    realtime: FakeTime | None = None,
    before_frame: FrameHook | None = None,
) -> SegmentRun:
    """FileSource → Segmenter over the whole file, then flush; as fast as it goes, or
    paced in real time on `realtime`'s clock."""
    settings = settings or SegmenterSettings()
    run = SegmentRun()
    segmenter = make_segmenter(settings, room, run.counters)
    frame = SAMPLE_RATE * settings.frame_ms // 1000
    if realtime is None:
        source = FileSource(path, frame)
    else:
        source = FileSource(path, frame, realtime=True, clock=realtime.now, sleep=realtime.sleep)
    async for frame in source.frames():
        if before_frame is not None:
            before_frame(run.frames, frame)
        _collect(run, segmenter.push(frame))
        run.frames += 1
    _collect(run, segmenter.flush())
    return run


def pcm_frames(pcm: Pcm, frame_ms: int = 30) -> list[Frame]:
    """16 kHz `pcm` cut into whole frames on a clock starting at 0 (the remainder dropped)."""
    n = SAMPLE_RATE * frame_ms // 1000
    return [Frame(i, pcm[i : i + n]) for i in range(0, len(pcm) - n + 1, n)]


def segment_pcm(
    pcm: Pcm,
    settings: SegmenterSettings | None = None,
    room: LiveRoom | None = None,
    *,
    before_frame: FrameHook | None = None,
    judge: FrameJudge | None = None,
) -> SegmentRun:
    """The Segmenter alone over 16 kHz mono `pcm` (no file, no resampling), then flush."""
    settings = settings or SegmenterSettings()
    run = SegmentRun()
    segmenter = make_segmenter(settings, room, run.counters, judge)
    for index, frame in enumerate(pcm_frames(pcm, settings.frame_ms)):
        if before_frame is not None:
            before_frame(index, frame)
        _collect(run, segmenter.push(frame))
        run.frames += 1
    _collect(run, segmenter.flush())
    return run
