"""The service account's load: requests per minute and whether the service throttles us.

The service allows `api.requests_per_minute` requests a minute per account. The translator
asks `admit()` before every request it sends (each attempt) and notes every 429. A room
alone sends its speech at once and sheds (counts) an extra caption language while the
service throttles or the last minute's requests reach the budget, so the room's speech
keeps its share (and the segmenter makes fewer, longer clips meanwhile). A room that
shares an account with others (`room.account`) is paced to its share instead (`pacer`,
set by daemon/fleet/account.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from daemon.counters import Counters
from daemon.fleet.pacer import Pacer

WINDOW_S = 60.0
# How long to shed after a 429 that gave no Retry-After.
DEFAULT_THROTTLE_S = 10.0
# At most this many request times are kept (the window is pruned first).
MAX_KEPT = 10_000


class ServiceLoad:
    """Request times of the last minute and the throttle window; one per daemon."""

    def __init__(
        self,
        counters: Counters,
        budget_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counters = counters
        self._budget = budget_per_minute
        self._clock = clock
        self._sent: deque[float] = deque(maxlen=MAX_KEPT)
        self._throttled_until = 0.0
        self.pacer: Pacer | None = None  # while the room shares an account

    async def admit(self, extra: bool, tokens: float) -> str:
        """Before a request (each attempt) of about `tokens`: "" to send it, else why it is
        shed. `extra`: an extra caption language's request."""
        if self.pacer is not None:
            return await self.pacer.admit("extra" if extra else "speech", tokens)
        return self.shed_reason() if extra else ""

    def settle(self, extra: bool, estimated: float, actual: float) -> None:
        """The tokens a request used, as the service reported them."""
        if self.pacer is not None:
            self.pacer.settle("extra" if extra else "speech", estimated, actual)

    def sent(self, lang: str) -> None:
        """One request (attempt) went out for `lang`."""
        self._sent.append(self._clock())
        self._counters.add("requests")
        self._counters.add(f"requests_by_lang.{lang}")

    def throttled(self, retry_after_s: float | None) -> None:
        """The service answered 429."""
        seconds = retry_after_s if retry_after_s else DEFAULT_THROTTLE_S
        self._throttled_until = max(self._throttled_until, self._clock() + seconds)
        if self.pacer is not None:
            self.pacer.rejected(seconds)

    def per_minute(self) -> int:
        """Requests sent in the last 60 s."""
        horizon = self._clock() - WINDOW_S
        while self._sent and self._sent[0] <= horizon:
            self._sent.popleft()
        return len(self._sent)

    @property
    def throttling(self) -> bool:
        return self._clock() < self._throttled_until

    def shed_reason(self) -> str:
        """Why an optional request must not go out now ("" when it may)."""
        if self.throttling:
            left = self._throttled_until - self._clock()
            return f"service throttling (429), {left:.1f} s more"
        if self.per_minute() >= self._budget:
            return f"request budget reached ({self._budget} a minute)"
        return ""
