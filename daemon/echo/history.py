"""The last few seconds of a 16 kHz signal, addressed by absolute sample position.

Used for the reference's time line (`reference.py`) and for the cleaned microphone audio
a double-talk clip is widened from (`canceller.py`). One writer, on the event loop.
"""

from __future__ import annotations

import numpy as np

from daemon.ring import SampleBuffer
from daemon.values import Pcm


class PcmHistory:
    """A mono `SampleBuffer`; positions before the kept span read as 0."""

    def __init__(self, samples: int) -> None:
        self._ring = SampleBuffer(samples)

    @property
    def end(self) -> int:
        """One past the newest position."""
        return self._ring.written

    @property
    def oldest(self) -> int:
        """The oldest position still kept."""
        return self._ring.oldest

    def write(self, start: int, pcm: Pcm) -> None:
        """Samples from position `start` (at or after `end`; a gap reads as silence)."""
        self._ring.write_at(start, pcm)

    def rewrite(self, start: int, pcm: Pcm) -> None:
        """Replace the kept samples from position `start` (up to `end`) with `pcm`."""
        self._ring.rewrite(start, pcm)

    def read(self, start: int, count: int) -> Pcm:
        """Positions [start, start + count); silence where nothing is kept."""
        return self._ring.read_at(start, count, np.empty(count, dtype=np.int16))
