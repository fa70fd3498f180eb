"""The echo ledger: per 10 ms block, the level of what we played (as the devices report
it, realigned when the echo path moves), by the capture clock, for the last `LEDGER_S`:
the echo stage asks it whether our speech played near a clip's edges (double-talk
widening).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from daemon.values import SAMPLE_RATE, Pcm

BLOCK = SAMPLE_RATE // 100  # 10 ms
LEDGER_S = 120.0
SILENT_DB = -100.0

Levels = npt.NDArray[np.float32]


def block_levels(pcm: Pcm) -> Levels:
    """Level (dBFS) of each 10 ms block of `pcm` (whose length is a multiple of BLOCK)."""
    blocks = pcm.reshape(-1, BLOCK).astype(np.float32)
    power = np.einsum("ij,ij->i", blocks, blocks) / np.float32(BLOCK * 32768.0 * 32768.0)
    levels: Levels = (10.0 * np.log10(power + np.float32(1e-10))).astype(np.float32)
    return levels


class EchoLedger:
    """Reference levels per 10 ms block, indexed by the capture clock."""

    def __init__(self, seconds: float = LEDGER_S) -> None:
        size = round(seconds * SAMPLE_RATE / BLOCK)
        self._ref: Levels = np.full(size, SILENT_DB, dtype=np.float32)
        self._next = 0  # block index one past the newest noted

    def note(self, start: int, ref_db: Levels) -> None:
        first = start // BLOCK
        self._clear(self._next, first)  # blocks skipped by a clock jump: unknown
        size = len(self._ref)
        slots = np.arange(first, first + len(ref_db)) % size
        self._ref[slots] = ref_db
        self._next = max(self._next, first + len(ref_db))

    def realign(self, start: int, ref_db: Levels) -> None:
        """Replace the reference levels of blocks noted from `start` on (a new shift)."""
        first = start // BLOCK
        known = np.arange(first, first + len(ref_db))
        keep = (known < self._next) & (known >= self._next - len(self._ref))
        self._ref[known[keep] % len(self._ref)] = ref_db[keep]

    def levels(self, start: int, end: int) -> Levels:
        """The reference levels of the blocks of samples [start, end)."""
        first, last = start // BLOCK, end // BLOCK
        size = len(self._ref)
        known = np.arange(first, last)
        slots = known % size
        valid = (known < self._next) & (known >= self._next - size)
        ref: Levels = np.where(valid, self._ref[slots], SILENT_DB).astype(np.float32)
        return ref

    def _clear(self, first: int, last: int) -> None:
        size = len(self._ref)
        if last - first >= size:
            self._ref.fill(SILENT_DB)
        elif last > first:
            slots = np.arange(first, last) % size
            self._ref[slots] = SILENT_DB
