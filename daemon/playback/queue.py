"""The jitter buffer: translated speech queued for the speaker, one utterance after the other.

The event loop (the ordered translation stream) calls `start`, `feed` and `end`; audio is
written into a preallocated ring of int16 samples at the device rate. The audio callback
calls `render`, which copies one block out and holds the lock only for that copy.

Utterances play strictly in the order they were started. Audio of a later utterance that
arrives while an earlier one is still open waits (outside the ring) until the earlier one
ends. Each utterance moves through `Phase`:

    WAITING ─▶ QUEUED ─(callback hands its first sample)─▶ HANDED ─(PlaybackStarted)─▶
    PLAYING ─(its last sample's DAC time has passed: PlaybackDrained)─▶ DONE
    any phase ─(backlog, shutdown, another device rate: PlaybackSkipped)─▶ SKIPPED

Which utterances are open (started, not yet ended) is kept once, here (`is_open`).

Backlog: when the audio waiting to be played (ring + waiting) would exceed
`max_backlog_s`, whole utterances are skipped, the oldest waiting (not yet playing) one
first, the rest of the playing one only when nothing else is left. A skipped utterance
gets one `PlaybackSkipped` event; audio fed for it afterwards is dropped and only counted.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from daemon.counters import Counters
from daemon.playback.events import (
    PlaybackDrained,
    PlaybackEvent,
    PlaybackFinished,
    PlaybackSkipped,
    PlaybackStarted,
    SkipReason,
)
from daemon.ring import SampleBuffer
from daemon.values import Pcm, Timeline

log = logging.getLogger(__name__)

FEED_PIECE_S = 1.0  # a chunk is queued in pieces of at most this much audio


class Phase(Enum):
    """Where an utterance is on its way to the speaker."""

    WAITING = "waiting"  # its audio waits outside the ring (an earlier one is open)
    QUEUED = "queued"  # in the ring; no sample handed to the device yet
    HANDED = "handed"  # the callback handed its first sample; not reported yet
    PLAYING = "playing"  # PlaybackStarted reported
    DONE = "done"  # out of the queue: drained, or ended without audio
    SKIPPED = "skipped"  # out of the queue: skipped


@dataclass(slots=True, eq=False)
class _Utt:
    """One utterance in the play queue. Positions are absolute ring sample indices, valid
    from QUEUED on."""

    id: int
    timeline: Timeline | None
    phase: Phase = Phase.WAITING
    start: int = 0  # first sample in the ring
    end: int = 0  # one past the last sample in the ring
    pending: list[Pcm] = field(default_factory=list)  # audio while WAITING
    pending_len: int = 0
    handed_at: float = 0.0  # from HANDED on: when the callback handed the first sample
    audible_at: float = 0.0  # from HANDED on: when that sample reaches the DAC
    drain_at: float | None = None  # the DAC time of the last sample, once ended and known

    @property
    def in_ring(self) -> bool:
        return self.phase is not Phase.WAITING

    @property
    def handed(self) -> bool:
        return self.phase is Phase.HANDED or self.phase is Phase.PLAYING


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
        self._ring = SampleBuffer(self._limit)
        self._read = 0  # the next position render() hands the device
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

    def is_open(self, utt_id: int) -> bool:
        """Started and not yet ended (its audio may still come)."""
        with self._lock:
            return utt_id in self._open

    def open_ids(self) -> list[int]:
        with self._lock:
            return list(self._open)

    def backlog_samples(self) -> int:
        with self._lock:
            return self._backlog()

    def ahead_of(self, utt_id: int) -> int:
        """Samples of earlier utterances still to play before `utt_id`'s audio."""
        with self._lock:
            total = 0
            for utt in self._queue:
                if utt.id == utt_id:
                    break
                total += utt.pending_len
                if utt.in_ring:
                    total += max(0, utt.end - max(utt.start, self._read))
            return total

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
            return bool(self._queue) or self._ring.written > self._read

    def finished_at(self) -> float | None:
        """None while anything is queued or playing, else the last sample's DAC time."""
        with self._lock:
            if self._queue or self._ring.written > self._read:
                return None
            return self._last_dac_end

    def next_drain(self) -> float | None:
        """The DAC time of the next utterance's last sample, once the device has it."""
        with self._lock:
            times = [u.drain_at for u in self._queue if u.drain_at is not None]
        return min(times) if times else None

    def speaking(self) -> bool:
        with self._lock:
            return any(u.handed for u in self._queue)

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
            if utt.phase is Phase.SKIPPED:
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
            self._ring = SampleBuffer(self._limit, start=self._ring.written)
        return events

    def poll(self, now: float) -> list[PlaybackEvent]:
        """Started events for what reached the device, drained events for what left it."""
        events: list[PlaybackEvent] = []
        with self._lock:
            for utt in self._queue:
                if not utt.handed:
                    break
                self._announce(utt, events)
            while self._queue and (drain_at := self._queue[0].drain_at) is not None:
                if drain_at > now:
                    break
                utt = self._queue.popleft()
                utt.phase = Phase.DONE
                if utt.timeline is not None:
                    utt.timeline.last_sample_drained = drain_at
                events.append(PlaybackDrained(utt.id, drain_at))
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
            count = min(frames, self._ring.written - start)
            self._ring.read_at(start, frames, out)
            self._read = start + count
            if count:
                self._mark(start, count, now, dac)
                self._last_dac_end = dac + count / self._rate
            writer = self._writer
            starved = count < frames and writer is not None and writer.start < self._read
        if starved and not self._starved:
            self.underflows += 1
        self._starved = starved
        return count

    # -- internals (lock held) ------------------------------------------------------------

    def _backlog(self) -> int:
        return self._ring.written - self._read + sum(u.pending_len for u in self._queue)

    def _is_waiting(self, utt: _Utt) -> bool:
        """Not started playing: outside the ring, or in it with nothing handed yet."""
        return utt.phase is Phase.WAITING or (utt.phase is Phase.QUEUED and utt.start >= self._read)

    def _ended(self, utt: _Utt) -> bool:
        return self._open.get(utt.id) is not utt

    def _feed_piece(self, utt: _Utt, pcm: Pcm, events: list[PlaybackEvent]) -> None:
        if utt.phase is not Phase.SKIPPED:
            self._make_room(utt, len(pcm), events)
        if utt.phase is Phase.SKIPPED:
            self._count_skipped(len(pcm))
            return
        if utt is self._writer:
            self._ring.write(pcm)
            utt.end = self._ring.written
        else:
            utt.pending.append(pcm.copy())
            utt.pending_len += len(pcm)

    def _make_room(self, feeder: _Utt, incoming: int, events: list[PlaybackEvent]) -> None:
        """Skip the oldest waiting utterances (then the playing one) to fit `incoming`."""
        while self._backlog() + incoming > self._limit and feeder.phase is not Phase.SKIPPED:
            victim = self._pick_victim(feeder)
            if victim is None:
                return
            self._skip(victim, "backlog", events)

    def _pick_victim(self, feeder: _Utt) -> _Utt | None:
        playing: _Utt | None = None
        for utt in self._queue:
            has_audio = utt is feeder or utt.pending_len > 0 or utt.end > utt.start
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
        self._announce(utt, events)
        utt.phase = Phase.SKIPPED
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
        if utt.phase is not Phase.HANDED:
            return
        utt.phase = Phase.PLAYING
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
        utt.phase = Phase.DONE
        self._report_finished(utt, events)

    def _report_finished(self, utt: _Utt, events: list[PlaybackEvent]) -> None:
        """Report the end of an utterance that left the queue, once it is ended (this is
        the last time anything holds it)."""
        if self._ended(utt):
            events.append(PlaybackFinished(utt.id, utt.timeline))

    def _promote(self, events: list[PlaybackEvent]) -> None:
        """Move waiting utterances into the ring, in order, up to the next open one."""
        for utt in list(self._queue):
            if utt.in_ring:
                continue
            utt.start = self._ring.written
            for pcm in utt.pending:
                self._ring.write(pcm)
            utt.end = self._ring.written
            utt.pending.clear()
            utt.pending_len = 0
            utt.phase = Phase.QUEUED
            if not self._ended(utt):
                self._writer = utt
                return
            if utt.end == utt.start:
                self._remove(utt, events)

    def _mark(self, start: int, count: int, now: float, dac: float) -> None:
        stop = start + count
        for utt in self._queue:
            if not utt.in_ring or utt.start >= stop:
                break
            if utt.phase is Phase.QUEUED and utt.start >= start and utt.end > utt.start:
                utt.handed_at = now
                utt.audible_at = dac + (utt.start - start) / self._rate
                utt.phase = Phase.HANDED
                self.marked = True
            if utt.drain_at is None and start < utt.end <= stop and self._ended(utt):
                utt.drain_at = dac + (utt.end - start) / self._rate
                self.marked = True

    def _ring_cut(self, cut_from: int, cut_to: int) -> None:
        """Remove [cut_from, cut_to) from the unplayed part of the ring."""
        removed = cut_to - cut_from
        if removed == 0:
            return
        self._ring.cut(cut_from, cut_to)
        for utt in self._queue:
            if utt.in_ring and utt.start >= cut_to:
                utt.start -= removed
                utt.end -= removed
