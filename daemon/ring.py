"""A fixed-capacity ring of int16 samples between the PortAudio thread and the event loop.

One writer (the audio callback thread) and one reader (the asyncio loop). Positions are
counted on a monotonic sample counter: the total number of samples (per channel) ever
written. The reader reads behind the writer; if it fell more than `capacity` samples
behind, the overwritten span is skipped, counted (`ring_overrun_samples`,
`ring_overruns`) and reported in the returned `RingRead` — never silent.

Lock-free by construction: the writer announces the span it is about to overwrite
(`_claimed`) before copying and publishes it (`_written`) after. The reader copies what
is published and then checks the announcement again; anything the writer may have
overwritten during the copy is discarded as lost rather than returned torn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from daemon.counters import Counters

log = logging.getLogger(__name__)

Block = npt.NDArray[np.int16]  # shape (samples, channels)


@dataclass(frozen=True, slots=True)
class RingRead:
    """What one read returned: `data[i]` is the sample at position `start + i`.

    `lost` samples (positions `start - lost` to `start`) were overwritten before they
    could be read. `stamp` is the writer's last (position, time) stamp, see `write`.
    """

    start: int
    data: Block
    lost: int
    stamp: tuple[int, float] | None

    @property
    def end(self) -> int:
        return self.start + len(self.data)


class SampleRing:
    """Preallocated single-writer / single-reader ring of int16 samples."""

    def __init__(
        self, capacity: int, counters: Counters, channels: int = 1, *, name: str = "ring"
    ) -> None:
        if capacity < 1 or channels < 1:
            raise ValueError("capacity and channels must be positive")
        self._buf: Block = np.zeros((capacity, channels), dtype=np.int16)
        self._capacity = capacity
        self._counters = counters
        self._name = name  # counters: <name>_overruns, <name>_overrun_samples
        self._claimed = 0  # writer: end of the span being (or last) written
        self._written = 0  # writer: end of the published data
        self._stamp: tuple[int, float] | None = None
        self._read_pos = 0  # reader only

    @classmethod
    def for_duration(
        cls, seconds: float, rate: int, counters: Counters, channels: int = 1, *, name: str = "ring"
    ) -> SampleRing:
        return cls(max(1, round(seconds * rate)), counters, channels, name=name)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def channels(self) -> int:
        return int(self._buf.shape[1])

    @property
    def written(self) -> int:
        """Total samples ever written (the writer's clock)."""
        return self._written

    @property
    def read_position(self) -> int:
        """Position of the next sample the reader will get (if not overwritten)."""
        return self._read_pos

    # -- writer side (the audio thread): no allocation, no locks -------------------------

    def write(self, block: Block, columns: tuple[int, ...] | None = None, at: float = 0.0) -> None:
        """Append `block` (samples × channels); `columns` picks the block's columns.

        `at` is a time (any clock) of the block's last sample; the reader gets the latest
        (end position, at) in `RingRead.stamp`.
        """
        n = len(block)
        start = self._written
        end = start + n
        self._claimed = end
        skip = max(0, n - self._capacity)  # a block longer than the ring: keep its tail
        self._copy_in(block, columns, start + skip, skip, n)
        self._written = end
        self._stamp = (end, at)

    def _copy_in(
        self, block: Block, columns: tuple[int, ...] | None, pos: int, first: int, last: int
    ) -> None:
        while first < last:
            slot = pos % self._capacity
            count = min(last - first, self._capacity - slot)
            dest = self._buf[slot : slot + count]
            if columns is None:
                dest[...] = block[first : first + count]
            else:
                for j, column in enumerate(columns):
                    dest[:, j] = block[first : first + count, column]
            first += count
            pos += count

    # -- reader side (the event loop) ----------------------------------------------------

    def read(self, max_samples: int | None = None) -> RingRead:
        """Everything written since the last read (at most `max_samples`), as a copy."""
        written = self._written
        want = self._read_pos
        start = max(want, self._claimed - self._capacity)
        end = max(start, written if max_samples is None else min(written, start + max_samples))
        data = self._copy_out(start, end)
        safe = self._claimed - self._capacity  # the writer may have overwritten below this
        if safe > start:
            cut = min(safe, end) - start
            data = data[cut:]
            start += cut
            end = max(end, start)
        lost = start - want
        self._read_pos = end
        if lost:
            self._report_overrun(want, lost)
        return RingRead(start, data, lost, self._stamp)

    def _copy_out(self, start: int, end: int) -> Block:
        out: Block = np.empty((end - start, self.channels), dtype=np.int16)
        pos = start
        while pos < end:
            slot = pos % self._capacity
            count = min(end - pos, self._capacity - slot)
            out[pos - start : pos - start + count] = self._buf[slot : slot + count]
            pos += count
        return out

    def _report_overrun(self, position: int, lost: int) -> None:
        self._counters.add(f"{self._name}_overruns")
        self._counters.add(f"{self._name}_overrun_samples", lost)
        log.warning(
            "%s overrun: the reader fell more than %d samples behind; "
            "%d samples lost from position %d",
            self._name,
            self._capacity,
            lost,
            position,
        )
