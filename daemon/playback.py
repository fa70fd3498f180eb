"""Playback: the translated speech on the room speakers, one utterance after the other.

Two halves share one lock-protected `PlayQueue`:

- the event loop (the ordered translation stream) calls `start_utterance`, `feed` and
  `end_utterance`; audio is resampled there (never in the PortAudio callback) when the
  device does not take 24 kHz, and written into a preallocated ring of int16 samples;
- the PortAudio callback copies from the ring, applies the volume as one float gain
  (set by the event loop; the callback never touches pydantic) and zero-fills the rest.
  It never raises (errors are counted) and holds the lock only for one block's copy.

Utterances play strictly in the order they were started; an utterance starts playing on
its first audio chunk. Audio of a later utterance that arrives while an earlier one is
still open waits (outside the ring) until the earlier one ends.

Backlog: when the audio waiting to be played (ring + waiting) would exceed
`max_backlog_s`, whole utterances are skipped, the oldest waiting (not yet playing) one
first, the rest of the playing one only when nothing else is left. A skipped utterance
gets one `PlaybackSkipped` event; audio fed for it afterwards is dropped and only counted.

"Played" means drained from the device: the callback stamps each block with the
monotonic time its first sample reaches the DAC (`outputBufferDacTime`, else the stream
latency), so an utterance's first and last samples get DAC times. `PlaybackDrained` is
emitted (from `run()`, on the event loop) once that time has passed.

Events per utterance: `PlaybackStarted` when its first sample went to the device, then
exactly one of `PlaybackDrained` or `PlaybackSkipped` (none for an utterance that never had
any audio, unless `drain(skip_waiting=True)` skips it: 0 s skipped), and last, once it
is ended and playback is done with it, exactly one `PlaybackFinished` carrying its
Timeline. Playback owns this state: callers ask `is_open()` and wait for
`PlaybackFinished` instead of keeping their own sets.
With a Timeline, `first_sample_to_device` = when the callback handed the first sample
(`PlaybackStarted.t`; it sounds at `.audible_at`), `last_sample_drained` = the DAC time
of the last sample (`PlaybackDrained.t`).

Counters: `output_underflows` (episodes of a playing, not yet ended utterance running
dry; idle silence and gaps between utterances do not count), `playback_callback_errors`,
`playback_device_underflows` (PortAudio's own underflow flag while busy),
`playback_skipped_utterances`, `playback_skipped_seconds`, `playback_reopens`,
`playback_unknown_utterance` (audio or end for an utterance not open).

Device loss (finished callback, inactive stream or no callback for `STALL_S`): `run()`
counts `playback_reopens`, reopens with a 1 s → 10 s backoff and KEEPS the queued audio
(the backlog cap bounds it); audio already handed to the lost device is gone. If the
reopened device runs at another rate, everything queued is skipped (reason "device").
An open fails → the shared `DeviceHost` hears the output is missing and re-enumerates
before a later attempt; while the microphone is missing and a rescan is due, an idle
stream (nothing queued) gives way: it closes, the rescan runs, it reopens at once.

Quiet room: once nothing was queued or sounding for `IDLE_STOP_S`, the output stream is
STOPPED (not closed): no callbacks, no wake-ups, nothing handed to the DAC, so what the
speaker plays then — and the echo reference of it — is silence. The next utterance's
`start_utterance` starts it again (~1–6 ms, the first callback comes within that); a
device lost while stopped is found then (start fails) and reopened, its audio kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from daemon.backoff import Backoff
from daemon.config import LiveRoom, RoomSettings
from daemon.counters import Counters
from daemon.devices import DeviceHost
from daemon.echo.reference import PlayedAudio
from daemon.profiles import OutputProfile
from daemon.values import OUTPUT_RATE, Pcm, Timeline

log = logging.getLogger(__name__)

DeviceSpec = int | str | None
SkipReason = Literal["backlog", "shutdown", "device"]
PlaybackState = Literal["unavailable", "idle", "speaking"]

TAIL_PAD_S = 0.2  # silence kept flowing after the last sample before drain() says done
STALL_S = 2.0  # no callback for this long while open = device lost
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 10.0
HEALTHY_S = 10.0  # a stream that lived this long resets the backoff
CLOSE_TIMEOUT_S = 2.0
TICK_BUSY_S = 0.01
TICK_IDLE_S = 0.05
IDLE_STOP_S = 2.0  # nothing queued or sounding for this long: the output stream is stopped
TICK_STOPPED_S = 1.0  # the tick while the stream is stopped (a new utterance wakes it)
HEALTH_TICK_S = 0.5  # the longest sleep of a running stream's loop (stall check, rescans)
FEED_PIECE_S = 1.0  # a chunk is queued in pieces of at most this much audio
MAX_LEAD_S = 2.0  # a larger DAC lead from PortAudio is not believed
RESCAN_YIELD = "closed for a device rescan"


@dataclass(frozen=True, slots=True)
class PlaybackStarted:
    """The utterance's first sample went to the device at `t`; it sounds at `audible_at`."""

    utt_id: int
    t: float
    audible_at: float


@dataclass(frozen=True, slots=True)
class PlaybackDrained:
    """The utterance's last sample left the device (DAC) at `t`."""

    utt_id: int
    t: float


@dataclass(frozen=True, slots=True)
class PlaybackSkipped:
    """`seconds` of the utterance's audio were skipped (it will not play, or not further)."""

    utt_id: int
    seconds: float
    reason: SkipReason


@dataclass(frozen=True, slots=True)
class PlaybackFinished:
    """Playback is done with the utterance: it was ended and has drained, been skipped or
    had no audio. Exactly one per started utterance, after its other events."""

    utt_id: int
    timeline: Timeline | None


PlaybackEvent = PlaybackStarted | PlaybackDrained | PlaybackSkipped | PlaybackFinished
EventCallback = Callable[[PlaybackEvent], None]


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


@dataclass(slots=True, eq=False)
class _Utt:
    """One utterance in the play queue. Positions are absolute ring sample indices."""

    id: int
    timeline: Timeline | None
    start: int = -1  # first sample in the ring; -1 while waiting outside the ring
    end: int = -1  # one past the last sample in the ring
    pending: list[Pcm] = field(default_factory=list)
    pending_len: int = 0
    ended: bool = False
    skipped: bool = False
    handed_at: float = 0.0  # set by the callback
    audible_at: float = 0.0  # set by the callback
    drain_at: float = 0.0  # set by the callback (or by end())
    announced: bool = False
    finished: bool = False  # PlaybackFinished was reported

    @property
    def in_ring(self) -> bool:
        return self.start >= 0


class PlayQueue:
    """The jitter buffer: a preallocated ring of int16 samples plus the utterance order.

    Producer methods (`start`, `feed`, `end`, `skip_waiting`, `set_rate`, `poll`) run on
    the event loop and return the events to emit; `render` runs in the audio callback.
    """

    def __init__(self, rate: int, max_backlog_s: float, counters: Counters) -> None:
        self._lock = threading.Lock()
        self._counters = counters
        self._max_backlog_s = max_backlog_s
        self._rate = rate
        self._limit = max(1, round(max_backlog_s * rate))
        self._ring: Pcm = np.zeros(self._limit, dtype=np.int16)
        self._read = 0
        self._write = 0
        self._queue: deque[_Utt] = deque()  # play order: ring-resident first, then waiting
        self._open: dict[int, _Utt] = {}  # started, not yet ended (skipped ones too)
        self._writer: _Utt | None = None  # the open ring-resident utterance fed now
        self._last_dac_end = 0.0
        self._starved = False
        self.underflows = 0  # starvation episodes of a playing utterance (callback side)
        self.marked = False  # render() stamped a first or last sample (callback side)

    # -- queries --------------------------------------------------------------------------

    @property
    def rate(self) -> int:
        return self._rate

    def backlog_samples(self) -> int:
        with self._lock:
            return self._backlog()

    def audible_until(self, now: float, lead: float) -> float:
        """Monotonic time until which the speaker sounds (or will sound) queued audio."""
        with self._lock:
            queued = self._backlog()
            if queued == 0:
                return self._last_dac_end
            return max(self._last_dac_end, now + lead) + queued / self._rate

    def busy(self) -> bool:
        """An utterance is started and not yet drained, or audio is waiting."""
        with self._lock:
            return bool(self._queue) or self._write > self._read

    def finished_at(self) -> float | None:
        """None while anything is queued or playing, else the last sample's DAC time."""
        with self._lock:
            if self._queue or self._write > self._read:
                return None
            return self._last_dac_end

    def next_drain(self) -> float | None:
        """The DAC time of the next utterance's last sample, once the device has it."""
        with self._lock:
            times = [u.drain_at for u in self._queue if u.drain_at > 0]
        return min(times) if times else None

    def speaking(self) -> bool:
        with self._lock:
            return any(u.handed_at > 0 for u in self._queue)

    # -- producer side --------------------------------------------------------------------

    def start(self, utt_id: int, timeline: Timeline | None) -> list[PlaybackEvent]:
        events: list[PlaybackEvent] = []
        with self._lock:
            if utt_id in self._open:
                log.warning("utterance %d started twice; ignored", utt_id)
                return events
            utt = _Utt(utt_id, timeline)
            self._open[utt_id] = utt
            self._queue.append(utt)
            if self._writer is None:
                self._promote(events)
        return events

    def feed(self, utt_id: int, pcm: Pcm) -> list[PlaybackEvent]:
        """Queue audio (at `rate`) of an open utterance; may skip older audio."""
        events: list[PlaybackEvent] = []
        piece = max(1, min(self._limit, round(FEED_PIECE_S * self._rate)))
        with self._lock:
            utt = self._open.get(utt_id)
            if utt is None:
                self._counters.add("playback_unknown_utterance")
                log.warning("audio for utterance %d, which is not open; dropped", utt_id)
                return events
            for offset in range(0, len(pcm), piece):
                self._feed_piece(utt, pcm[offset : offset + piece], events)
        return events

    def end(self, utt_id: int) -> list[PlaybackEvent]:
        events: list[PlaybackEvent] = []
        with self._lock:
            utt = self._open.pop(utt_id, None)
            if utt is None:
                log.warning("utterance %d ended but not open; ignored", utt_id)
                return events
            utt.ended = True
            if utt.skipped:
                self._report_finished(utt, events)
            elif not utt.in_ring:
                if utt.pending_len == 0:
                    self._remove(utt, events)
            else:
                self._end_writer(utt, events)
        return events

    def skip_waiting(self, reason: SkipReason) -> list[PlaybackEvent]:
        """Skip every utterance that has not started playing (e.g. at shutdown)."""
        events: list[PlaybackEvent] = []
        with self._lock:
            for utt in [u for u in self._queue if self._is_waiting(u)]:
                self._skip(utt, reason, events)
        return events

    def set_rate(self, rate: int) -> list[PlaybackEvent]:
        """Change the device rate; audio not yet played (queued at the old rate) is skipped."""
        events: list[PlaybackEvent] = []
        with self._lock:
            if rate == self._rate:
                return events
            for utt in list(self._queue):
                if (utt.in_ring and utt.end > self._read) or utt.pending_len:
                    self._skip(utt, "device", events)
            self._rate = rate
            self._limit = max(1, round(self._max_backlog_s * rate))
            self._ring = np.zeros(self._limit, dtype=np.int16)
        return events

    def poll(self, now: float) -> list[PlaybackEvent]:
        """Started events for what reached the device, drained events for what left it."""
        events: list[PlaybackEvent] = []
        with self._lock:
            for utt in self._queue:
                if not utt.in_ring or utt.handed_at == 0:
                    break
                self._announce(utt, events)
            while self._queue and 0 < self._queue[0].drain_at <= now:
                utt = self._queue.popleft()
                if utt.timeline is not None:
                    utt.timeline.last_sample_drained = utt.drain_at
                events.append(PlaybackDrained(utt.id, utt.drain_at))
                self._report_finished(utt, events)
        return events

    # -- consumer side (audio callback) ---------------------------------------------------

    def render(self, out: Pcm, now: float, dac: float) -> int:
        """Fill `out` (mono) from the ring; `dac` is when out[0] reaches the DAC.

        Zero-fills what the ring lacks and returns how many samples were real audio.
        """
        frames = len(out)
        with self._lock:
            start = self._read
            count = min(frames, self._write - start)
            self._copy_out(start, count, out)
            self._read = start + count
            if count:
                self._mark(start, count, now, dac)
                self._last_dac_end = dac + count / self._rate
            writer = self._writer
            starved = count < frames and writer is not None and writer.start < self._read
        out[count:] = 0
        if starved and not self._starved:
            self.underflows += 1
        self._starved = starved
        return count

    # -- internals (lock held) ------------------------------------------------------------

    def _backlog(self) -> int:
        return self._write - self._read + sum(u.pending_len for u in self._queue)

    def _is_waiting(self, utt: _Utt) -> bool:
        return not utt.in_ring or (utt.start >= self._read and utt.handed_at == 0)

    def _feed_piece(self, utt: _Utt, pcm: Pcm, events: list[PlaybackEvent]) -> None:
        if not utt.skipped:
            self._make_room(utt, len(pcm), events)
        if utt.skipped:
            self._count_skipped(len(pcm))
            return
        if utt is self._writer:
            self._ring_write(pcm)
            utt.end = self._write
        else:
            utt.pending.append(pcm.copy())
            utt.pending_len += len(pcm)

    def _make_room(self, feeder: _Utt, incoming: int, events: list[PlaybackEvent]) -> None:
        """Skip the oldest waiting utterances (then the playing one) to fit `incoming`."""
        while self._backlog() + incoming > self._limit and not feeder.skipped:
            victim = self._pick_victim(feeder)
            if victim is None:
                return
            self._skip(victim, "backlog", events)

    def _pick_victim(self, feeder: _Utt) -> _Utt | None:
        playing: _Utt | None = None
        for utt in self._queue:
            has_audio = utt is feeder or utt.pending_len > 0 or utt.end > max(utt.start, 0)
            if not has_audio:
                continue
            if self._is_waiting(utt):
                return utt
            if utt.in_ring and (utt.end > self._read or utt is feeder):
                playing = playing or utt
        return playing

    def _skip(self, utt: _Utt, reason: SkipReason, events: list[PlaybackEvent]) -> None:
        dropped = utt.pending_len
        utt.pending.clear()
        utt.pending_len = 0
        if utt.in_ring:
            cut_from = max(utt.start, self._read)
            dropped += max(0, utt.end - cut_from)
            self._ring_cut(cut_from, max(cut_from, utt.end))
        utt.skipped = True
        self._announce(utt, events)
        self._queue.remove(utt)
        self._counters.add("playback_skipped_utterances")
        self._count_skipped(dropped)
        events.append(PlaybackSkipped(utt.id, dropped / self._rate, reason))
        log.info("utterance %d: %.2f s of audio skipped (%s)", utt.id, dropped / self._rate, reason)
        self._report_finished(utt, events)
        if utt is self._writer:
            self._writer = None
            self._promote(events)

    def _count_skipped(self, samples: int) -> None:
        if samples:
            self._counters.add("playback_skipped_seconds", samples / self._rate)

    def _announce(self, utt: _Utt, events: list[PlaybackEvent]) -> None:
        if utt.handed_at == 0 or utt.announced:
            return
        utt.announced = True
        if utt.timeline is not None:
            utt.timeline.first_sample_to_device = utt.handed_at
        events.append(PlaybackStarted(utt.id, utt.handed_at, utt.audible_at))

    def _end_writer(self, utt: _Utt, events: list[PlaybackEvent]) -> None:
        if utt.end == utt.start:
            self._remove(utt, events)
        elif utt.end <= self._read:  # everything already went to the device
            utt.drain_at = self._last_dac_end
        if utt is self._writer:
            self._writer = None
            self._promote(events)

    def _remove(self, utt: _Utt, events: list[PlaybackEvent]) -> None:
        """An ended utterance without audio leaves the queue."""
        self._queue.remove(utt)
        self._report_finished(utt, events)

    @staticmethod
    def _report_finished(utt: _Utt, events: list[PlaybackEvent]) -> None:
        """Report the end of an utterance that is ended and out of the queue, once."""
        if utt.ended and not utt.finished:
            utt.finished = True
            events.append(PlaybackFinished(utt.id, utt.timeline))

    def _promote(self, events: list[PlaybackEvent]) -> None:
        """Move waiting utterances into the ring, in order, up to the next open one."""
        for utt in list(self._queue):
            if utt.in_ring:
                continue
            utt.start = self._write
            for pcm in utt.pending:
                self._ring_write(pcm)
            utt.end = self._write
            utt.pending.clear()
            utt.pending_len = 0
            if not utt.ended:
                self._writer = utt
                return
            if utt.end == utt.start:
                self._remove(utt, events)

    def _mark(self, start: int, count: int, now: float, dac: float) -> None:
        stop = start + count
        for utt in self._queue:
            if not utt.in_ring or utt.start >= stop:
                break
            if utt.handed_at == 0 and utt.start >= start and utt.end > utt.start:
                utt.handed_at = now
                utt.audible_at = dac + (utt.start - start) / self._rate
                self.marked = True
            if utt.ended and utt.drain_at == 0 and start < utt.end <= stop:
                utt.drain_at = dac + (utt.end - start) / self._rate
                self.marked = True

    def _ring_write(self, pcm: Pcm) -> None:
        size = len(self._ring)
        index = self._write % size
        first = min(len(pcm), size - index)
        self._ring[index : index + first] = pcm[:first]
        self._ring[: len(pcm) - first] = pcm[first:]
        self._write += len(pcm)

    def _copy_out(self, start: int, count: int, out: Pcm) -> None:
        size = len(self._ring)
        index = start % size
        first = min(count, size - index)
        out[:first] = self._ring[index : index + first]
        out[first:count] = self._ring[: count - first]

    def _ring_cut(self, cut_from: int, cut_to: int) -> None:
        """Remove [cut_from, cut_to) from the unplayed part of the ring."""
        removed = cut_to - cut_from
        if removed == 0:
            return
        tail = np.empty(self._write - cut_to, dtype=np.int16)
        self._copy_out(cut_to, len(tail), tail)
        self._write = cut_from
        self._ring_write(tail)
        for utt in self._queue:
            if utt.in_ring and utt.start >= cut_to:
                utt.start -= removed
                utt.end -= removed


class Playback:
    """The speaker: a sounddevice OutputStream fed from a `PlayQueue`.

    All methods except the audio callback run on the event loop; `set_volume` may be
    called from any thread. `on_event` is called on the event loop and must not block.
    """

    def __init__(
        self,
        device: DeviceSpec,
        counters: Counters,
        *,
        max_backlog_s: float = 20.0,
        on_event: EventCallback | None = None,
        fmt: OutputProfile | None = None,
        played: PlayedAudio | None = None,
        host: DeviceHost | None = None,
    ) -> None:
        self._host = host if host is not None else DeviceHost.fixed()
        self._device = normalize_device(device)
        self._played = played  # what the DAC plays, handed forward to the echo canceller
        self._counters = counters
        self._on_event = on_event
        self._format = fmt if fmt is not None else OutputProfile()
        self._queue = PlayQueue(OUTPUT_RATE, max_backlog_s, counters)
        self._resamplers: dict[int, Any] = {}  # utt_id -> soxr.ResampleStream or None
        self._open_ids: set[int] = set()
        self._gain = 1.0  # volume × ducking, read by the callback
        self._volume_gain = 1.0
        self._duck_gain = 1.0
        self._channels = 1
        self._stream: Any = None
        self._device_name = ""
        self._lead = 0.0  # DAC time minus callback time, measured per block
        self._last_callback = 0.0
        self._opened_at = 0.0
        self._callback_tid = 0  # the PortAudio thread's native id (for per-thread figures)
        self._stopped = False  # the stream is stopped while idle (see the module docstring)
        self._start_error = ""  # why starting a stopped stream failed (the device is lost)
        self._wake = asyncio.Event()  # set by the callback (via the loop) and by _resume
        self._loop: asyncio.AbstractEventLoop | None = None  # run()'s, for the callback
        self._finished = threading.Event()
        self._mono: Pcm = np.zeros(8192, dtype=np.int16)
        self._scratch = np.zeros(8192, dtype=np.float32)
        self._callback_errors = 0
        self._device_underflows = 0
        self._reported: dict[str, int] = {}

    # -- status ---------------------------------------------------------------------------

    @property
    def state(self) -> PlaybackState:
        if self._stream is None:
            return "unavailable"
        now = time.monotonic()
        return "speaking" if self._queue.speaking() or now < self.audible_until() else "idle"

    @property
    def device_name(self) -> str:
        return self._device_name

    @property
    def output_running(self) -> bool:
        """The output stream is open and running (False while stopped in a quiet room)."""
        return self._stream is not None and not self._stopped

    @property
    def rate(self) -> int:
        return self._queue.rate

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def latency(self) -> float:
        """The measured device latency (DAC time minus callback time)."""
        return self._lead

    def backlog_s(self) -> float:
        return self._queue.backlog_samples() / self._queue.rate

    def audible_until(self) -> float:
        """Monotonic time until which the speaker sounds our audio (0.0 if never)."""
        return self._queue.audible_until(time.monotonic(), self._lead)

    # -- volume ---------------------------------------------------------------------------

    def set_volume(self, volume: int, mute: bool) -> None:
        """Volume 0–100 (cubic curve, 100 = unity, see `volume_gain`); mute = silence."""
        self._volume_gain = volume_gain(volume, mute)
        self._gain = self._volume_gain * self._duck_gain

    def duck(self, db: float) -> None:
        """Play `db` quieter from the next block on (people talk over us); 0 = not ducked."""
        gain = 10.0 ** (-max(db, 0.0) / 20.0)
        if gain < 1.0 <= self._duck_gain and self.state == "speaking":
            self._counters.add("playback_ducks")
        self._duck_gain = gain
        self._gain = self._volume_gain * gain

    @property
    def ducked(self) -> bool:
        """Ducked while our speech plays."""
        return self._duck_gain < 1.0 and self.state == "speaking"

    def follow(self, room: LiveRoom) -> None:
        """Take the volume and mute from the live room settings, now and on every change."""
        self._apply_room(room.current)
        room.subscribe(self._apply_room)

    def _apply_room(self, settings: RoomSettings) -> None:
        self.set_volume(settings.volume, settings.mute)

    def use_device(self, device: DeviceSpec, fmt: OutputProfile | None = None) -> None:
        """The output device and its profile's format for the next open (a rescan)."""
        self._device = normalize_device(device)
        self._format = fmt if fmt is not None else OutputProfile()

    # -- the ordered translation stream ---------------------------------------------------

    def start_utterance(self, utt_id: int, timeline: Timeline | None = None) -> None:
        """A new utterance, played after every utterance started before it."""
        self._open_ids.add(utt_id)
        self._resamplers[utt_id] = self._new_resampler()
        self._emit(self._queue.start(utt_id, timeline))
        self._resume()

    def is_open(self, utt_id: int) -> bool:
        """Started and not yet ended (its audio may still come)."""
        return utt_id in self._open_ids

    def feed(self, utt_id: int, pcm: Pcm) -> None:
        """Queue 24 kHz mono int16 audio of an utterance (resampled here if needed)."""
        resampler = self._resamplers.get(utt_id)
        if resampler is not None:
            pcm = np.asarray(resampler.resample_chunk(pcm), dtype=np.int16)
        if len(pcm):
            self._emit(self._queue.feed(utt_id, pcm))

    def end_utterance(self, utt_id: int) -> None:
        """No more audio for this utterance: it drains, and the next one may follow."""
        self._open_ids.discard(utt_id)
        resampler = self._resamplers.pop(utt_id, None)
        if resampler is not None:
            tail = np.asarray(
                resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True),
                dtype=np.int16,
            )
            if len(tail):
                self._emit(self._queue.feed(utt_id, tail))
        self._emit(self._queue.end(utt_id))

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
        self._resamplers = {utt_id: self._new_resampler() for utt_id in self._open_ids}

    async def drain(self, timeout: float, *, skip_waiting: bool = False) -> bool:  # noqa: ASYNC109
        """Wait until all queued audio has left the device plus `TAIL_PAD_S` of silence.

        With `skip_waiting`, utterances that have not started playing are skipped first
        (shutdown: finish only what is playing). Utterances not yet ended keep it waiting.
        Needs `run()` to be running. True if drained within `timeout`.
        """
        deadline = time.monotonic() + timeout
        if skip_waiting:
            self._emit(self._queue.skip_waiting("shutdown"))
        while True:
            now = time.monotonic()
            done_at = self._queue.finished_at()
            if done_at is not None and now >= done_at + TAIL_PAD_S:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(min(TICK_BUSY_S, deadline - now))

    # -- the device -----------------------------------------------------------------------

    async def run(self) -> None:
        """Open the device and keep it open, reopening it when lost; cancel to close."""
        self._loop = asyncio.get_running_loop()
        backoff = Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S)
        attempt = 0
        while True:
            if attempt:
                self._counters.add("playback_reopens")
            attempt += 1
            stream = self._open()
            if stream is not None:
                opened = time.monotonic()
                try:
                    reason = await self._serve(stream)
                finally:
                    self._stream = None
                    await self._close(stream)
                if reason == RESCAN_YIELD:
                    self._counters.add("playback_rescan_yields")
                    log.info("playback stream %s; reopening", reason)
                    attempt = 0  # not a reopen after a loss
                    continue
                if time.monotonic() - opened >= HEALTHY_S:
                    backoff.reset()
            delay = backoff.next()
            if stream is not None:
                log.warning("playback device lost (%s); reopening in %.0f s", reason, delay)
            await self._wait_ticking(delay)

    def _open(self) -> Any:
        """Rescan if due, then open (under the host's lock)."""
        with self._host.lock:
            self._host.rescan_if_due()
            stream = self._open_stream()
            if stream is None:
                self._host.missing("output")
            else:
                self._host.opened("output")
            return stream

    def _open_stream(self) -> Any:
        import sounddevice as sd

        try:
            rate, channels = self._choose_format(sd)
            self._set_rate(rate)
            if self._played is not None:
                self._played.open(rate)
            self._finished.clear()
            stream = sd.OutputStream(
                device=self._device,
                samplerate=rate,
                channels=channels,
                dtype="int16",
                latency=self._format.latency,
                callback=self._callback,
                finished_callback=self._stream_finished,
            )
            self._last_callback = self._opened_at = time.monotonic()
            self._stopped = False
            try:
                stream.start()
            except BaseException:
                stream.close(ignore_errors=True)
                raise
        except (sd.PortAudioError, ValueError, OSError) as exc:
            log.error("cannot open playback device %r: %s", self._device, exc)
            return None
        self._channels = channels
        self._lead = float(stream.latency)
        self._device_name = str(sd.query_devices(stream.device)["name"])
        self._stream = stream
        log.info(
            "playback on %r: %d Hz, %d channel(s), latency %.0f ms",
            self._device_name,
            rate,
            channels,
            self._lead * 1000,
        )
        return stream

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

    async def _serve(self, stream: Any) -> str:
        """Serve the stream until it is lost; returns why.

        The loop does not poll the callback: it sleeps until the callback signals that it
        stamped a first or last sample (`call_soon_threadsafe`), until the next known
        moment (an utterance's last sample reaching the DAC, the idle stop) or for at most
        `HEALTH_TICK_S` (stall detection, a device rescan waiting)."""
        named = False
        while True:
            self._wake.clear()  # before the work: a signal from now on is not lost
            if not named and self._callback_tid:
                named = True
                log.info("playback: callback thread %d", self._callback_tid)
            self._tick()
            problem = self._problem(stream)
            if problem:
                return problem
            if not self._queue.busy() and self._host.should_yield("output"):
                return RESCAN_YIELD
            if not self._stopped and self._idle_for(time.monotonic()) >= IDLE_STOP_S:
                self._stop_idle(stream)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_wake(time.monotonic()))

    def _next_wake(self, now: float) -> float:
        """Seconds until the loop has something to do without being signalled."""
        if self._stopped:
            return TICK_STOPPED_S
        waits = [HEALTH_TICK_S]
        drain_at = self._queue.next_drain()
        if drain_at is not None:
            waits.append(drain_at - now)
        done_at = self._queue.finished_at()
        if done_at is not None:
            waits.append(max(done_at, self._opened_at) + IDLE_STOP_S - now)
        return max(0.0, min(waits))

    def _signal(self) -> None:
        """From the PortAudio thread: wake the loop (the stream ended, or samples got
        their DAC times)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to wake
                loop.call_soon_threadsafe(self._wake.set)

    def _stream_finished(self) -> None:
        self._finished.set()
        self._signal()

    def _idle_for(self, now: float) -> float:
        """Seconds since the last sample left the device, 0 while anything is queued."""
        done_at = self._queue.finished_at()
        return 0.0 if done_at is None else now - max(done_at, self._opened_at)

    def _stop_idle(self, stream: Any) -> None:
        """Stop the stream while the room is quiet (abort: only silence is buffered)."""
        self._stopped = True
        try:
            stream.abort(ignore_errors=False)
        except Exception as exc:
            self._start_error = f"stopping the idle stream failed: {exc}"
            return
        self._finished.clear()  # our own stop, not a lost device
        log.debug("playback: idle, output stream stopped")

    def _resume(self) -> None:
        """Start the stream stopped while idle (an utterance is about to play)."""
        stream = self._stream
        if not self._stopped or stream is None:
            return
        self._stopped = False
        self._last_callback = time.monotonic()
        try:
            stream.start()
        except Exception as exc:  # the device went away while we were idle
            self._start_error = f"cannot restart the idle stream: {exc}"
        self._wake.set()
        log.debug("playback: output stream started")

    def _problem(self, stream: Any) -> str:
        if self._start_error:
            problem, self._start_error = self._start_error, ""
            return problem
        if self._stopped:
            return ""
        try:
            active = bool(stream.active)
        except Exception as exc:  # a broken stream can fail even this query
            return f"stream error: {exc}"
        if self._finished.is_set() or not active:
            return "stream stopped"
        if time.monotonic() - self._last_callback > STALL_S:
            return f"no audio callback for {STALL_S:.0f} s"
        return ""

    async def _wait_ticking(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._tick()
            await asyncio.sleep(min(TICK_IDLE_S, left))

    async def _close(self, stream: Any) -> None:
        if await _call_in_thread(stream.close, CLOSE_TIMEOUT_S):
            self._host.closed("output")
            return
        log.error("closing the playback stream hung; aborting it")
        if await _call_in_thread(stream.abort, CLOSE_TIMEOUT_S):
            self._host.closed("output")
        else:  # still open as far as PortAudio knows: no rescan may run now
            log.error("aborting the playback stream hung too; abandoned")

    def _tick(self) -> None:
        self._report("output_underflows", self._queue.underflows)
        self._report("playback_callback_errors", self._callback_errors)
        self._report("playback_device_underflows", self._device_underflows)
        self._emit(self._queue.poll(time.monotonic()))

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

    # -- the audio callback (PortAudio thread) --------------------------------------------

    def _callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        try:
            now = time.monotonic()
            self._last_callback = now
            if not self._callback_tid:
                self._callback_tid = threading.get_native_id()
            lead = self._measure_lead(time_info)
            mono = self._buffers(frames)
            self._queue.render(mono, now, now + lead)
            self._apply_gain(mono, outdata)
            if self._played is not None:  # exactly what the DAC gets, for the canceller
                self._played.write(outdata, now + lead + frames / self._queue.rate)
            if status.output_underflow and self._queue.busy():
                self._device_underflows += 1
            if self._queue.marked:  # a first or last sample got its DAC time
                self._queue.marked = False
                self._signal()
        except Exception:
            self._callback_errors += 1
            try:
                outdata.fill(0)
            except Exception:
                self._callback_errors += 1

    def _measure_lead(self, time_info: Any) -> float:
        dac = float(time_info.outputBufferDacTime)
        current = float(time_info.currentTime)
        lead = dac - current
        if dac > 0 and current > 0 and 0 <= lead < MAX_LEAD_S:
            self._lead = lead
        return self._lead

    def _buffers(self, frames: int) -> Pcm:
        if frames > len(self._mono):  # rare: a block larger than any seen before
            self._mono = np.zeros(frames, dtype=np.int16)
            self._scratch = np.zeros(frames, dtype=np.float32)
        return self._mono[:frames]

    def _apply_gain(self, mono: Pcm, outdata: Any) -> None:
        gain = self._gain
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


async def _call_in_thread(fn: Callable[[], object], limit_s: float) -> bool:
    """Run `fn` in a daemon thread (a hung PortAudio call must not block exit); True if it
    returned (or raised) within `limit_s`."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def runner() -> None:
        try:
            fn()
        except Exception:
            log.exception("playback stream call failed")
        with contextlib.suppress(RuntimeError):  # the loop may be closed by now
            loop.call_soon_threadsafe(finish)

    threading.Thread(target=runner, name="playback-close", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), limit_s)
    except TimeoutError:
        return False
    return True
