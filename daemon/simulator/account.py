"""The account's rate limits, as the service enforces them (CONTRACT.md): requests and
tokens per minute for all keys of the account together.

A valid request is admitted while the requests admitted in the last 60 s are fewer than
`account_rpm` and their tokens (what each one's usage will report) fewer than
`account_tpm` (0 = no limit); it is then counted. Otherwise it is refused with a 429
(`limit_requests`, or `Throttling.RateQuota` for the tokens) whose Retry-After is the
whole seconds until the window has room for it; a refused request is not counted.
Every request is also counted per key (`key-` and 8 hex digits of its SHA-256), so a test
can see which room sent what.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from daemon.simulator.protocol import ApiError

WINDOW_S = 60.0


def key_id(key: str) -> str:
    """A key's name in the statistics (never the key itself)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


class Account:
    """The account's window of admitted requests; not thread-safe (SimState locks)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._window: deque[tuple[float, int]] = deque()  # (admitted at, tokens)
        self._tokens = 0
        self._refused: Counter[str] = Counter()
        self._by_key: dict[str, Counter[str]] = {}

    def admit(self, rpm: float, tpm: float, tokens: int) -> ApiError | None:
        """Count a request of `tokens`, or the 429 that refuses it."""
        now = self._clock()
        while self._window and self._window[0][0] <= now - WINDOW_S:
            self._tokens -= self._window.popleft()[1]
        if rpm > 0 and len(self._window) >= rpm:
            self._refused["requests"] += 1
            wait = self._window[len(self._window) - int(rpm)][0] + WINDOW_S - now
            return _throttled("limit_requests", "Requests rate limit exceeded", wait)
        if tpm > 0 and self._tokens + tokens > tpm and self._window:
            self._refused["tokens"] += 1
            return _throttled(
                "Throttling.RateQuota", "Tokens rate limit exceeded", self._wait(tpm, tokens, now)
            )
        self._window.append((now, tokens))
        self._tokens += tokens
        return None

    def count(self, key: str | None, status: int) -> None:
        if key is not None:
            self._by_key.setdefault(key_id(key), Counter())[str(status)] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "window_requests": len(self._window),
            "window_tokens": self._tokens,
            "refused": dict(self._refused),
            "by_key": {k: dict(v) for k, v in self._by_key.items()},
        }

    def reset(self) -> None:
        self._window.clear()
        self._tokens = 0
        self._refused.clear()
        self._by_key.clear()

    def _wait(self, tpm: float, tokens: int, now: float) -> float:
        """Seconds until enough of the window's tokens have left for `tokens` more."""
        excess = self._tokens + tokens - tpm
        for at, spent in self._window:
            excess -= spent
            if excess <= 0:
                return at + WINDOW_S - now
        return WINDOW_S


def _throttled(code: str, message: str, wait_s: float) -> ApiError:
    seconds = max(1, math.ceil(wait_s))
    return ApiError(
        429,
        code,
        f"{message}, please try again later.",
        type_="rate_limit_error",
        headers={"Retry-After": str(seconds)},
    )
