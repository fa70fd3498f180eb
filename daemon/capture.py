"""The live microphone: a PortAudio input stream feeding 16 kHz frames on a sample clock.

The PortAudio callback only copies the selected channel(s) into a preallocated
`SampleRing`, stamps the block's capture time, notes status flags and wakes the event
loop. Everything else happens on the reader side, in the event loop: mixing the selected
channels, gain, resampling to 16 kHz with `soxr.ResampleStream` when the device does not
accept 16 kHz (or the profile asks for another rate), and cutting fixed-size frames.

The frame clock (`Frame.start`) counts 16 kHz samples from 0 and never goes backwards.
When samples are lost (ring overrun, device lost and reopened) it jumps forward by the
lost span, so sample numbers stay true to time; a partial frame before a gap is completed
with zeros. `monotonic_time(sample)` / `wall_time(sample)` map the clock to time, from the
callbacks' stamps (the least-delayed recent callback wins, which filters out jitter).

`Capture` is one device stage of daemon/device_lifecycle.py: a stream that finishes
(device unplugged, sound server gone), stalls, or cannot be opened is retried with the
reconnect backoff while `frames()` keeps waiting; the consumer never sees an exception
for it. The stream gives way (closes and reopens at once) for a device rescan the
speaker needs only while `may_yield()` says so and at most every `CAPTURE_YIELD_S`.

sounddevice is imported lazily: PortAudio reads the ALSA configuration when it is
imported, and the environment may be set just before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.config import AudioSettings
from daemon.counters import Counters
from daemon.device_lifecycle import (
    DeviceLifecycle,
    DeviceOpenError,
    LifecyclePolicy,
    SessionEnd,
    always,
)
from daemon.devices import (
    DeviceHost,
    DeviceInfo,
    DeviceNotFoundError,
    default_device,
    list_devices,
)
from daemon.devices import resolve_device as resolve_device_spec
from daemon.profiles import Latency, Profile
from daemon.ring import Block, RingRead, SampleRing
from daemon.values import SAMPLE_RATE, Frame, Pcm

log = logging.getLogger(__name__)

REOPEN_MIN_S = 1.0
REOPEN_MAX_S = 10.0
STALL_TIMEOUT_S = 3.0
# PortAudio block: 100 ms of device samples per callback. Few wake-ups keep the quiet room
# cheap (10 callbacks and loop wake-ups a second); the ring keeps the sample clock, so the
# only cost is that frames reach the segmenter (and the echo stage) up to 100 ms late.
BLOCK_S = 0.1
TIME_WINDOW = 100  # reads over which the least-delayed callback stamp is kept
CAPTURE_YIELD_S = 60.0  # the microphone closes for a speaker rescan at most this often


@dataclass(frozen=True, slots=True)
class CaptureInfo:
    """The stream as opened."""

    index: int
    name: str
    rate: int  # the device rate; resampled to 16 kHz when it differs
    channels: int  # channels opened
    use_channels: tuple[int, ...]  # channels mixed into the mono signal
    gain_db: float
    latency: float  # PortAudio's reported input latency, seconds

    @property
    def resampling(self) -> bool:
        return self.rate != SAMPLE_RATE


class _Session:
    """One open stream; `callback` runs on the PortAudio thread, the rest on the loop."""

    def __init__(
        self,
        info: CaptureInfo,
        ring: SampleRing,
        loop: asyncio.AbstractEventLoop,
        counters: Counters,
    ) -> None:
        self.info = info
        self.ring = ring
        self.loop = loop
        self.counters = counters
        self.last_callback = time.monotonic()  # stamped by every callback (stall check)
        self.event = asyncio.Event()
        self.stream: Any = None
        self.finished = False
        self.ending = SessionEnd.LOST  # how `Capture._run` ended it
        self.why = "stream finished"
        self.wake_pending = False
        self.overflows = 0
        self.errors = 0
        self.last_error: BaseException | None = None
        self.callback_tid = 0  # the PortAudio thread's native id (for per-thread figures)
        all_columns = tuple(range(info.channels))
        self._columns = None if info.use_channels == all_columns else info.use_channels
        self._rate = float(info.rate)

    # -- PortAudio thread ----------------------------------------------------------------

    def callback(self, indata: Block, frames: int, time_info: Any, status: Any) -> None:
        """Copy into the ring, stamp, note flags, wake the loop; never raises."""
        try:
            now = time.monotonic()
            self.last_callback = now
            if not self.callback_tid:
                self.callback_tid = threading.get_native_id()
            if status and status.input_overflow:
                self.overflows += 1
                self.counters.add("input_overflows")
            age = time_info.currentTime - time_info.inputBufferAdcTime
            first = now - age if 0.0 <= age < 1.0 else now - frames / self._rate
            self.ring.write(indata, self._columns, first + frames / self._rate)
            if not self.wake_pending:
                self.wake_pending = True
                self._wake()
        except Exception as exc:
            self.errors += 1
            self.last_error = exc
            self.counters.add("capture_callback_errors")

    def finished_callback(self) -> None:
        self.finished = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody reads any more
            self.loop.call_soon_threadsafe(self.event.set)

    # -- loop side -----------------------------------------------------------------------

    def close(self) -> None:
        """Abort and close the stream (any thread); never raises."""
        stream, self.stream = self.stream, None
        if stream is None:
            return
        try:
            stream.abort(ignore_errors=True)
            stream.close(ignore_errors=True)
        except Exception as exc:  # a dead device may fail to close; nothing else to do
            log.debug("closing the input stream: %s", exc)


class _Converter:
    """Reader-side signal path: channel mix, gain, resampling to 16 kHz, int16."""

    def __init__(self, rate: int, gain_db: float) -> None:
        self._gain = float(10.0 ** (gain_db / 20.0))
        self._rate = rate
        self._resampler: Any = None
        if rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")

    def process(self, block: Block) -> Pcm:
        if len(block) == 0:
            return np.zeros(0, dtype=np.int16)
        if block.shape[1] == 1 and self._gain == 1.0 and self._resampler is None:
            return np.ascontiguousarray(block[:, 0])
        mono: npt.NDArray[np.float32] = block.astype(np.float32).mean(axis=1, dtype=np.float32)
        if self._gain != 1.0:
            mono *= np.float32(self._gain)
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono)
        return _to_int16(mono)

    def flush(self) -> Pcm:
        """The resampler's held-back tail (before a gap or the end of a stream)."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.int16)
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._resampler.clear()
        return _to_int16(tail)


def _to_int16(signal: npt.NDArray[np.float32]) -> Pcm:
    return np.clip(np.rint(signal), -32768, 32767).astype(np.int16)


class _Framer:
    """Cuts a sample stream into frames of `size` on the clock; gaps jump it forward."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._start = 0  # clock position of pending[0]
        self._pending: Pcm = np.zeros(0, dtype=np.int16)

    @property
    def position(self) -> int:
        """Clock position of the next sample pushed."""
        return self._start + len(self._pending)

    def push(self, pcm: Pcm) -> list[Frame]:
        if len(pcm) == 0:
            return []
        data = np.concatenate((self._pending, pcm)) if len(self._pending) else pcm
        count = len(data) // self._size
        frames = [
            Frame(self._start + i * self._size, data[i * self._size : (i + 1) * self._size].copy())
            for i in range(count)
        ]
        self._start += count * self._size
        self._pending = data[count * self._size :].copy()
        return frames

    def skip(self, samples: int) -> list[Frame]:
        """Advance the clock by `samples` lost samples: a pending partial frame is
        completed with zeros (that much of the gap), the rest is jumped over."""
        if samples <= 0:
            return []
        frames: list[Frame] = []
        if len(self._pending):
            fill = min(samples, self._size - len(self._pending))
            frames = self.push(np.zeros(fill, dtype=np.int16))
            samples -= fill
        self._start += samples
        return frames


class _TimeModel:
    """Maps the 16 kHz clock to time.monotonic() from callback stamps."""

    def __init__(self) -> None:
        self._offsets: deque[float] = deque(maxlen=TIME_WINDOW)
        self._offset = time.monotonic()  # until the first stamp: clock 0 = creation
        self._wall_offset = time.time() - time.monotonic()
        self.calibrated = False

    def observe(self, sample: float, at: float) -> None:
        """The sample at clock position `sample` was captured at monotonic time `at`."""
        self._offsets.append(at - sample / SAMPLE_RATE)
        self._offset = min(self._offsets)
        self._wall_offset = time.time() - time.monotonic()
        self.calibrated = True

    def restart(self) -> None:
        """A new stream: stamps of the old one no longer bound the new one's."""
        self._offsets.clear()

    def monotonic(self, sample: float) -> float:
        return self._offset + sample / SAMPLE_RATE

    def wall(self, sample: float) -> float:
        return self.monotonic(sample) + self._wall_offset

    def sample_at(self, at: float) -> float:
        return (at - self._offset) * SAMPLE_RATE


class _Epoch:
    """Maps device positions of the current stream (and stretch without gaps) to the
    clock: device position `device_pos` is clock position `clock_pos`."""

    def __init__(self, device_pos: int, clock_pos: int, rate: int) -> None:
        self.device_pos = device_pos
        self.clock_pos = clock_pos
        self._ratio = SAMPLE_RATE / rate

    def clock_of(self, device_pos: int) -> float:
        return self.clock_pos + (device_pos - self.device_pos) * self._ratio


class Capture:
    """The room microphone as an async stream of 16 kHz mono `Frame`s.

    Device: `settings.input_device` (index or name substring), else the profile's input
    patterns, else PortAudio's default input. Rate: the profile's `rate`, else 16 kHz,
    else the device's default rate, the first the device accepts.
    """

    def __init__(
        self,
        settings: AudioSettings,
        counters: Counters,
        *,
        profile: Profile | None = None,
        frame_samples: int = 480,
        reopen_min_s: float = REOPEN_MIN_S,
        reopen_max_s: float = REOPEN_MAX_S,
        stall_timeout_s: float = STALL_TIMEOUT_S,
        host: DeviceHost | None = None,
        may_yield: Callable[[], bool] = always,
    ) -> None:
        if frame_samples < 1:
            raise ValueError("frame_samples must be positive")
        policy = LifecyclePolicy(
            "capture",
            "input",
            reopen_min_s=reopen_min_s,
            reopen_max_s=reopen_max_s,
            stall_s=stall_timeout_s,
            yield_every_s=CAPTURE_YIELD_S,
        )
        self._device = DeviceLifecycle(
            self,
            policy,
            host if host is not None else DeviceHost.fixed(),
            counters,
            may_yield=may_yield,
            logger=log,
        )
        self._loop: asyncio.AbstractEventLoop | None = None  # frames()'s, for the callback
        self._settings = settings
        self._counters = counters
        self._profile = profile
        self._frame_samples = frame_samples
        self._framer = _Framer(frame_samples)
        self._time = _TimeModel()
        self._info: CaptureInfo | None = None
        self._iterating = False
        self._converter = _Converter(SAMPLE_RATE, 0.0)  # replaced per stream
        self._epoch: _Epoch | None = None  # None until a stream's first data

    # -- public --------------------------------------------------------------------------

    @property
    def device_name(self) -> str:
        """The input device's name ("" until a stream was opened)."""
        return self._info.name if self._info is not None else ""

    @property
    def info(self) -> CaptureInfo | None:
        """The current (or last) stream's parameters."""
        return self._info

    @property
    def frame_samples(self) -> int:
        return self._frame_samples

    def use_profile(self, profile: Profile | None) -> None:
        """The hardware profile for the next open (after a device rescan)."""
        self._profile = profile

    def monotonic_time(self, sample: int) -> float:
        """time.monotonic() at which clock sample `sample` was captured."""
        return self._time.monotonic(sample)

    def wall_time(self, sample: int) -> float:
        """time.time() at which clock sample `sample` was captured."""
        return self._time.wall(sample)

    async def frames(self) -> AsyncIterator[Frame]:
        """Consecutive frames forever (the clock only jumps forward, over lost samples).

        Close the generator (`contextlib.aclosing`) or cancel its task to stop: the
        stream is closed in its `finally`.
        """
        if self._iterating:
            raise RuntimeError("Capture.frames() is already being iterated")
        self._iterating = True
        try:
            async for frame in self._reopen_loop():
                yield frame
        finally:
            self._iterating = False

    # -- the device (daemon/device_lifecycle.py) ----------------------------------------

    async def _reopen_loop(self) -> AsyncIterator[Frame]:
        self._loop = asyncio.get_running_loop()
        while True:
            session = await self._device.open()
            delivered = False
            try:
                async for frame in self._run(session):
                    delivered = True
                    yield frame
            finally:
                await self._device.close(session)
            for frame in self._end_of_stream():
                yield frame
            why = f"{session.info.name!r}: {session.why}"
            await self._device.ended(session.ending, worked=delivered, why=why)

    def open_session(self) -> _Session:
        """Pick the device and rate, open and start the stream (worker thread)."""
        import sounddevice as sd

        loop = self._loop
        if loop is None:
            raise RuntimeError("open_session outside frames()")
        session: _Session | None = None
        try:
            info, latency = self._plan(sd)
            ring = SampleRing.for_duration(
                self._settings.ring_seconds, info.rate, self._counters, len(info.use_channels)
            )
            session = _Session(info, ring, loop, self._counters)
            session.stream = sd.InputStream(
                device=info.index,
                samplerate=info.rate,
                channels=info.channels,
                dtype="int16",
                blocksize=max(1, round(info.rate * BLOCK_S)),
                latency=latency,
                callback=session.callback,
                finished_callback=session.finished_callback,
            )
            session.info = dataclasses.replace(info, latency=float(session.stream.latency))
            session.stream.start()
        except (sd.PortAudioError, DeviceNotFoundError, ValueError) as exc:
            if session is not None:
                session.close()
            raise DeviceOpenError(str(exc)) from exc
        return session

    def activate_session(self, session: _Session) -> None:
        self._info = session.info
        self._time.restart()
        log.info(
            "capture: #%d %r at %d Hz%s, %d ch using %s, gain %+.1f dB, latency %.0f ms",
            session.info.index,
            session.info.name,
            session.info.rate,
            " (resampled to 16 kHz)" if session.info.resampling else "",
            session.info.channels,
            list(session.info.use_channels),
            session.info.gain_db,
            session.info.latency * 1000,
        )

    def close_session(self, session: _Session) -> None:
        session.close()

    def abort_session(self, session: _Session) -> None:
        session.close()

    def _plan(self, sd: Any) -> tuple[CaptureInfo, Latency]:
        devices = list_devices(probe_rates=False)
        device = self._pick_device(devices)
        channels, use_channels, gain_db, latency = self._input_shape(device)
        rate = _pick_rate(sd, device, channels, self._preferred_rate())
        info = CaptureInfo(device.index, device.name, rate, channels, use_channels, gain_db, 0.0)
        return info, latency

    def _pick_device(self, devices: list[DeviceInfo]) -> DeviceInfo:
        spec = self._settings.input_device.strip()
        if spec:
            return resolve_device_spec(spec, "input", devices)
        if self._profile is not None:
            device = self._profile.input_device(devices)
            if device is None:
                patterns = ", ".join(repr(p) for p in self._profile.input.match)
                names = ", ".join(repr(d.name) for d in devices if d.is_input) or "none"
                raise DeviceNotFoundError(
                    f"no input device matches profile {self._profile.name!r} ({patterns});"
                    f" input devices: {names}"
                )
            return device
        index = default_device("input")
        for device in devices:
            if device.index == index and device.is_input:
                return device
        raise DeviceNotFoundError("no default input device")

    def _input_shape(self, device: DeviceInfo) -> tuple[int, tuple[int, ...], float, Latency]:
        """Channels to open, channels to use, gain and latency (profile, else mono)."""
        channels, gain = 1, 0.0
        use: tuple[int, ...] = (0,)
        latency: Latency = "high"
        if self._profile is not None:
            spec = self._profile.input
            channels, use, gain = spec.open_channels, spec.use_channels, spec.gain_db
            latency = spec.latency
        if device.max_input_channels < channels:
            raise DeviceNotFoundError(
                f"input device {device.name!r} has {device.max_input_channels} channels,"
                f" the profile needs {channels}"
            )
        return channels, use, gain, latency

    def _preferred_rate(self) -> int | None:
        return self._profile.input.rate if self._profile is not None else None

    # -- reading -------------------------------------------------------------------------

    async def _run(self, session: _Session) -> AsyncIterator[Frame]:
        self._converter = _Converter(session.info.rate, session.info.gain_db)
        self._epoch = None
        seen_overflows = seen_errors = 0
        named = False
        while not session.finished:
            try:
                async with asyncio.timeout(self._device.policy.stall_s):
                    await session.event.wait()
            except TimeoutError:
                if self._device.stalled(session.last_callback, time.monotonic()):
                    session.why = "stalled"
                    return
                continue
            session.event.clear()
            session.wake_pending = False  # cleared before reading: no wake-up is missed
            if not named and session.callback_tid:
                named = True
                log.info("capture: callback thread %d", session.callback_tid)
            for frame in self._convert(session, session.ring.read()):
                yield frame
            if self._device.should_yield():
                session.ending = SessionEnd.YIELDED
                return
            if session.overflows != seen_overflows:
                seen_overflows = session.overflows
                log.warning("input overflow (%d in this stream)", seen_overflows)
            if session.errors != seen_errors:
                seen_errors = session.errors
                log.error("capture callback error: %r", session.last_error)
        for frame in self._convert(session, session.ring.read()):
            yield frame

    def _convert(self, session: _Session, chunk: RingRead) -> list[Frame]:
        if len(chunk.data) == 0 and not chunk.lost:
            return []
        frames: list[Frame] = []
        if self._epoch is None:
            frames += self._start_epoch(session, chunk)
        elif chunk.lost:
            frames += self._framer.push(self._converter.flush())
            frames += self._jump(round(self._epoch.clock_of(chunk.start)))
            self._epoch = _Epoch(chunk.start, self._framer.position, session.info.rate)
        frames += self._framer.push(self._converter.process(chunk.data))
        if chunk.stamp is not None and self._epoch is not None:
            position, at = chunk.stamp
            self._time.observe(self._epoch.clock_of(position), at)
        return frames

    def _start_epoch(self, session: _Session, chunk: RingRead) -> list[Frame]:
        """The first data of a stream: place it on the clock by its capture time."""
        frames: list[Frame] = []
        if self._time.calibrated and chunk.stamp is not None:
            position, at = chunk.stamp
            first_at = at - (position - chunk.start) / session.info.rate
            frames = self._jump(round(self._time.sample_at(first_at)))
        self._epoch = _Epoch(chunk.start, self._framer.position, session.info.rate)
        return frames

    def _jump(self, target: int) -> list[Frame]:
        gap = target - self._framer.position
        if gap <= 0:
            return []
        self._counters.add("capture_clock_jumps")
        self._counters.add("capture_gap_samples", gap)
        log.warning(
            "capture clock jumps %d samples (%.3f s) over lost audio", gap, gap / SAMPLE_RATE
        )
        return self._framer.skip(gap)

    def _end_of_stream(self) -> list[Frame]:
        frames = self._framer.push(self._converter.flush())
        self._epoch = None
        return frames


def _pick_rate(sd: Any, device: DeviceInfo, channels: int, preferred: int | None) -> int:
    candidates = [preferred, SAMPLE_RATE, round(device.default_samplerate)]
    tried: list[int] = []
    for rate in candidates:
        if rate is None or rate in tried:
            continue
        tried.append(rate)
        try:
            sd.check_input_settings(
                device=device.index, channels=channels, dtype="int16", samplerate=rate
            )
        except (sd.PortAudioError, ValueError):
            continue
        return rate
    raise DeviceOpenError(
        f"input device {device.name!r} accepts none of {tried} Hz with {channels} channels"
    )
