"""The shared reconnect policy (daemon/backoff.py)."""

from __future__ import annotations

import random

import pytest

from daemon.backoff import Backoff


def test_doubles_up_to_the_ceiling_and_resets() -> None:
    backoff = Backoff(1.0, 10.0)
    assert [backoff.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    backoff.reset()
    assert backoff.next() == 1.0


def test_a_ceiling_below_the_floor_is_the_floor() -> None:
    backoff = Backoff(2.0, 1.0)
    assert [backoff.next() for _ in range(3)] == [2.0, 2.0, 2.0]


def test_jitter_stays_within_its_share_of_the_delay() -> None:
    backoff = Backoff(0.2, 1.0, jitter=0.5, rng=random.Random(7))
    delays = [backoff.next() for _ in range(200)]
    nominal = [min(0.2 * 2**i, 1.0) for i in range(200)]
    assert all(n / 2 <= d <= n for d, n in zip(delays, nominal, strict=True))
    assert len({round(d, 6) for d in delays[10:]}) > 100  # really drawn, not fixed


def test_bad_jitter_is_refused() -> None:
    with pytest.raises(ValueError, match="jitter"):
        Backoff(1.0, 2.0, jitter=1.5)
