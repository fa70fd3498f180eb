"""SampleRing: positions on a monotonic sample counter, overruns counted and reported.
SampleBuffer: write, write at, rewrite, read at and cut any position, against a model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.counters import Counters
from daemon.ring import SampleBuffer, SampleRing


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


def test_write_at_a_gap_reads_as_zeros_and_read_at_outside_the_kept_span_too() -> None:
    buffer = SampleBuffer(100)
    buffer.write_at(0, np.arange(1, 71, dtype=np.int16))
    buffer.write_at(90, np.arange(1, 51, dtype=np.int16))  # a 20-sample gap, then wraps
    assert (buffer.written, buffer.oldest) == (140, 40)
    got = buffer.read_at(30, 120, np.full(120, 9, dtype=np.int16))
    assert not got[:10].any() and list(got[10:40]) == list(range(41, 71))
    assert not got[40:60].any() and list(got[60:110]) == list(range(1, 51))
    assert not got[110:].any()
    buffer.write_at(500, np.ones(3, dtype=np.int16))  # a gap longer than the buffer
    assert not buffer.read_at(400, 100, np.ones(100, dtype=np.int16)).any()


def test_read_at_fills_the_callers_buffer_without_allocating() -> None:
    buffer = SampleBuffer(16, channels=2)
    buffer.write(ramp(0, 20, channels=2))  # wraps: keeps 4..19
    out = np.full((8, 2), 7, dtype=np.int16)
    got = buffer.read_at(14, 6, out)
    assert got is out
    assert np.array_equal(out[:6], ramp(14, 6, channels=2)) and (out[6:] == 7).all()
    assert buffer.read_at(0, 3).shape == (3, 2)  # no buffer given: one is made


def test_rewrite_replaces_only_kept_samples() -> None:
    buffer = SampleBuffer(10, start=100)
    buffer.write(ramp(100, 15)[:, 0])  # keeps 105..114
    buffer.rewrite(103, np.full(5, -1, dtype=np.int16))  # 103, 104 are gone already
    buffer.rewrite(113, np.full(5, -2, dtype=np.int16))  # 115.. are not written yet
    got = buffer.read_at(105, 10, np.empty(10, dtype=np.int16))
    assert list(got) == [-1, -1, -1, *range(108, 113), -2, -2]
    assert buffer.written == 115


def test_cut_moves_the_later_samples_down_across_the_wrap() -> None:
    buffer = SampleBuffer(8, start=5)
    buffer.write(ramp(5, 7)[:, 0])  # positions 5..11 at slots 5..7, 0..3
    buffer.cut(6, 9)
    assert buffer.written == 9
    assert list(buffer.read_at(5, 4, np.empty(4, dtype=np.int16))) == [5, 9, 10, 11]
    buffer.cut(7, 7)  # nothing
    assert buffer.written == 9
    with pytest.raises(ValueError):
        buffer.cut(8, 10)  # past the newest


OPS = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 40), st.integers(0, 40)),
    st.tuples(st.just("write_at"), st.integers(-30, 60), st.integers(0, 40)),
    st.tuples(st.just("rewrite"), st.integers(-40, 10), st.integers(0, 40)),
    st.tuples(st.just("cut"), st.integers(0, 30), st.integers(0, 30)),
)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 32), ops=st.lists(OPS, max_size=30))
def test_the_buffer_behaves_like_a_dict_of_its_kept_samples(
    capacity: int, ops: list[tuple[str, int, int]]
) -> None:
    """The model: position → sample for every position kept (a gap is kept as zeros)."""
    buffer = SampleBuffer(capacity)
    kept: dict[int, int] = {}
    end = value = 0
    for op, a, n in ops:
        block = np.arange(value, value + n, dtype=np.int16)
        value += n
        if op in {"write", "write_at"}:
            start = end if op == "write" else max(0, end + a)
            buffer.write(block) if op == "write" else buffer.write_at(start, block)
            kept = {p: v for p, v in kept.items() if p < start}  # from start on: replaced
            kept |= dict.fromkeys(range(end, start), 0)
            kept |= {start + i: int(v) for i, v in enumerate(block)}
            end = start + n
        elif op == "rewrite":
            buffer.rewrite(end + a, block)
            kept |= {end + a + i: int(v) for i, v in enumerate(block) if end + a + i in kept}
        else:
            first = max(buffer.oldest, end - a - n)
            stop = min(first + n, end)
            buffer.cut(first, stop)
            gone = stop - first
            kept = {
                p - gone if p >= stop else p: v for p, v in kept.items() if not first <= p < stop
            }
            end -= gone
        kept = {p: v for p, v in kept.items() if p >= end - capacity}
        assert (buffer.written, buffer.oldest) == (end, min(kept, default=end))
        span = range(end - 2 * capacity - 5, end + 5)
        got = buffer.read_at(span.start, len(span), np.empty(len(span), dtype=np.int16))
        assert list(got) == [kept.get(p, 0) for p in span]
