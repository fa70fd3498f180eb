"""The echo canceller's reference: exactly what the output device plays, on the mic's clock.

Two halves, one value handed forward from playback to the echo stage:

- `PlayedAudio` is written by the playback's PortAudio callback: after volume, mute and
  ducking, the block it hands the DAC is copied into a preallocated `SampleRing` (at the
  device rate), stamped with the monotonic DAC time of the block's end (PortAudio's
  `outputBufferDacTime`, or the stream latency). Nothing else happens in the callback.
- `ReferenceAligner` reads it on the event loop, resamples it to 16 kHz (soxr) and keeps
  the last `HISTORY_S` on a time line: 16 kHz sample `i` sounded at `t0 + i / 16000`.
  `reference_for(captured_at, n)` returns the `n` samples that sounded while the
  microphone captured its frame (`Capture.monotonic_time`), so the canceller sees the
  played audio with the device timing already taken out: only the acoustic path (and
  whatever the drivers misreport) is left for its own delay estimator.

Both clocks are mapped to `time.monotonic()` from the devices' own stamps, so a separate
USB microphone and speaker whose crystals drift apart stay aligned: `t0` follows the DAC
stamps (smoothed), and the read cursor runs on continuously, jumping to the time line
only when it is off by more than `SLIP_SAMPLES` (counted, `echo_reference_slips`), which
at 100 ppm of drift happens about every 10 s and costs the canceller nothing noticeable.
Nothing played (no stream, a gap, or the output stream stopped while the room is quiet)
reads as silence.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from daemon.counters import Counters
from daemon.echo.history import PcmHistory
from daemon.ring import Block, RingRead, SampleRing
from daemon.values import SAMPLE_RATE, Pcm

log = logging.getLogger(__name__)

PLAYED_RING_S = 2.0  # what the callback may write before the loop reads it
HISTORY_S = 6.0  # how far back the echo stage may look up what was played
SLIP_SAMPLES = 160  # 10 ms: the read cursor follows the time line within this
REANCHOR_S = 0.02  # a DAC stamp this far off the time line starts a new stretch
TRACK = 0.05  # share of a stamp's error taken per read (smooths the stamp jitter)
FIRST_COLUMN = (0,)
# soxr "QQ" (cubic) holds back ~1 sample; "HQ" holds back 30-50 ms in bursts, which the
# microphone would often ask for before it arrives.
RESAMPLE_QUALITY = "QQ"


class PlayedAudio:
    """The samples handed to the output device, with their DAC times (callback → loop)."""

    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        self._ring: SampleRing | None = None
        self._rate = 0
        self._generation = 0

    @property
    def rate(self) -> int:
        return self._rate

    @property
    def generation(self) -> int:
        """Changes with every `open` (a new stream: the reader starts a new stretch)."""
        return self._generation

    def open(self, rate: int) -> None:
        """A new output stream at `rate` (event loop, before the stream starts)."""
        self._ring = SampleRing.for_duration(
            PLAYED_RING_S, rate, self._counters, 1, name="echo_reference_ring"
        )
        self._rate = rate
        self._generation += 1

    def write(self, block: Block, dac_end: float) -> None:
        """The output callback: `block` (frames × channels) as handed to the DAC; its last
        sample sounds at `dac_end`. A copy into the ring, nothing else."""
        ring = self._ring
        if ring is not None:
            ring.write(block, FIRST_COLUMN, dac_end)

    def read(self) -> RingRead | None:
        """Everything written since the last read (event loop); None before any stream."""
        ring = self._ring
        return ring.read() if ring is not None else None


class ReferenceAligner:
    """The played audio at 16 kHz on a monotonic time line, read in step with the mic."""

    def __init__(self, played: PlayedAudio, counters: Counters) -> None:
        self._played = played
        self._counters = counters
        self._history = PcmHistory(round(HISTORY_S * SAMPLE_RATE))
        self._t0: float | None = None  # monotonic time of time line index 0
        self._generation = 0
        self._resampler: Any = None
        self._stretch_device = 0  # device position where the current stretch began
        self._stretch_index = 0  # its time line index
        self._cursor: int | None = None
        self._read_at = 0  # time line index of the last frame's first sample
        self._last_active = 0.0

    @property
    def generation(self) -> int:
        """The played stream's generation last read (changes when playback reopens)."""
        return self._generation

    @property
    def last_active(self) -> float:
        """Monotonic time of the last non-silent reference sample read (0.0 if never)."""
        return self._last_active

    def reference_for(self, captured_at: float, count: int) -> Pcm:
        """The `count` samples (16 kHz) that sounded from `captured_at` on."""
        self._pull()
        if self._t0 is None:
            return np.zeros(count, dtype=np.int16)
        target = round((captured_at - self._t0) * SAMPLE_RATE)
        if self._cursor is None or abs(target - self._cursor) > SLIP_SAMPLES:
            if self._cursor is not None:
                self._counters.add("echo_reference_slips")
                log.debug("echo reference slips %+d samples", target - self._cursor)
            self._cursor = target
        self._read_at = self._cursor
        out = self._history.read(self._cursor, count)
        self._cursor += count
        if out.any():
            self._last_active = captured_at
        return out

    def earlier(self, samples: int, count: int) -> Pcm:
        """The `count` samples that sounded `samples` before the last frame's (the
        reference shifted by the echo path's bulk delay; within `HISTORY_S`)."""
        return self._history.read(self._read_at - samples, count)

    def covers(self, captured_at: float) -> bool:
        """The time line reaches `captured_at`: the output device was handed something
        (silence included) for that moment."""
        if self._t0 is None:
            return False
        return self._t0 + self._history.end / SAMPLE_RATE >= captured_at

    # -- the played side --------------------------------------------------------------------

    def _pull(self) -> None:
        chunk = self._played.read()
        if chunk is None:
            return
        if self._played.generation != self._generation or chunk.lost or self._resumed(chunk):
            self._new_stretch(chunk)
        if len(chunk.data) == 0:
            return
        self._history.write(self._history.end, self._resample(chunk.data))
        if chunk.stamp is not None:
            self._track(*chunk.stamp)

    def _resumed(self, chunk: RingRead) -> bool:
        """The output stream was stopped while idle and plays again: its first sample
        sounds later than the time line's end (the pause reads as silence)."""
        if self._t0 is None or chunk.stamp is None or len(chunk.data) == 0:
            return False
        position, at = chunk.stamp
        first_at = at - (position - chunk.start) / self._played.rate
        ahead = (first_at - self._t0) * SAMPLE_RATE - self._history.end
        return ahead > REANCHOR_S * SAMPLE_RATE

    def _new_stretch(self, chunk: RingRead) -> None:
        """A new stream, lost samples or a resumed one: the data is placed by its stamp."""
        self._generation = self._played.generation
        rate = self._played.rate
        self._resampler = None
        if rate != SAMPLE_RATE:
            import soxr

            # float32: soxr dithers int16 output, and silence must stay silence
            self._resampler = soxr.ResampleStream(
                rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )
        index = self._history.end
        if self._t0 is not None and chunk.stamp is not None and rate:
            position, at = chunk.stamp
            first_at = at - (position - chunk.start) / rate
            index = max(index, round((first_at - self._t0) * SAMPLE_RATE))
        self._history.write(index, np.zeros(0, dtype=np.int16))  # the gap reads as silence
        self._stretch_device = chunk.start
        self._stretch_index = index

    def _resample(self, block: Block) -> Pcm:
        mono = np.ascontiguousarray(block[:, 0])
        if self._resampler is None:
            return mono
        out = self._resampler.resample_chunk(mono.astype(np.float32))
        pcm: Pcm = np.clip(np.rint(out), -32768, 32767).astype(np.int16)
        return pcm

    def _track(self, position: int, at: float) -> None:
        """Fit `t0` to a stamp: device `position` sounded at `at`."""
        rate = self._played.rate
        index = self._stretch_index + (position - self._stretch_device) * SAMPLE_RATE / rate
        estimate = at - index / SAMPLE_RATE
        if self._t0 is None or abs(estimate - self._t0) > REANCHOR_S:
            self._t0 = estimate
        else:
            self._t0 += TRACK * (estimate - self._t0)
