"""Preallocated rings of int16 samples addressed by absolute position.

A position counts samples (per channel) on a monotonic counter: `written` is one past the
newest; at most the last `capacity` positions are kept. Every operation copies into or out
of the preallocated buffer; `read_at` copies into a buffer the caller gives, so the audio
callback can read without allocating.

`SampleBuffer` is the store: append (`write`), write at a position (`write_at`, a gap reads
as zeros), replace kept samples (`rewrite`), read any span (`read_at`, zeros where nothing
is kept) and remove a span (`cut`). One thread uses it, or callers hold their own lock.

`SampleRing` adds one streaming reader between the PortAudio thread and the event loop:
one writer (the audio callback thread), one reader (the asyncio loop). The reader reads
behind the writer; if it fell more than `capacity` samples behind, the overwritten span is
skipped, counted (`ring_overrun_samples`, `ring_overruns`) and reported in the returned
`RingRead` — never silent. Lock-free by construction: the writer announces the span it is
about to overwrite (`_claimed`) before copying and publishes it (`_written`) after. The
reader copies what is published and then checks the announcement again; anything the
writer may have overwritten during the copy is discarded as lost rather than returned torn.
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


class SampleBuffer:
    """The last `capacity` samples (× `channels`) by absolute position, preallocated.

    Blocks are (samples × channels) arrays; a 1-D array is one channel of a mono buffer.
    """

    def __init__(self, capacity: int, channels: int = 1, *, start: int = 0) -> None:
        if capacity < 1 or channels < 1:
            raise ValueError("capacity and channels must be positive")
        self._buf: Block = np.zeros((capacity, channels), dtype=np.int16)
        self._mono = self._buf[:, 0]  # the view 1-D blocks use
        self._capacity = capacity
        self._claimed = start  # writer: end of the span being (or last) written
        self._written = start  # writer: end of the published data
        self._floor = start  # nothing before this is kept (moved by write_at and cut)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def channels(self) -> int:
        return int(self._buf.shape[1])

    @property
    def written(self) -> int:
        """One past the newest position (the writer's clock)."""
        return self._written

    @property
    def oldest(self) -> int:
        """The oldest position still kept."""
        return max(self._floor, self._written - self._capacity)

    def write(self, block: Block, columns: tuple[int, ...] | None = None) -> None:
        """Append `block` at `written`; `columns` picks the block's columns. No allocation."""
        n = len(block)
        start = self._written
        end = start + n
        self._claimed = end
        skip = max(0, n - self._capacity)  # a block longer than the buffer: keep its tail
        self._copy_in(block, columns, start + skip, skip, n)
        self._written = end

    def write_at(self, start: int, block: Block) -> None:
        """`block` from position `start`, which becomes the newest data: positions between
        `written` and `start` read as zeros; before `written`, what follows is dropped."""
        if start != self._written:
            if start > self._written:
                self._claimed = start
                self._fill_zeros(max(self._written, start - self._capacity), start)
            else:
                self._floor = min(self.oldest, start)
            self._written = start
        self.write(block)

    def rewrite(self, start: int, block: Block) -> None:
        """Replace the kept samples from position `start` (up to `written`) with `block`."""
        first = max(start, self.oldest)
        stop = min(start + len(block), self._written)
        if stop > first:
            self._copy_in(block, None, first, first - start, stop - start)

    def read_at(self, start: int, count: int, out: Block | None = None) -> Block:
        """Positions [start, start + count) copied into `out[:count]` (allocated when None),
        zeros where nothing is kept; returns `out`."""
        if out is None:
            out = np.empty((count, self.channels), dtype=np.int16)
        written = self._written
        first = min(max(start, self._floor, written - self._capacity), start + count)
        stop = max(min(start + count, written), first)
        if first > start:
            out[: first - start] = 0
        self._copy_out(first, stop, out, start)
        if stop - start < count:
            out[stop - start : count] = 0
        return out

    def cut(self, start: int, stop: int) -> None:
        """Remove positions [start, stop) (kept ones): the later samples move down by
        `stop - start`, and so does `written`."""
        removed = stop - start
        if removed == 0:
            return
        if removed < 0 or start < self.oldest or stop > self._written:
            raise ValueError(f"cannot cut [{start}, {stop}) of [{self.oldest}, {self._written})")
        pos = stop
        while pos < self._written:
            src, dst = pos % self._capacity, (pos - removed) % self._capacity
            count = min(self._written - pos, self._capacity - src, self._capacity - dst)
            self._buf[dst : dst + count] = self._buf[src : src + count]
            pos += count
        self._floor = self.oldest
        self._written -= removed
        self._claimed = self._written

    def _copy_in(
        self, block: Block, columns: tuple[int, ...] | None, pos: int, first: int, last: int
    ) -> None:
        store = self._mono if block.ndim == 1 else self._buf
        capacity = self._capacity
        while first < last:
            slot = pos % capacity
            count = min(last - first, capacity - slot)
            if columns is None:
                store[slot : slot + count] = block[first : first + count]
            else:
                for j, column in enumerate(columns):
                    store[slot : slot + count, j] = block[first : first + count, column]
            first += count
            pos += count

    def _copy_out(self, start: int, end: int, out: Block, out_start: int) -> None:
        """Positions [start, end) into `out`, whose first element is position `out_start`."""
        store = self._mono if out.ndim == 1 else self._buf
        capacity = self._capacity
        pos = start
        while pos < end:
            slot = pos % capacity
            count = min(end - pos, capacity - slot)
            out[pos - out_start : pos - out_start + count] = store[slot : slot + count]
            pos += count

    def _fill_zeros(self, start: int, end: int) -> None:
        pos = start
        while pos < end:
            slot = pos % self._capacity
            count = min(end - pos, self._capacity - slot)
            self._buf[slot : slot + count] = 0
            pos += count


class SampleRing(SampleBuffer):
    """Single-writer / single-reader ring: the writer appends, the reader takes what is new."""

    def __init__(
        self, capacity: int, counters: Counters, channels: int = 1, *, name: str = "ring"
    ) -> None:
        super().__init__(capacity, channels)
        self._counters = counters
        self._name = name  # counters: <name>_overruns, <name>_overrun_samples
        self._stamp: tuple[int, float] | None = None
        self._read_pos = 0  # reader only

    @classmethod
    def for_duration(
        cls, seconds: float, rate: int, counters: Counters, channels: int = 1, *, name: str = "ring"
    ) -> SampleRing:
        return cls(max(1, round(seconds * rate)), counters, channels, name=name)

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
        SampleBuffer.write(self, block, columns)  # (not super(): this runs per callback)
        self._stamp = (self._written, at)

    # -- reader side (the event loop) ----------------------------------------------------

    def read(self, max_samples: int | None = None) -> RingRead:
        """Everything written since the last read (at most `max_samples`), as a copy."""
        written = self._written
        want = self._read_pos
        start = max(want, self._claimed - self._capacity)
        end = max(start, written if max_samples is None else min(written, start + max_samples))
        data: Block = np.empty((end - start, self.channels), dtype=np.int16)
        self._copy_out(start, end, data, start)
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
