"""The one reconnect policy of every I/O service: the audio devices
(`device_lifecycle.py`: the microphone and the speaker) and the broker (`mqtt/link.py`).

Delays start at `low` and double up to `high`; `reset()` after a session that worked
starts again at `low`. With `jitter` j each delay is drawn from [d·(1-j), d], so rooms
that lost the same broker do not come back in step.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays between attempts: `low` doubling up to `high`, jittered, reset on success."""

    def __init__(
        self, low: float, high: float, *, jitter: float = 0.0, rng: random.Random | None = None
    ) -> None:
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"jitter must be within 0..1, not {jitter}")
        self._low = low
        self._high = max(low, high)
        self._jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self._next = low

    def reset(self) -> None:
        """The last attempt worked: the next delay is `low` again."""
        self._next = self._low

    def next(self) -> float:
        """The delay before the next attempt; the one after it doubles (up to `high`)."""
        delay = self._next
        self._next = min(self._next * 2, self._high)
        if self._jitter:
            delay *= 1.0 - self._jitter * self._rng.random()
        return delay
