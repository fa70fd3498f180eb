"""`Playback`: the speaker stage, the ordered translation stream in and events out.

The event loop calls `start_utterance`, `feed` and `end_utterance`; audio that has to
wait is played faster (`Pace`, daemon/playback/pace.py), then resampled when the device
does not take 24 kHz, both here (never in the PortAudio callback), and queued in the
`PlayQueue`; the `OutputDevice` plays it. `run()` keeps the device open through
its `DeviceLifecycle` and, while it is open, sleeps until the callback signals that a
first or last sample got its DAC time, until the next known moment (an utterance's last
sample reaching the DAC, the idle stop) or for at most `HEALTH_TICK_S` (the stall check,
a device rescan waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import numpy as np

from daemon.config import LiveRoom, RoomSettings
from daemon.counters import Counters
from daemon.device_lifecycle import DeviceLifecycle, DeviceState, LifecyclePolicy, SessionEnd
from daemon.devices import DeviceHost
from daemon.echo.reference import PlayedAudio
from daemon.playback.events import EventCallback, PlaybackEvent
from daemon.playback.output import DeviceLost, DeviceSpec, OutputDevice, volume_gain
from daemon.playback.pace import DEFAULT_MAX_RATE, Pace
from daemon.playback.queue import PlayQueue
from daemon.profiles import OutputProfile
from daemon.values import OUTPUT_RATE, Pcm, Timeline

log = logging.getLogger(__name__)

TAIL_PAD_S = 0.2  # silence kept flowing after the last sample before drain() says done
STALL_S = 2.0  # no callback for this long while open = device lost
HEALTHY_S = 10.0  # a stream that lived this long resets the backoff
TICK_BUSY_S = 0.01
IDLE_STOP_S = 2.0  # nothing queued or sounding for this long: the output stream is stopped
TICK_STOPPED_S = 1.0  # the tick while the stream is stopped (a new utterance wakes it)
HEALTH_TICK_S = 0.5  # the longest sleep of a running stream's loop (stall check, rescans)
POLICY = LifecyclePolicy("playback", "output", reopen_min_s=1.0, reopen_max_s=10.0, stall_s=STALL_S)


class PlaybackState(StrEnum):
    UNAVAILABLE = "unavailable"  # no output stream open
    IDLE = "idle"
    SPEAKING = "speaking"  # our speech is sounding (or handed to the device)


class Playback:
    """The speaker (see daemon/playback/__init__.py).

    All methods except the audio callback run on the event loop; `set_volume` may be
    called from any thread. `on_event` is called on the event loop and must not block.
    """

    def __init__(
        self,
        device: DeviceSpec,
        counters: Counters,
        *,
        max_backlog_s: float = 20.0,
        max_rate: float = DEFAULT_MAX_RATE,
        more_coming: Callable[[], bool] | None = None,
        on_event: EventCallback | None = None,
        fmt: OutputProfile | None = None,
        played: PlayedAudio | None = None,
        host: DeviceHost | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock  # the playback timeline's clock: time.monotonic (tests inject one)
        self._counters = counters
        self._on_event = on_event
        self._queue = PlayQueue(OUTPUT_RATE, max_backlog_s, counters)
        self._output = OutputDevice(device, self._queue, fmt, played, self._set_rate, clock=clock)
        self._device = DeviceLifecycle(
            self._output,
            POLICY,
            host if host is not None else DeviceHost.fixed(),
            counters,
            may_yield=lambda: not self._queue.busy(),  # between utterances only
            logger=log,
        )
        self._resamplers: dict[int, Any] = {}  # utt_id -> soxr.ResampleStream or None
        self._max_rate = max_rate
        self._more_coming = more_coming if more_coming is not None else lambda: False
        self._paces: dict[int, Pace] = {}  # utt_id -> its time-stretch (max_rate > 1)
        self._pace_rate = 1.0
        self._volume_gain = 1.0
        self._duck_gain = 1.0
        self._reported: dict[str, int] = {}

    # -- status ---------------------------------------------------------------------------

    @property
    def state(self) -> PlaybackState:
        if self._device.state is not DeviceState.OPEN:
            return PlaybackState.UNAVAILABLE
        if self._queue.speaking() or self._clock() < self.audible_until():
            return PlaybackState.SPEAKING
        return PlaybackState.IDLE

    @property
    def device_name(self) -> str:
        return self._output.device_name

    @property
    def output_running(self) -> bool:
        """The output stream is open and running (False while stopped in a quiet room)."""
        return self._output.stream is not None and not self._output.stopped

    @property
    def rate(self) -> int:
        return self._queue.rate

    @property
    def channels(self) -> int:
        return self._output.channels

    @property
    def latency(self) -> float:
        """The measured device latency (DAC time minus callback time)."""
        return self._output.lead

    def backlog_s(self) -> float:
        """Seconds of our speech waiting to be played (how far behind the speaker is)."""
        return self._queue.backlog_samples() / self._queue.rate

    @property
    def pace_rate(self) -> float:
        """The rate of the speech queued last while any waits (1.0: as spoken; see
        daemon/playback/pace.py)."""
        return self._pace_rate if self._queue.busy() else 1.0

    def audible_until(self) -> float:
        """Monotonic time until which the speaker sounds our audio (0.0 if never)."""
        return self._queue.audible_until(self._clock(), self._output.lead)

    # -- volume ---------------------------------------------------------------------------

    def set_volume(self, volume: int, mute: bool) -> None:
        """Volume 0–100 (cubic curve, 100 = unity, see `volume_gain`); mute = silence."""
        self._volume_gain = volume_gain(volume, mute)
        self._output.gain = self._volume_gain * self._duck_gain

    def duck(self, db: float) -> None:
        """Play `db` quieter from the next block on (people talk over us); 0 = not ducked."""
        gain = 10.0 ** (-max(db, 0.0) / 20.0)
        if gain < 1.0 <= self._duck_gain and self.state is PlaybackState.SPEAKING:
            self._counters.add("playback_ducks")
        self._duck_gain = gain
        self._output.gain = self._volume_gain * gain

    @property
    def ducked(self) -> bool:
        """Ducked while our speech plays."""
        return self._duck_gain < 1.0 and self.state is PlaybackState.SPEAKING

    def follow(self, room: LiveRoom) -> None:
        """Take the volume and mute from the live room settings, now and on every change."""
        self._apply_room(room.current)
        room.subscribe(self._apply_room)

    def _apply_room(self, settings: RoomSettings) -> None:
        self.set_volume(settings.volume, settings.mute)

    def use_device(self, device: DeviceSpec, fmt: OutputProfile | None = None) -> None:
        """The output device and its profile's format for the next open (a rescan)."""
        self._output.use_device(device, fmt)

    # -- the ordered translation stream ---------------------------------------------------

    def start_utterance(self, utt_id: int, timeline: Timeline | None = None) -> None:
        """A new utterance, played after every utterance started before it."""
        self._resamplers[utt_id] = self._new_resampler()
        if self._max_rate > 1.0:
            self._paces[utt_id] = Pace(OUTPUT_RATE, self._max_rate, self.pace_rate)
        self._emit(self._queue.start(utt_id, timeline))
        self._output.resume()

    def is_open(self, utt_id: int) -> bool:
        """Started and not yet ended (its audio may still come)."""
        return self._queue.is_open(utt_id)

    def feed(self, utt_id: int, pcm: Pcm) -> None:
        """Queue 24 kHz mono int16 audio of an utterance (sped up and resampled here)."""
        pace = self._paces.get(utt_id)
        if pace is not None:
            more = self._more_coming()
            pcm = pace.feed(pcm, self._wait_s(utt_id, more), more_coming=more)
            self._pace_rate = pace.rate
        self._queue_audio(utt_id, pcm, last=False)

    def end_utterance(self, utt_id: int) -> None:
        """No more audio for this utterance: it drains, and the next one may follow."""
        pace = self._paces.pop(utt_id, None)
        rest = np.zeros(0, dtype=np.int16)
        if pace is not None:
            rest = pace.finish()
            if pace.stretched_s:
                self._counters.add("playback_stretched_seconds", pace.stretched_s)
        self._queue_audio(utt_id, rest, last=True)
        self._resamplers.pop(utt_id, None)
        self._emit(self._queue.end(utt_id))

    def _wait_s(self, utt_id: int, more_coming: bool) -> float:
        """How long new audio of `utt_id` waits: behind earlier utterances, and behind its
        own queued audio too while more is on its way (`more_coming`: someone is speaking
        or another translation is in the pipeline), which will wait behind it."""
        if more_coming:
            return self.backlog_s()
        return self._queue.ahead_of(utt_id) / self._queue.rate

    def _queue_audio(self, utt_id: int, pcm: Pcm, *, last: bool) -> None:
        resampler = self._resamplers.get(utt_id)
        if resampler is not None:
            pcm = np.asarray(resampler.resample_chunk(pcm, last=last), dtype=np.int16)
        if len(pcm):
            self._emit(self._queue.feed(utt_id, pcm))

    def _new_resampler(self) -> Any:
        """A 24 kHz → device rate resampler for one utterance, None at 24 kHz."""
        if self._queue.rate == OUTPUT_RATE:
            return None
        import soxr

        return soxr.ResampleStream(OUTPUT_RATE, self._queue.rate, 1, dtype="int16")

    def _set_rate(self, rate: int) -> None:
        if rate == self._queue.rate:
            return
        self._emit(self._queue.set_rate(rate))
        self._resamplers = {utt_id: self._new_resampler() for utt_id in self._queue.open_ids()}

    async def drain(self, timeout: float, *, skip_waiting: bool = False) -> bool:  # noqa: ASYNC109
        """Wait until all queued audio has left the device plus `TAIL_PAD_S` of silence.

        With `skip_waiting`, utterances that have not started playing are skipped first
        (shutdown: finish only what is playing). Utterances not yet ended keep it waiting.
        Needs `run()` to be running. True if drained within `timeout`.
        """
        deadline = self._clock() + timeout
        if skip_waiting:
            self._emit(self._queue.skip_waiting("shutdown"))
        while True:
            now = self._clock()
            done_at = self._queue.finished_at()
            if done_at is not None and now >= done_at + TAIL_PAD_S:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(min(TICK_BUSY_S, deadline - now))

    # -- the device -----------------------------------------------------------------------

    async def run(self) -> None:
        """Open the device and keep it open, reopening it when lost; cancel to close."""
        self._output.bind(asyncio.get_running_loop())
        while True:
            session = await self._device.open(self._tick)
            try:
                end, why = await self._serve()
            finally:
                self._output.detach()
                await self._device.close(session)
            lived = time.monotonic() - self._device.opened_at
            await self._device.ended(end, worked=lived >= HEALTHY_S, why=why, tick=self._tick)

    async def _serve(self) -> tuple[SessionEnd, str]:
        """Serve the open stream until it is lost or gives way to a rescan."""
        output = self._output
        named = False
        while True:
            output.wake.clear()  # before the work: a signal from now on is not lost
            if not named and output.callback_tid:
                named = True
                log.info("playback: callback thread %d", output.callback_tid)
            self._tick()
            try:
                output.check(self._device)
            except DeviceLost as lost:
                return SessionEnd.LOST, str(lost)
            if self._device.should_yield():
                return SessionEnd.YIELDED, ""
            if not output.stopped and self._idle_for(self._clock()) >= IDLE_STOP_S:
                output.stop_idle()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(output.wake.wait(), self._next_wake(self._clock()))

    def _next_wake(self, now: float) -> float:
        """Seconds until the loop has something to do without being signalled."""
        if self._output.stopped:
            return TICK_STOPPED_S
        waits = [HEALTH_TICK_S]
        drain_at = self._queue.next_drain()
        if drain_at is not None:
            waits.append(drain_at - now)
        done_at = self._queue.finished_at()
        if done_at is not None:
            waits.append(max(done_at, self._device.opened_at) + IDLE_STOP_S - now)
        return max(0.0, min(waits))

    def _idle_for(self, now: float) -> float:
        """Seconds since the last sample left the device, 0 while anything is queued."""
        done_at = self._queue.finished_at()
        return 0.0 if done_at is None else now - max(done_at, self._device.opened_at)

    def _tick(self) -> None:
        self._report("output_underflows", self._queue.underflows)
        self._report("playback_callback_errors", self._output.callback_errors)
        self._report("playback_device_underflows", self._output.device_underflows)
        self._emit(self._queue.poll(self._clock()))

    def _report(self, name: str, value: int) -> None:
        delta = value - self._reported.get(name, 0)
        if delta:
            self._counters.add(name, delta)
            self._reported[name] = value

    def _emit(self, events: list[PlaybackEvent]) -> None:
        for event in events:
            log.debug("playback event %s", event)
            if self._on_event is None:
                continue
            try:
                self._on_event(event)
            except Exception:
                log.exception("playback event handler failed on %s", event)
