"""Capture against a fake `sounddevice` module: clock, overrun, device loss, callback faults.

The fake stream calls the real `Capture` callback from its own thread in real time with a
ramp signal (sample value = device position mod 2**15), so what comes out can be checked
sample by sample against the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from daemon.capture import BLOCK_S, Capture
from daemon.config import AudioSettings
from daemon.counters import Counters
from daemon.profiles import InputProfile, Profile
from daemon.values import Frame
from scripts.broker import eventually


class PortAudioError(Exception):
    pass


@dataclass
class Flags:
    input_overflow: bool = False

    def __bool__(self) -> bool:
        return self.input_overflow


@dataclass
class TimeInfo:
    currentTime: float
    inputBufferAdcTime: float


@dataclass
class FakeBackend:
    """The fake device and what the tests make it do."""

    name: str = "Fake USB Mic"
    channels: int = 2
    rates: tuple[int, ...] = (16_000, 48_000)
    signal: Callable[[int, int, int], np.ndarray] | None = None
    fail_opens: int = 0  # the next N opens raise PortAudioError
    die_after_s: float | None = None  # the first stream finishes (unplug) after this
    silent: bool = False  # the stream starts but never calls back (a stall)
    bad_block_at: int | None = None  # callback number that gets a malformed block
    overflow_at: int | None = None
    opens: int = 0
    streams: list[FakeStream] = field(default_factory=list)

    def module(self) -> types.ModuleType:
        backend = self
        sd = types.ModuleType("sounddevice")

        def query_devices(kind: str | None = None) -> Any:
            devices = [
                {
                    "index": 0,
                    "name": backend.name,
                    "hostapi": 0,
                    "max_input_channels": backend.channels,
                    "max_output_channels": 0,
                    "default_samplerate": 48000.0,
                }
            ]
            return devices[0] if kind == "input" else devices

        def check_input_settings(**kwargs: Any) -> None:
            if kwargs["samplerate"] not in backend.rates:
                raise PortAudioError("Invalid sample rate")
            if kwargs["channels"] > backend.channels:
                raise PortAudioError("Invalid number of channels")

        def input_stream(**kwargs: Any) -> FakeStream:
            backend.opens += 1
            if backend.fail_opens > 0:
                backend.fail_opens -= 1
                raise PortAudioError("Error opening InputStream: Unanticipated host error")
            stream = FakeStream(backend, kwargs, first=not backend.streams)
            backend.streams.append(stream)
            return stream

        sd.PortAudioError = PortAudioError  # type: ignore[attr-defined]
        sd.query_devices = query_devices  # type: ignore[attr-defined]
        sd.query_hostapis = lambda: [{"name": "ALSA"}]  # type: ignore[attr-defined]
        sd.check_input_settings = check_input_settings  # type: ignore[attr-defined]
        sd.default = types.SimpleNamespace(device=[0, -1])  # type: ignore[attr-defined]
        sd.InputStream = input_stream  # type: ignore[attr-defined]
        return sd


ADC_AGE_S = 0.005  # the fake's blocks were captured this long before their callback


def ramp_signal(position: int, frames: int, channels: int) -> np.ndarray:
    values = (np.arange(position, position + frames) % 32768).astype(np.int16)
    return np.repeat(values[:, None], channels, axis=1)


def sample_zero_bounds(stream: FakeStream) -> tuple[float, float]:
    """Where Capture's time model may place the stream's first sample in monotonic time:
    each callback stamps it at the callback's own time minus the block's age and position,
    and that time lies between what the stream read before the callback and after it."""
    lows = [before - ADC_AGE_S - pos / stream.rate for pos, before, _ in stream.calls]
    highs = [after - ADC_AGE_S - pos / stream.rate for pos, _, after in stream.calls]
    return min(lows), max(highs)


class FakeStream:
    def __init__(self, backend: FakeBackend, kwargs: dict[str, Any], first: bool) -> None:
        self.backend = backend
        self.rate = int(kwargs["samplerate"])
        self.channels = int(kwargs["channels"])
        self.blocksize = int(kwargs["blocksize"])
        self.callback = kwargs["callback"]
        self.finished_callback = kwargs["finished_callback"]
        self.latency = 0.02
        self.die_after = backend.die_after_s if first else None
        self.position = 0
        # each callback: (device position, monotonic time before it, after it returned)
        self.calls: list[tuple[int, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        began = time.monotonic()
        calls = 0
        signal = self.backend.signal or ramp_signal
        while not self._stop.is_set() and not self.backend.silent:
            if self.die_after is not None and time.monotonic() - began > self.die_after:
                self.finished_callback()
                return
            due = began + (self.position + self.blocksize) / self.rate
            time.sleep(max(0.0, due - time.monotonic()))
            block = signal(self.position, self.blocksize, self.channels)
            if calls == self.backend.bad_block_at:
                block = block[:, :0]  # no columns: the copy into the ring fails
            now = time.monotonic()
            flags = Flags(input_overflow=calls == self.backend.overflow_at)
            self.callback(block, self.blocksize, TimeInfo(now, now - ADC_AGE_S), flags)
            self.calls.append((self.position, now, time.monotonic()))
            self.position += self.blocksize
            calls += 1

    def abort(self, ignore_errors: bool = True) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join()

    def close(self, ignore_errors: bool = True) -> None:
        self.abort()


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBackend]:
    fake = FakeBackend()
    monkeypatch.setitem(__import__("sys").modules, "sounddevice", fake.module())
    yield fake
    for stream in fake.streams:
        stream.abort()


def profile(rate: int | None = None, use: tuple[int, ...] = (1,), gain_db: float = 0.0) -> Profile:
    return Profile(
        name="fake",
        description="fake",
        echo_guard="gate",
        input=InputProfile(
            match=("fake",), rate=rate, channels=2, use_channels=use, gain_db=gain_db
        ),
    )


async def collect(
    capture: Capture, seconds: float, on_frame: Callable[[Frame], None] | None = None
) -> list[Frame]:
    frames: list[Frame] = []
    deadline = time.monotonic() + seconds
    async with contextlib.aclosing(capture.frames()) as stream:
        async for frame in stream:
            frames.append(frame)
            if on_frame is not None:
                on_frame(frame)
            if time.monotonic() >= deadline:
                break
    return frames


async def still_listening_when(capture: Capture, happened: Callable[[], bool]) -> None:
    """`happened` comes true while the capture is still being read: nothing was raised."""
    listening = asyncio.create_task(collect(capture, 60.0))
    try:
        await eventually(lambda: happened() or listening.done(), within_s=30.0)
        assert not listening.done(), listening
        assert happened()
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)


def assert_consecutive(frames: list[Frame], size: int = 480) -> None:
    assert frames[0].start == 0
    assert all(len(f.pcm) == size for f in frames)
    assert all(b.start == a.end for a, b in itertools.pairwise(frames))


def joined(frames: list[Frame]) -> np.ndarray:
    return np.concatenate([f.pcm for f in frames])


async def test_frames_are_the_device_samples_on_a_clock_from_zero(
    backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a wall clock a million seconds from the monotonic one: wall_time must follow it
    clocks = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if k[0] != "_"})
    clocks.time = lambda: time.monotonic() + 1e6
    monkeypatch.setattr("daemon.capture.time", clocks)
    counters = Counters()
    capture = Capture(AudioSettings(), counters, profile=profile())
    frames = await collect(capture, 0.5)
    assert_consecutive(frames)
    assert np.array_equal(joined(frames), ramp_signal(0, frames[-1].end, 1)[:, 0])
    assert capture.device_name == "Fake USB Mic"
    assert capture.info is not None and not capture.info.resampling
    assert counters.snapshot() == {}
    # The time model: sample n was captured n/16000 s after sample 0, which is where the
    # device's stamps put it.
    assert capture.monotonic_time(16_000) - capture.monotonic_time(0) == pytest.approx(1.0)
    low, high = sample_zero_bounds(backend.streams[0])
    assert low <= capture.monotonic_time(0) <= high
    last = frames[-1].end
    assert capture.wall_time(last) - capture.monotonic_time(last) == pytest.approx(1e6, abs=1.0)


async def test_a_48k_device_is_resampled_on_the_reader_side(backend: FakeBackend) -> None:
    def tone(position: int, frames: int, channels: int) -> np.ndarray:
        t = np.arange(position, position + frames) / 48_000
        wave = (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
        return np.repeat(wave[:, None], channels, axis=1)

    backend.signal = tone
    capture = Capture(AudioSettings(), Counters(), profile=profile(rate=48_000, gain_db=6.0))
    frames = await collect(capture, 0.6)
    assert capture.info is not None and capture.info.rate == 48_000
    assert_consecutive(frames)
    pcm = joined(frames)[1600:].astype(np.float64)  # skip the resampler's start-up
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    peak_hz = np.argmax(spectrum) * 16_000 / len(pcm)
    assert peak_hz == pytest.approx(1000, abs=5)
    assert np.max(np.abs(pcm)) == pytest.approx(8000 * 10 ** (6 / 20), rel=0.03)


async def test_channels_are_mixed_when_several_are_used(backend: FakeBackend) -> None:
    def stereo(position: int, frames: int, channels: int) -> np.ndarray:
        block = np.zeros((frames, channels), dtype=np.int16)
        block[:, 0] = 1000
        block[:, 1] = 3000
        return block

    backend.signal = stereo
    frames = await collect(Capture(AudioSettings(), Counters(), profile=profile(use=(0, 1))), 0.2)
    assert set(joined(frames).tolist()) == {2000}


async def test_ring_overrun_is_counted_and_the_clock_jumps_forward(backend: FakeBackend) -> None:
    counters = Counters()
    capture = Capture(AudioSettings(ring_seconds=1.0), counters, profile=profile())
    stalled = False

    def stall(frame: Frame) -> None:
        nonlocal stalled
        if not stalled and frame.end >= 3200:
            stalled = True
            time.sleep(1.5)  # block the event loop: the callback keeps writing

    frames = await collect(capture, 2.2, stall)
    lost = counters.get("ring_overrun_samples")
    assert counters.get("ring_overruns") >= 1
    assert 0.3 * 16_000 < lost < 0.7 * 16_000
    assert counters.get("capture_gap_samples") == lost  # 16 kHz: the jump is exact
    assert all(len(f.pcm) == 480 for f in frames)
    gaps = [i for i in range(1, len(frames)) if frames[i].start != frames[i - 1].end]
    assert len(gaps) == 1
    k = gaps[0]
    assert frames[k].start > frames[k - 1].end  # forward, never back
    # True to time: the sample at clock position c is device sample c, before and after
    # the gap; only the partial frame just before the gap is completed with zeros.
    for frame in frames[: k - 1] + frames[k:]:
        assert np.array_equal(frame.pcm, ramp_signal(frame.start, 480, 1)[:, 0])
    filled = frames[k - 1].pcm
    real = ramp_signal(frames[k - 1].start, 480, 1)[:, 0]
    cut = int(np.argmin(filled == real)) if not np.array_equal(filled, real) else 480
    assert np.array_equal(filled[:cut], real[:cut]) and not filled[cut:].any()


async def test_lost_device_is_reopened_and_the_clock_follows_the_time(
    backend: FakeBackend,
) -> None:
    backend.die_after_s = 0.3
    backend.fail_opens = 0
    counters = Counters()
    capture = Capture(
        AudioSettings(), counters, profile=profile(), reopen_min_s=0.2, reopen_max_s=0.4
    )

    def fail_next_open(frame: Frame) -> None:
        if frame.start == 0:
            backend.fail_opens = 1  # the first reopen fails too

    frames = await collect(capture, 1.5, fail_next_open)
    assert counters.get("capture_device_lost") == 1
    assert counters.get("capture_open_failures") == 1
    assert counters.get("capture_reopens") == 1
    assert counters.get("capture_clock_jumps") == 1
    starts = [f.start for f in frames]
    assert starts == sorted(starts)
    # The clock jumps over the time the device was away, as the two streams' stamps say:
    # the new stream's first sample is placed where its stamps put it on the old clock.
    old, new = backend.streams[0], backend.streams[-1]
    old_low, old_high = sample_zero_bounds(old)
    new_low, new_high = sample_zero_bounds(new)
    delivered = old.position
    gap = counters.get("capture_gap_samples")
    assert (new_low - old_high) * 16_000 - delivered - 1 <= gap
    assert gap <= (new_high - old_low) * 16_000 - delivered + 1


async def test_open_failures_back_off_and_never_reach_the_consumer(
    backend: FakeBackend,
) -> None:
    backend.fail_opens = 3
    counters = Counters()
    capture = Capture(
        AudioSettings(), counters, profile=profile(), reopen_min_s=0.05, reopen_max_s=0.1
    )
    frames = await collect(capture, 0.1)
    assert frames and frames[0].start == 0
    assert counters.get("capture_open_failures") == 3
    assert counters.get("capture_reopens") == 0  # the first open is not a reopen


async def test_a_missing_device_is_retried_not_raised(backend: FakeBackend) -> None:
    counters = Counters()
    capture = Capture(
        AudioSettings(input_device="Jabra"), counters, reopen_min_s=0.05, reopen_max_s=0.05
    )
    await still_listening_when(capture, lambda: counters.get("capture_open_failures") >= 3)


async def test_callback_faults_and_overflows_are_counted(backend: FakeBackend) -> None:
    backend.bad_block_at = 3
    backend.overflow_at = 5
    counters = Counters()
    capture = Capture(AudioSettings(), counters, profile=profile())
    frames = await collect(capture, 8 * BLOCK_S)  # blocks 3 and 5 come within it
    assert counters.get("capture_callback_errors") == 1
    assert counters.get("input_overflows") == 1
    assert frames  # the stream went on


async def test_a_silent_stream_is_a_stall_and_is_reopened(backend: FakeBackend) -> None:
    backend.silent = True
    counters = Counters()
    capture = Capture(
        AudioSettings(),
        counters,
        profile=profile(),
        stall_timeout_s=0.1,
        reopen_min_s=0.05,
        reopen_max_s=0.05,
    )
    await still_listening_when(
        capture, lambda: counters.get("capture_stalls") >= 2 and backend.opens >= 2
    )


async def test_frames_cannot_be_iterated_twice(backend: FakeBackend) -> None:
    capture = Capture(AudioSettings(), Counters(), profile=profile())
    first = capture.frames()
    await anext(first)
    with pytest.raises(RuntimeError):
        await anext(capture.frames())
    await first.aclose()
