"""SampleRing: positions on a monotonic sample counter, overruns counted and reported."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.counters import Counters
from daemon.ring import SampleRing


def ramp(start: int, n: int, channels: int = 1) -> np.ndarray:
    """Samples whose value is their position (mod 2**15), one column per channel."""
    values = (np.arange(start, start + n) % 32768).astype(np.int16)
    return np.repeat(values[:, None], channels, axis=1)


def test_reads_what_was_written_across_the_wrap() -> None:
    counters = Counters()
    ring = SampleRing(10, counters)
    ring.write(ramp(0, 7), at=1.5)
    first = ring.read()
    assert (first.start, first.lost, first.stamp) == (0, 0, (7, 1.5))
    ring.write(ramp(7, 6))  # wraps around the end of the buffer
    second = ring.read()
    assert second.start == 7 and second.end == 13 and second.lost == 0
    assert np.array_equal(second.data[:, 0], ramp(7, 6)[:, 0])
    assert ring.read().data.shape == (0, 1)
    assert counters.snapshot() == {}


def test_overrun_is_skipped_counted_and_reported() -> None:
    counters = Counters()
    ring = SampleRing(100, counters)
    ring.write(ramp(0, 30))
    assert ring.read().end == 30
    ring.write(ramp(30, 250))  # the reader is now 250 behind, capacity 100
    got = ring.read()
    assert got.lost == 150  # positions 30..179 were overwritten
    assert got.start == 180  # the read position jumps forward, never back
    assert np.array_equal(got.data[:, 0], ramp(180, 100)[:, 0])
    assert counters.get("ring_overruns") == 1
    assert counters.get("ring_overrun_samples") == 150
    ring.write(ramp(280, 5))
    assert ring.read().lost == 0


def test_block_longer_than_the_ring_keeps_its_tail() -> None:
    counters = Counters()
    ring = SampleRing(8, counters)
    ring.write(ramp(0, 20))
    got = ring.read()
    assert (got.start, got.lost) == (12, 12)
    assert np.array_equal(got.data[:, 0], ramp(12, 8)[:, 0])


def test_columns_pick_channels_of_the_block() -> None:
    ring = SampleRing(16, Counters(), channels=2)
    block = np.arange(24, dtype=np.int16).reshape(4, 6)
    ring.write(block, columns=(4, 1))
    got = ring.read()
    assert np.array_equal(got.data, block[:, [4, 1]])


def test_max_samples_limits_a_read() -> None:
    ring = SampleRing(50, Counters())
    ring.write(ramp(0, 40))
    assert ring.read(max_samples=15).end == 15
    assert ring.read().start == 15


def test_for_duration_sizes_by_rate() -> None:
    ring = SampleRing.for_duration(1.5, 16_000, Counters(), channels=2)
    assert (ring.capacity, ring.channels) == (24_000, 2)
    with pytest.raises(ValueError):
        SampleRing(0, Counters())


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 64),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 150)), min_size=1, max_size=40),
)
def test_every_sample_is_delivered_once_or_counted_lost(
    capacity: int, ops: list[tuple[bool, int]]
) -> None:
    counters = Counters()
    ring = SampleRing(capacity, counters)
    written = delivered = lost = 0
    for is_write, n in ops:
        if is_write:
            ring.write(ramp(written, n))
            written += n
            continue
        got = ring.read(max_samples=n or None)
        assert got.start == delivered + lost + got.lost
        assert np.array_equal(got.data[:, 0], ramp(got.start, len(got.data))[:, 0])
        delivered += len(got.data)
        lost += got.lost
        assert written - got.end <= capacity  # nothing older than the capacity survives
    tail = ring.read()
    delivered, lost = delivered + len(tail.data), lost + tail.lost
    assert delivered + lost == written
    assert counters.get("ring_overrun_samples") == lost


def test_concurrent_writer_never_hands_out_torn_data() -> None:
    counters = Counters()
    ring = SampleRing(256, counters)
    total = 400_000
    done = threading.Event()

    def writer() -> None:
        pos = 0
        while pos < total:
            n = 97
            ring.write(ramp(pos, n))
            pos += n
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = lost = 0
    while not done.is_set() or ring.read_position < ring.written:
        got = ring.read()
        assert np.array_equal(got.data[:, 0], ramp(got.start, len(got.data))[:, 0])
        seen += len(got.data)
        lost += got.lost
    thread.join()
    assert seen + lost == ring.written
    assert counters.get("ring_overrun_samples") == lost
