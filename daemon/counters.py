"""Counters: every drop, overflow and error is counted where it happens.

One `Counters` object per daemon, passed to each stage (no global state). Names are
dotted: `dropped.queue_full`, `failed.auth`, `service_errors.429`, `input_overflows`.
The status derives its figures from a snapshot.
"""

from __future__ import annotations

import threading
from collections import Counter


class Counters:
    """Thread-safe named counters (the PortAudio threads count too)."""

    def __init__(self) -> None:
        self._values: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, name: str, amount: float = 1) -> None:
        with self._lock:
            self._values[name] += amount  # type: ignore[assignment]

    def get(self, name: str) -> float:
        with self._lock:
            return self._values[name]

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)

    def group(self, prefix: str) -> dict[str, float]:
        """The counters under `prefix.` with the prefix removed: {'queue_full': 2, ...}."""
        head = prefix + "."
        with self._lock:
            return {k.removeprefix(head): v for k, v in self._values.items() if k.startswith(head)}
