"""The output device: a sounddevice OutputStream fed from the `PlayQueue` by its callback.

The PortAudio callback copies one block from the queue, applies the volume as one float
gain (set by the event loop; the callback never touches pydantic), hands the block to the
echo stage (`PlayedAudio.write`) and zero-fills the rest. It never raises (errors are
counted), allocates nothing in the steady state and wakes the loop
(`call_soon_threadsafe`) only when a first or last sample got its DAC time.

"Played" means drained from the device: the callback stamps each block with the
monotonic time its first sample reaches the DAC (`outputBufferDacTime`, else the stream
latency).

Opening (`open_session`, in a worker thread under the device host's lock) chooses the
format and creates the stream; `activate_session` (on the event loop) sets the queue's
and the echo reference's rate, then starts it. While the room is quiet the stream is
STOPPED, not closed (`stop_idle` / `resume`; see daemon/playback/__init__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from daemon.device_lifecycle import DeviceLifecycle, DeviceOpenError
from daemon.echo.reference import PlayedAudio
from daemon.playback.queue import PlayQueue
from daemon.profiles import OutputProfile
from daemon.values import OUTPUT_RATE, Pcm

log = logging.getLogger(__name__)

DeviceSpec = int | str | None
MAX_LEAD_S = 2.0  # a larger DAC lead from PortAudio is not believed


class DeviceLost(Exception):
    """The output stream is gone (finished, inactive, stalled, failed to start)."""


def volume_gain(volume: int, mute: bool) -> float:
    """Gain for a 0–100 volume: cubic, like PulseAudio's slider (100 → 1.0, 50 → 0.125
    = −18 dB, 25 → −36 dB, 0 → silence); mute → 0."""
    if mute:
        return 0.0
    level = min(max(volume, 0), 100) / 100.0
    return level**3


def normalize_device(device: DeviceSpec) -> DeviceSpec:
    """`AudioSettings.output_device` style → sounddevice: "" → None (the default device),
    "3" → index 3, anything else a name (substring)."""
    if isinstance(device, str):
        text = device.strip()
        if not text:
            return None
        return int(text) if text.isdigit() else text
    return device


@dataclass(frozen=True, slots=True)
class OutputSession:
    """A stream as opened (not yet started)."""

    stream: Any
    rate: int
    channels: int
    name: str


class OutputDevice:
    """The speaker's stream and its callback; the `AudioDevice` of its lifecycle."""

    def __init__(
        self,
        device: DeviceSpec,
        queue: PlayQueue,
        fmt: OutputProfile | None,
        played: PlayedAudio | None,
        on_rate: Callable[[int], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock  # the playback timeline's clock: time.monotonic (tests inject one)
        self._device = normalize_device(device)
        self._format = fmt if fmt is not None else OutputProfile()
        self._queue = queue
        self._played = played  # what the DAC plays, handed forward to the echo canceller
        self._on_rate = on_rate  # the loop side: the queue and resamplers at a new rate
        self.gain = 1.0  # volume × ducking, read by the callback
        self.stream: Any = None  # the open stream (None between sessions)
        self.stopped = False  # stopped while idle
        self.channels = 1
        self.lead = 0.0  # DAC time minus callback time, measured per block
        self.device_name = ""
        self.callback_tid = 0  # the PortAudio thread's native id (for per-thread figures)
        self.last_callback = 0.0  # stamped by every callback (stall check)
        self.callback_errors = 0
        self.device_underflows = 0
        self.wake = asyncio.Event()  # set by the callback (via the loop) and by `resume`
        self._loop: asyncio.AbstractEventLoop | None = None  # for the callback's signal
        self._finished = threading.Event()
        self._failure: DeviceLost | None = None  # why starting or stopping failed
        self._mono: Pcm = np.zeros(8192, dtype=np.int16)
        self._scratch = np.zeros(8192, dtype=np.float32)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def use_device(self, device: DeviceSpec, fmt: OutputProfile | None = None) -> None:
        """The output device and its profile's format for the next open (a rescan)."""
        self._device = normalize_device(device)
        self._format = fmt if fmt is not None else OutputProfile()

    # -- the lifecycle's AudioDevice ------------------------------------------------------

    def open_session(self) -> OutputSession:
        """Choose the format and create the stream (worker thread, host lock held)."""
        import sounddevice as sd

        try:
            rate, channels = self._choose_format(sd)
            stream = sd.OutputStream(
                device=self._device,
                samplerate=rate,
                channels=channels,
                dtype="int16",
                latency=self._format.latency,
                callback=self._callback,
                finished_callback=self._stream_finished,
            )
            try:
                name = str(sd.query_devices(stream.device)["name"])
            except BaseException:
                stream.close(ignore_errors=True)
                raise
        except (sd.PortAudioError, ValueError, OSError) as exc:
            raise DeviceOpenError(f"{exc} (device {self._device!r})") from exc
        return OutputSession(stream, rate, channels, name)

    def activate_session(self, session: OutputSession) -> None:
        """The queue and the echo reference at the stream's rate, then start it (loop)."""
        self._on_rate(session.rate)
        if self._played is not None:
            self._played.open(session.rate)
        self._finished.clear()
        self._failure = None
        self.stopped = False
        self.last_callback = self._clock()
        try:
            session.stream.start()
        except Exception as exc:
            raise DeviceOpenError(f"cannot start the playback stream: {exc}") from exc
        self.channels = session.channels
        self.lead = float(session.stream.latency)
        self.device_name = session.name
        self.stream = session.stream
        log.info(
            "playback on %r: %d Hz, %d channel(s), latency %.0f ms",
            session.name,
            session.rate,
            session.channels,
            self.lead * 1000,
        )

    def close_session(self, session: OutputSession) -> None:
        session.stream.close(ignore_errors=True)

    def abort_session(self, session: OutputSession) -> None:
        session.stream.abort(ignore_errors=True)

    def _choose_format(self, sd: Any) -> tuple[int, int]:
        """The profile's rate and channels if the device takes them; else 24 kHz, else its
        default rate; mono, else stereo, else all its channels."""
        info = sd.query_devices(self._device, "output")
        fmt = self._format
        rates = _in_order(fmt.rate, OUTPUT_RATE, round(float(info["default_samplerate"])))
        counts = _in_order(fmt.channels, *sorted({1, 2, int(info["max_output_channels"])}))
        problem: Exception | None = None
        for rate in rates:
            for channels in counts:
                try:
                    sd.check_output_settings(
                        device=self._device, samplerate=rate, channels=channels, dtype="int16"
                    )
                except (sd.PortAudioError, ValueError) as exc:
                    problem = exc
                    continue
                return rate, channels
        raise ValueError(f"{info['name']!r} takes no int16 output format: {problem}")

    # -- the running stream (event loop) --------------------------------------------------

    def check(self, lifecycle: DeviceLifecycle[OutputSession]) -> None:
        """Raise `DeviceLost` if the stream is gone (a stopped stream is not checked)."""
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        if self.stopped:
            return
        try:
            active = bool(self.stream.active)
        except Exception as exc:  # a broken stream can fail even this query
            raise DeviceLost(f"stream error: {exc}") from exc
        if self._finished.is_set() or not active:
            raise DeviceLost("stream stopped")
        if lifecycle.stalled(self.last_callback, self._clock()):
            raise DeviceLost(f"no audio callback for {lifecycle.policy.stall_s:.0f} s")

    def stop_idle(self) -> None:
        """Stop the stream while the room is quiet (abort: only silence is buffered)."""
        self.stopped = True
        try:
            self.stream.abort(ignore_errors=False)
        except Exception as exc:
            self._failure = DeviceLost(f"stopping the idle stream failed: {exc}")
            return
        self._finished.clear()  # our own stop, not a lost device
        log.debug("playback: idle, output stream stopped")

    def resume(self) -> None:
        """Start the stream stopped while idle (an utterance is about to play)."""
        stream = self.stream
        if not self.stopped or stream is None:
            return
        self.stopped = False
        self.last_callback = self._clock()
        try:
            stream.start()
        except Exception as exc:  # the device went away while we were idle
            self._failure = DeviceLost(f"cannot restart the idle stream: {exc}")
        self.wake.set()
        log.debug("playback: output stream started")

    def detach(self) -> None:
        """The session is over: nothing is open any more."""
        self.stream = None

    def _signal(self) -> None:
        """From the PortAudio thread: wake the loop (the stream ended, or samples got
        their DAC times)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to wake
                loop.call_soon_threadsafe(self.wake.set)

    def _stream_finished(self) -> None:
        self._finished.set()
        self._signal()

    # -- the audio callback (PortAudio thread) --------------------------------------------

    def _callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        try:
            now = self._clock()
            self.last_callback = now
            if not self.callback_tid:
                self.callback_tid = threading.get_native_id()
            lead = self._measure_lead(time_info)
            mono = self._buffers(frames)
            self._queue.render(mono, now, now + lead)
            self._apply_gain(mono, outdata)
            if self._played is not None:  # exactly what the DAC gets, for the canceller
                self._played.write(outdata, now + lead + frames / self._queue.rate)
            if status.output_underflow and self._queue.busy():
                self.device_underflows += 1
            if self._queue.marked:  # a first or last sample got its DAC time
                self._queue.marked = False
                self._signal()
        except Exception:
            self.callback_errors += 1
            try:
                outdata.fill(0)
            except Exception:
                self.callback_errors += 1

    def _measure_lead(self, time_info: Any) -> float:
        dac = float(time_info.outputBufferDacTime)
        current = float(time_info.currentTime)
        lead = dac - current
        if dac > 0 and current > 0 and 0 <= lead < MAX_LEAD_S:
            self.lead = lead
        return self.lead

    def _buffers(self, frames: int) -> Pcm:
        if frames > len(self._mono):  # rare: a block larger than any seen before
            self._mono = np.zeros(frames, dtype=np.int16)
            self._scratch = np.zeros(frames, dtype=np.float32)
        return self._mono[:frames]

    def _apply_gain(self, mono: Pcm, outdata: Any) -> None:
        gain = self.gain
        if gain >= 1.0:
            outdata[:] = mono[:, None]
        elif gain <= 0.0:
            outdata.fill(0)
        else:
            scaled = self._scratch[: len(mono)]
            np.copyto(scaled, mono)
            scaled *= np.float32(gain)
            outdata[:] = scaled[:, None]


def _in_order(*choices: int | None) -> list[int]:
    """The choices given, first ones first, without None or repeats."""
    return list(dict.fromkeys(c for c in choices if c is not None))
