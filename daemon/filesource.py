"""File audio source: WAV/FLAC/OGG at any rate and channel count → 16 kHz mono frames.

The same interface as the live capture (`frames()`, `wall_time()`), fed either paced in
real time or as fast as possible. Resampling is soxr's streaming resampler, so memory
stays bounded whatever the file's length. DC and rumble are removed by the segmenter's
high-pass (daemon/segmenter/condition.py), for files and the live microphone alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from daemon.values import SAMPLE_RATE, Frame, Pcm

_BLOCK_S = 0.5  # file blocks read at a time


class AudioSource(Protocol):
    """What the segmenter reads: consecutive frames on a monotonic 16 kHz sample clock."""

    def frames(self) -> AsyncIterator[Frame]: ...

    def wall_time(self, sample: int) -> float: ...


class AudioFileError(Exception):
    """The file cannot be read as audio."""


def _to_int16(block: npt.NDArray[np.float32]) -> Pcm:
    clipped = np.clip(block, -1.0, 1.0 - 1.0 / 32768.0)
    out: Pcm = np.round(clipped * 32768.0).astype(np.int16)
    return out


class FileSource:
    """Frames of `frame_samples` samples from an audio file; the last frame is zero-padded.

    `realtime` paces the frames: each is handed on when its last sample is due, on
    `clock`, waiting with `sleep` (by default the monotonic clock and asyncio's sleep).
    """

    def __init__(
        self,
        path: Path,
        frame_samples: int,
        *,
        realtime: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.path = path
        self.frame_samples = frame_samples
        self.realtime = realtime
        self._clock = clock
        self._sleep = sleep
        self._t0 = time.time()
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise AudioFileError(f"{path}: cannot read audio: {exc}") from None
        self.rate = int(info.samplerate)
        self.channels = int(info.channels)
        self.duration_s = float(info.frames) / self.rate if self.rate else 0.0

    def wall_time(self, sample: int) -> float:
        return self._t0 + sample / SAMPLE_RATE

    def _pcm_blocks(self) -> Iterator[Pcm]:
        """16 kHz mono int16 blocks of the whole file."""
        resampler = (
            None
            if self.rate == SAMPLE_RATE
            else soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        )
        blocksize = max(1, int(self.rate * _BLOCK_S))
        with sf.SoundFile(str(self.path)) as fh:
            for block in fh.blocks(blocksize=blocksize, dtype="float32", always_2d=True):
                mono = block.mean(axis=1, dtype=np.float32)
                if resampler is not None:
                    mono = resampler.resample_chunk(mono)
                yield _to_int16(mono)
            if resampler is not None:
                yield _to_int16(resampler.resample_chunk(np.zeros(0, np.float32), last=True))

    def _frames(self) -> Iterator[Frame]:
        pending = np.zeros(0, dtype=np.int16)
        clock = 0
        n = self.frame_samples
        for block in self._pcm_blocks():
            pending = np.concatenate((pending, block)) if len(pending) else block
            whole = len(pending) // n * n
            for offset in range(0, whole, n):
                yield Frame(clock, pending[offset : offset + n].copy())
                clock += n
            pending = pending[whole:]
        if len(pending):
            last = np.zeros(n, dtype=np.int16)
            last[: len(pending)] = pending
            yield Frame(clock, last)

    async def frames(self) -> AsyncIterator[Frame]:
        self._t0 = time.time()
        start = self._clock()
        for count, frame in enumerate(self._frames()):
            if self.realtime:
                due = start + frame.end / SAMPLE_RATE
                await self._sleep(max(0.0, due - self._clock()))
            elif count % 64 == 0:
                await asyncio.sleep(0)  # let the rest of the pipeline run
            yield frame
