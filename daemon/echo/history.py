"""The last few seconds of a 16 kHz signal, addressed by absolute sample position.

Used for the reference's time line (`reference.py`) and for the cleaned microphone audio
a double-talk clip is widened from (`canceller.py`). One writer, on the event loop.
"""

from __future__ import annotations

import numpy as np

from daemon.values import Pcm


class PcmHistory:
    """A preallocated ring of int16 samples; positions before the kept span read as 0."""

    def __init__(self, samples: int) -> None:
        self._ring: Pcm = np.zeros(samples, dtype=np.int16)
        self._end = 0  # position one past the newest sample

    @property
    def end(self) -> int:
        return self._end

    @property
    def oldest(self) -> int:
        """The oldest position still kept."""
        return max(0, self._end - len(self._ring))

    def write(self, start: int, pcm: Pcm) -> None:
        """Samples from position `start` (at or after `end`; a gap reads as silence)."""
        size = len(self._ring)
        if start > self._end:
            self.write(self._end, np.zeros(min(start - self._end, size), dtype=np.int16))
        if len(pcm) > size:  # only the newest `size` samples can be kept
            start, pcm = start + len(pcm) - size, pcm[-size:]
        slot = start % size
        first = min(len(pcm), size - slot)
        self._ring[slot : slot + first] = pcm[:first]
        self._ring[: len(pcm) - first] = pcm[first:]
        self._end = start + len(pcm)

    def rewrite(self, start: int, pcm: Pcm) -> None:
        """Replace the kept samples from position `start` (up to `end`) with `pcm`."""
        first = max(start, self.oldest)
        stop = min(start + len(pcm), self._end)
        if stop > first:
            positions = np.arange(first, stop)
            self._ring[positions % len(self._ring)] = pcm[first - start : stop - start]

    def read(self, start: int, count: int) -> Pcm:
        """Positions [start, start + count); silence where nothing is kept."""
        out = np.zeros(count, dtype=np.int16)
        size = len(self._ring)
        pos = max(start, self.oldest)
        stop = min(start + count, self._end)
        while pos < stop:
            slot = pos % size
            n = min(stop - pos, size - slot)
            out[pos - start : pos - start + n] = self._ring[slot : slot + n]
            pos += n
        return out
