"""Playback: the jitter buffer without a device, then the real thing on the audio rig.

The device tests run `tests/drive_playback.py` in a subprocess with the rig's environment
(PortAudio reads `$HOME/.asoundrc` when sounddevice is imported), record `spk.monitor`
with parecord through a pipe whose chunks are timestamped with time.monotonic(), and
check the recording: which tones, in which order, how long, how loud, and when.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.counters import Counters
from daemon.playback import (
    IDLE_STOP_S,
    TICK_STOPPED_S,
    Playback,
    PlaybackDrained,
    PlaybackEvent,
    PlaybackFinished,
    PlaybackSkipped,
    PlaybackStarted,
    PlayQueue,
    volume_gain,
)
from daemon.playback.pace import BEHIND, SLEW_PER_S, WAITING, Pace, target_rate
from daemon.values import OUTPUT_RATE, Pcm, Timeline
from scripts.audio_rig import AudioRig

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------
# The jitter buffer and backlog logic, without a device
# ---------------------------------------------------------------------------------------

RATE = 1000  # a small rate keeps the numbers readable: 1 sample = 1 ms


def marked(utt: int, n: int) -> Pcm:
    """Samples that say which utterance they belong to and where: utt*1000 + 1 + index."""
    return (utt * 1000 + 1 + np.arange(n) % 999).astype(np.int16)


class Clock:
    """Renders blocks like the audio callback: block i is handed at t0 + i*block/RATE."""

    def __init__(self, queue: PlayQueue, block: int = 10, lead: float = 0.05) -> None:
        self.queue = queue
        self.block = block
        self.lead = lead
        self.now = 100.0
        self.out: list[Pcm] = []

    def render(self, blocks: int = 1) -> Pcm:
        got = []
        for _ in range(blocks):
            buf = np.full(self.block, -1, dtype=np.int16)
            self.queue.render(buf, self.now, self.now + self.lead)
            got.append(buf)
            self.now += self.block / RATE
        self.out.extend(got)
        return np.concatenate(got)

    def played(self) -> Pcm:
        everything = np.concatenate(self.out) if self.out else np.zeros(0, np.int16)
        return everything[everything != 0]


def make_queue(backlog_s: float = 10.0) -> tuple[PlayQueue, Counters]:
    counters = Counters()
    return PlayQueue(RATE, backlog_s, counters), counters


def test_plays_in_start_order_even_when_later_audio_arrives_first() -> None:
    queue, _ = make_queue()
    clock = Clock(queue)
    queue.start(1, None)
    queue.start(2, None)
    queue.feed(2, marked(2, 30))  # waits outside the ring: 1 is still open
    queue.feed(1, marked(1, 25))
    clock.render(1)
    queue.feed(1, marked(1, 25)[:5])
    queue.end(1)
    queue.feed(2, marked(2, 30)[:7])
    queue.end(2)
    clock.render(10)
    expected = np.concatenate([marked(1, 25), marked(1, 5), marked(2, 30), marked(2, 7)])
    np.testing.assert_array_equal(clock.played(), expected)


def test_render_zero_fills_and_counts_underflow_only_while_starved() -> None:
    queue, _ = make_queue()
    clock = Clock(queue)
    assert not clock.render(5).any()  # idle: silence, no underflow
    queue.start(1, None)
    clock.render(3)  # started but no audio yet: a gap, not an underflow
    queue.feed(1, marked(1, 15))
    clock.render(1)
    assert queue.underflows == 0
    clock.render(3)  # 5 samples left, then starved for two more blocks: one episode
    assert queue.underflows == 1
    queue.feed(1, marked(1, 20))
    clock.render(1)
    queue.end(1)
    queue.start(2, None)
    clock.render(5)  # 1 ended, 2 has no audio yet: not starved
    assert queue.underflows == 1


def test_events_started_and_drained_carry_dac_times() -> None:
    queue, _ = make_queue()
    clock = Clock(queue, block=10, lead=0.05)
    timeline = Timeline()
    queue.start(7, timeline)
    clock.render(2)  # 20 ms of idle
    queue.feed(7, marked(7, 35))
    queue.end(7)
    first_handed = clock.now
    clock.render(4)  # 35 samples: the last one in the 4th block
    events = queue.poll(clock.now)
    assert events == [PlaybackStarted(7, first_handed, first_handed + 0.05)]
    drain_at = first_handed + 0.05 + 0.035
    assert queue.poll(drain_at - 0.001) == []
    assert queue.poll(drain_at + 1e-9) == [
        PlaybackDrained(7, pytest.approx(drain_at)),
        PlaybackFinished(7, timeline),
    ]
    assert timeline.first_sample_to_device == first_handed
    assert timeline.last_sample_drained == pytest.approx(drain_at)
    assert queue.finished_at() == pytest.approx(drain_at)


def test_end_after_everything_was_played_still_drains_at_the_last_sample() -> None:
    queue, _ = make_queue()
    clock = Clock(queue, block=10, lead=0.05)
    queue.start(1, None)
    queue.feed(1, marked(1, 10))
    t0 = clock.now
    clock.render(3)  # starved after the first block
    queue.end(1)
    events = queue.poll(t0 + 1)
    assert [type(e) for e in events] == [PlaybackStarted, PlaybackDrained, PlaybackFinished]
    assert events[1] == PlaybackDrained(1, pytest.approx(t0 + 0.05 + 0.010))


def test_utterance_without_audio_is_only_finished_and_does_not_block() -> None:
    queue, _ = make_queue()
    clock = Clock(queue)
    queue.start(1, None)
    queue.start(2, None)
    queue.feed(2, marked(2, 10))
    assert queue.end(1) == [PlaybackFinished(1, None)]  # no audio at all
    queue.end(2)
    clock.render(2)
    events = queue.poll(clock.now + 1)
    assert [(type(e), e.utt_id) for e in events] == [
        (PlaybackStarted, 2),
        (PlaybackDrained, 2),
        (PlaybackFinished, 2),
    ]
    np.testing.assert_array_equal(clock.played(), marked(2, 10))


def test_backlog_skips_the_oldest_waiting_utterance() -> None:
    queue, counters = make_queue(backlog_s=1.0)  # 1000 samples
    clock = Clock(queue)
    for utt in (1, 2, 3):
        queue.start(utt, None)
    queue.feed(1, marked(1, 600))
    queue.end(1)
    clock.render(10)  # 1 is playing: 500 left
    queue.feed(2, marked(2, 300))
    queue.end(2)
    assert queue.feed(3, marked(3, 150)) == []  # 500 + 300 + 150 fits
    events = queue.feed(3, marked(3, 100))  # 1050 would not: 2 (waiting) goes
    assert events == [PlaybackSkipped(2, 0.3, "backlog"), PlaybackFinished(2, None)]
    queue.end(3)
    clock.render(100)
    expected = np.concatenate([marked(1, 600), marked(3, 150), marked(3, 100)])
    np.testing.assert_array_equal(clock.played(), expected)
    assert counters.get("playback_skipped_utterances") == 1
    assert counters.get("playback_skipped_seconds") == pytest.approx(0.3)


def test_backlog_skips_a_middle_utterance_and_keeps_the_younger_ones() -> None:
    queue, _ = make_queue(backlog_s=1.0)
    clock = Clock(queue)
    for utt in (1, 2, 3, 4):
        queue.start(utt, None)
    queue.feed(1, marked(1, 400))
    queue.end(1)
    clock.render(1)
    queue.feed(2, marked(2, 200))
    queue.end(2)
    queue.feed(3, marked(3, 300))
    queue.end(3)
    events = queue.feed(4, marked(4, 200))  # 390 + 200 + 300 + 200 > 1000: skip 2
    assert [e.utt_id for e in events if isinstance(e, PlaybackSkipped)] == [2]
    queue.end(4)
    clock.render(200)
    expected = np.concatenate([marked(1, 400), marked(3, 300), marked(4, 200)])
    np.testing.assert_array_equal(clock.played(), expected)


def test_backlog_skips_the_rest_of_the_playing_one_when_nothing_else_waits() -> None:
    queue, counters = make_queue(backlog_s=1.0)
    clock = Clock(queue)
    queue.start(1, None)
    queue.feed(1, marked(1, 900))
    clock.render(10)  # 100 played, 800 left
    events = queue.feed(1, marked(1, 400))  # 1200 > 1000: the playing one itself
    assert [type(e) for e in events] == [PlaybackStarted, PlaybackSkipped]
    assert events[1] == PlaybackSkipped(1, pytest.approx(0.8), "backlog")
    assert queue.feed(1, marked(1, 50)) == []  # dropped: it was skipped
    assert queue.end(1) == [PlaybackFinished(1, None)]  # skipped while open: done at its end
    queue.start(2, None)
    queue.feed(2, marked(2, 20))
    queue.end(2)
    clock.render(20)
    np.testing.assert_array_equal(clock.played(), np.concatenate([marked(1, 100), marked(2, 20)]))
    assert counters.get("playback_skipped_seconds") == pytest.approx(0.8 + 0.4 + 0.05)


Op = tuple[str, int, int]  # (what, utterance, samples or blocks)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["start", "feed", "end", "render", "skip", "rate"]),
            st.integers(1, 6),
            st.integers(0, 400),
        ),
        max_size=60,
    )
)
def test_every_started_utterance_finishes_exactly_once_and_last(ops: list[Op]) -> None:
    """Whatever happens (backlog skips, shutdown skips, a device at another rate, empty
    utterances), each started utterance gets one PlaybackFinished once it is ended and
    playback is done with it, and no event of it follows."""
    queue, _ = make_queue(backlog_s=1.0)
    clock = Clock(queue)
    events: list[PlaybackEvent] = []
    started: set[int] = set()
    ended: set[int] = set()
    for what, utt, n in ops:
        match what:
            case "start" if utt not in started:
                started.add(utt)
                events += queue.start(utt, None)
            case "feed" if utt in started - ended and n:
                events += queue.feed(utt, marked(utt, n))
            case "end" if utt in started - ended:
                ended.add(utt)
                events += queue.end(utt)
            case "render":
                clock.render(1 + n // 40)
                events += queue.poll(clock.now)
            case "skip":
                events += queue.skip_waiting("shutdown")
            case "rate":
                events += queue.set_rate(RATE if n % 2 else RATE * 2)
    for utt in sorted(started - ended):
        events += queue.end(utt)
    clock.render(2000 // clock.block + 10)
    events += queue.poll(clock.now + 100)
    finished = [e.utt_id for e in events if isinstance(e, PlaybackFinished)]
    assert sorted(finished) == sorted(started)
    for utt in started:
        mine = [e for e in events if e.utt_id == utt]
        assert isinstance(mine[-1], PlaybackFinished), mine
    assert not queue.busy()


def test_audible_until_covers_handed_and_queued_audio() -> None:
    queue, _ = make_queue()
    clock = Clock(queue, block=10, lead=0.05)
    assert queue.audible_until(clock.now, 0.05) == 0.0
    queue.start(1, None)
    queue.feed(1, marked(1, 200))
    assert queue.audible_until(clock.now, 0.05) == pytest.approx(clock.now + 0.05 + 0.2)
    t0 = clock.now
    clock.render(5)  # 50 handed; 150 queued
    assert queue.audible_until(clock.now, 0.05) == pytest.approx(t0 + 0.05 + 0.2)
    queue.end(1)
    clock.render(15)
    assert queue.audible_until(clock.now + 5, 0.05) == pytest.approx(t0 + 0.05 + 0.2)


def test_skip_waiting_keeps_only_the_playing_one() -> None:
    queue, _ = make_queue()
    clock = Clock(queue)
    for utt in (1, 2, 3):
        queue.start(utt, None)
    queue.feed(1, marked(1, 50))
    queue.end(1)
    clock.render(1)
    queue.feed(2, marked(2, 50))
    events = queue.skip_waiting("shutdown")
    assert [(e.utt_id, e.reason) for e in events if isinstance(e, PlaybackSkipped)] == [
        (2, "shutdown"),
        (3, "shutdown"),
    ]
    clock.render(10)
    np.testing.assert_array_equal(clock.played(), marked(1, 50))


def test_volume_curve() -> None:
    assert volume_gain(100, False) == 1.0
    assert volume_gain(50, False) == 0.125
    assert 20 * math.log10(volume_gain(50, False)) == pytest.approx(-18.06, abs=0.01)
    assert volume_gain(0, False) == 0.0
    assert volume_gain(100, True) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 300), min_size=1, max_size=5),
    chunk=st.integers(1, 97),
    block=st.integers(1, 64),
    order=st.randoms(use_true_random=False),
)
def test_any_feeding_pattern_plays_each_sample_once_in_order(
    lengths: list[int], chunk: int, block: int, order: Any
) -> None:
    queue, _ = make_queue(backlog_s=10.0)
    clock = Clock(queue, block=block)
    audio = {utt: marked(utt, n) for utt, n in enumerate(lengths, start=1)}
    offsets = dict.fromkeys(audio, 0)
    for utt in audio:
        queue.start(utt, None)
    open_utts = list(audio)
    while open_utts:
        utt = order.choice(open_utts)
        pcm = audio[utt][offsets[utt] : offsets[utt] + chunk]
        if len(pcm):
            queue.feed(utt, pcm)
            offsets[utt] += len(pcm)
        else:
            queue.end(utt)
            open_utts.remove(utt)
        if order.random() < 0.3:
            clock.render(1)
    clock.render(sum(lengths) // block + 2)
    np.testing.assert_array_equal(clock.played(), np.concatenate(list(audio.values())))
    queue.poll(clock.now + 1)
    assert queue.finished_at() is not None


# -- the Playback callback, without a device ---------------------------------------------


def fake_callback(playback: Playback, frames: int, channels: int, now: float) -> Pcm:
    out = np.full((frames, channels), 7, dtype=np.int16)
    info = SimpleNamespace(currentTime=now, outputBufferDacTime=now + 0.04)
    playback._output._callback(out, frames, info, SimpleNamespace(output_underflow=False))
    return out


def test_callback_applies_gain_to_every_channel_and_mute_silences() -> None:
    playback = Playback(None, Counters())
    playback.start_utterance(1)
    playback.feed(1, np.full(300, 10_000, dtype=np.int16))
    out = fake_callback(playback, 100, 2, 1.0)
    assert (out == 10_000).all()
    playback.set_volume(50, False)
    out = fake_callback(playback, 100, 2, 1.1)
    assert (out == 1250).all()
    playback.set_volume(100, True)
    assert not fake_callback(playback, 100, 2, 1.2).any()
    assert playback.latency == pytest.approx(0.04)


def test_callback_never_raises_and_counts_errors() -> None:
    counters = Counters()
    playback = Playback(None, counters)
    out = np.full((10, 1), 7, dtype=np.int16)
    playback._output._callback(out, 10, None, None)  # a broken time_info: counted, silence
    assert not out.any()
    playback._tick()
    assert counters.get("playback_callback_errors") == 1


def test_resamples_on_the_feeding_side_when_the_device_runs_at_48k() -> None:
    playback = Playback(None, Counters())
    playback._set_rate(48_000)
    playback.start_utterance(1)
    t = np.arange(OUTPUT_RATE // 2) / OUTPUT_RATE
    pcm = (np.sin(2 * np.pi * 1000 * t) * 10_000).astype(np.int16)
    for offset in range(0, len(pcm), 1237):
        playback.feed(1, pcm[offset : offset + 1237])
    playback.end_utterance(1)
    assert playback.backlog_s() == pytest.approx(0.5, abs=0.001)
    out = np.concatenate([fake_callback(playback, 480, 1, 1.0)[:, 0] for _ in range(49)])
    assert playback.backlog_s() == pytest.approx(0.01, abs=0.0001)  # 24000 samples in all
    spectrum = np.abs(np.fft.rfft(out[2000:20000]))
    assert np.argmax(spectrum) * 48_000 / 18_000 == pytest.approx(1000, abs=5)


# ---------------------------------------------------------------------------------------
# Keeping pace: speech that waits plays faster, its pitch kept
# ---------------------------------------------------------------------------------------


def tone24k(freq: float, seconds: float, amp: float = 0.3) -> Pcm:
    t = np.arange(round(seconds * OUTPUT_RATE)) / OUTPUT_RATE
    return np.round(np.sin(2 * np.pi * freq * t) * amp * 32767).astype(np.int16)


def dominant_hz(pcm: Pcm) -> float:
    """The strongest frequency of the middle of `pcm` (0.125 Hz bins)."""
    middle = pcm[len(pcm) // 8 : len(pcm) - len(pcm) // 8].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle)), n=OUTPUT_RATE * 8))
    return float(np.argmax(spectrum)) / 8


def paced(pace: Pace, source: Pcm, wait_s: float, chunk: int = 2400) -> Pcm:
    pieces = [pace.feed(source[i : i + chunk], wait_s) for i in range(0, len(source), chunk)]
    return np.concatenate([*pieces, pace.finish()])


@pytest.mark.parametrize("freq", [150, 300, 440, 1000])
def test_pace_at_its_full_rate_keeps_the_pitch_and_loses_no_sample(freq: int) -> None:
    source = tone24k(freq, 3.0)
    pace = Pace(OUTPUT_RATE, 1.4, rate=1.4)
    out = paced(pace, source, wait_s=10.0)
    assert pace.rate == 1.4 and pace.stretched_s == pytest.approx(3.0)
    assert abs(len(out) - len(source) / 1.4) <= OUTPUT_RATE // 100  # within a 10 ms block
    assert dominant_hz(out) == pytest.approx(freq, abs=1)
    # no click where pieces join: no step steeper than a sine of the output's level
    steepest = np.abs(out.astype(np.int32)).max() * 2 * np.pi * freq / OUTPUT_RATE
    assert np.abs(np.diff(out.astype(np.int32))).max() <= 1.05 * steepest


def test_pace_plays_every_part_of_the_speech_in_order_while_the_rate_moves() -> None:
    """Eight 0.4 s tones, the last at the very end, fed while the wait rises and falls:
    each is heard, in order, for its length over its rate, and nothing after the last."""
    freqs = [300 + 100 * i for i in range(8)]
    pace = Pace(OUTPUT_RATE, 1.4)
    waits = [0.0, 3.0, 6.0, 6.0, 6.0, 2.0, 0.0, 0.0]
    out: list[Pcm] = []
    lengths = []
    for freq, wait in zip(freqs, waits, strict=True):
        before = pace.rate
        out += [pace.feed(piece, wait) for piece in np.array_split(tone24k(freq, 0.4), 4)]
        lengths.append(0.4 / ((before + pace.rate) / 2))  # the rate eases linearly
    out.append(pace.finish())
    played = np.concatenate(out)
    assert max(lengths) > min(lengths) + 0.05  # it did change pace
    assert len(played) / OUTPUT_RATE == pytest.approx(sum(lengths), abs=0.02)
    at = 0.0
    for freq, length in zip(freqs, lengths, strict=True):
        heard = played[round((at + 0.05) * OUTPUT_RATE) : round((at + length - 0.05) * OUTPUT_RATE)]
        assert dominant_hz(heard) == pytest.approx(freq, abs=4), (freq, at)
        at += length


def test_pace_leaves_audio_untouched_while_little_waits() -> None:
    pace = Pace(OUTPUT_RATE, 1.4)
    chunk = tone24k(500, 0.1)
    for _ in range(5):
        np.testing.assert_array_equal(pace.feed(chunk, WAITING.calm_s), chunk)
    assert len(pace.finish()) == 0
    assert pace.rate == 1.0 and pace.stretched_s == 0.0


def test_the_rate_rises_smoothly_with_the_wait_and_eases_in_per_second_of_speech() -> None:
    for curve in (WAITING, BEHIND):
        waits = np.linspace(0.0, curve.full_s + 1.0, 200)
        rates = [target_rate(w, 1.4, curve) for w in waits]
        assert rates[0] == 1.0 and target_rate(curve.calm_s, 1.4, curve) == 1.0
        assert target_rate(curve.full_s, 1.4, curve) == pytest.approx(1.4)
        assert rates[-1] == pytest.approx(1.4) and (np.diff(rates) >= 0).all()
    pace = Pace(OUTPUT_RATE, 1.4)
    seen = [1.0]
    for _ in range(40):
        pace.feed(tone24k(500, 0.1), 10.0)
        seen.append(pace.rate)
    assert np.diff(seen).max() <= SLEW_PER_S * 0.1 + 1e-9  # never a jump
    assert seen[-1] == pytest.approx(1.4)


def steady_meeting(max_rate: float) -> tuple[list[float], list[PlaybackEvent], Playback]:
    """Every 2.0 s a 2.4 s translation arrives (streamed at 10x real time), 16 times;
    the callback renders 10 ms blocks on an injected clock. Returns the backlog seen
    as each translation arrives, the events and the stage."""
    events: list[PlaybackEvent] = []
    now = 0.0
    playback = Playback(
        None, Counters(), max_rate=max_rate, on_event=events.append, clock=lambda: now
    )
    backlog: list[float] = []
    for utt in range(1, 17):
        backlog.append(playback.backlog_s())
        playback.start_utterance(utt)
        source = tone24k(300 + 50 * utt, 2.4)
        for block in range(200):  # 2.0 s of callbacks; the audio arrives in the first 0.24
            if block < 24:
                playback.feed(utt, source[block * 2400 : (block + 1) * 2400])
            if block == 24:
                playback.end_utterance(utt)
            fake_callback(playback, 240, 1, now)
            playback._emit(playback._queue.poll(now))
            now += 0.01
    while playback._queue.busy():
        fake_callback(playback, 240, 1, now)
        playback._emit(playback._queue.poll(now))
        now += 0.01
    return backlog, events, playback


def test_speech_that_waits_plays_faster_so_the_backlog_drains_instead_of_growing() -> None:
    grown, _, _ = steady_meeting(max_rate=1.0)  # as spoken: 0.4 s more behind every turn
    assert grown[-1] > 5.0 and grown[-1] > grown[len(grown) // 2] + 2.0
    backlog, events, playback = steady_meeting(max_rate=1.4)
    assert max(backlog[len(backlog) // 2 :]) < 3.0  # bounded: it keeps pace
    assert backlog[-1] < grown[-1] - 3.0
    drained = [e.utt_id for e in events if isinstance(e, PlaybackDrained)]
    assert drained == list(range(1, 17))  # every utterance played to its end, in order
    assert not [e for e in events if isinstance(e, PlaybackSkipped)]
    assert playback._counters.get("playback_stretched_seconds") > 0


def test_the_status_rate_is_the_rate_of_what_waits() -> None:
    playback = Playback(None, Counters())
    assert playback.pace_rate == 1.0
    playback.start_utterance(1)
    playback.feed(1, tone24k(500, 8.0))  # 8 s ahead of utterance 2
    playback.end_utterance(1)
    playback.start_utterance(2)
    for _ in range(10):
        playback.feed(2, tone24k(700, 0.5))
    assert playback.pace_rate > 1.0
    playback.end_utterance(2)
    while playback._queue.busy():
        fake_callback(playback, 2400, 1, 1.0)
        playback._emit(playback._queue.poll(1e9))
    assert playback.pace_rate == 1.0


@pytest.mark.parametrize("more_coming", [False, True])
def test_a_long_translation_that_arrives_at_once_hurries_only_when_more_is_coming(
    more_coming: bool,
) -> None:
    """Its own audio arriving faster than it plays does not make a translation late,
    unless more is on its way (someone speaks, another translation is in the pipeline):
    that will wait behind it."""
    counters = Counters()
    playback = Playback(None, counters, more_coming=lambda: more_coming)
    playback.start_utterance(1)
    source = tone24k(500, 12.0)
    for offset in range(0, len(source), 2400):
        playback.feed(1, source[offset : offset + 2400])
    playback.end_utterance(1)
    stretched = counters.get("playback_stretched_seconds")
    if more_coming:
        assert playback.backlog_s() < 11.0 and stretched > 0
    else:
        assert playback.backlog_s() == pytest.approx(12.0) and stretched == 0


@pytest.mark.parametrize("more_coming", [False, True])
def test_with_more_coming_half_a_second_queued_already_plays_at_the_full_rate(
    more_coming: bool,
) -> None:
    """Another translation on its way waits for everything queued: behind half a second,
    a translation plays at the full rate (eased in); with nothing else coming, half a
    second ahead is not worth hurrying."""
    counters = Counters()
    playback = Playback(None, counters, more_coming=lambda: more_coming)
    playback.start_utterance(1)
    playback.feed(1, tone24k(400, 0.5))
    playback.end_utterance(1)
    playback.start_utterance(2)
    source = tone24k(600, 3.0)
    for offset in range(0, len(source), 2400):
        playback.feed(2, source[offset : offset + 2400])
    if more_coming:
        assert playback.pace_rate == pytest.approx(1.4)
        easing = 0.4 / SLEW_PER_S  # seconds of speech from 1.0 to 1.4
        expected = 0.5 + easing / 1.2 + (3.0 - easing) / 1.4
        assert playback.backlog_s() == pytest.approx(expected, abs=0.05)
    else:
        assert playback.pace_rate == 1.0 and playback.backlog_s() == pytest.approx(3.5)
    playback.end_utterance(2)


# ---------------------------------------------------------------------------------------
# On the rig: a real PulseAudio speaker, recorded from spk.monitor
# ---------------------------------------------------------------------------------------

needs_pulseaudio = pytest.mark.skipif(
    shutil.which("pulseaudio") is None, reason="pulseaudio is not installed"
)
REC_RATE = 48_000
WINDOW = 480  # 10 ms analysis windows
HOP = 240
DRIVER = ROOT / "tests" / "drive_playback.py"


class Recorder:
    """parecord of spk.monitor into a pipe; every chunk is timestamped on arrival, so a
    sample index maps to monotonic time (late by at most the record latency)."""

    def __init__(self, env: dict[str, str]) -> None:
        argv = ["parecord", "--raw", "-d", "spk.monitor", f"--rate={REC_RATE}",
                "--channels=1", "--format=s16le", "--latency-msec=10"]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
        )
        self.chunks: list[bytes] = []
        self.anchor = math.inf  # monotonic time of sample 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        total = 0
        while chunk := os.read(fd, 4096):
            now = time.monotonic()
            self.chunks.append(chunk)
            total += len(chunk)
            self.anchor = min(self.anchor, now - total / 2 / REC_RATE)

    def wait_started(self) -> None:
        deadline = time.monotonic() + 3
        while not self.chunks and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> Pcm:
        self.proc.terminate()
        self.proc.wait(timeout=5)
        self.thread.join(timeout=5)
        data = b"".join(self.chunks)
        return np.frombuffer(data[: len(data) // 2 * 2], dtype=np.int16)

    def time_of(self, index: float) -> float:
        return self.anchor + index / REC_RATE


@dataclass
class Run:
    freq: int
    start: float  # monotonic
    end: float
    rms: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class Result:
    lines: list[dict[str, Any]]
    rec: Pcm
    recorder: Recorder

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["ev"] == kind]

    def one(self, kind: str, utt: int) -> dict[str, Any]:
        (line,) = [e for e in self.events(kind) if e.get("utt") == utt]
        return line

    @property
    def counters(self) -> dict[str, float]:
        counters: dict[str, float] = self.events("done")[0]["counters"]
        return counters

    def runs(self, freqs: list[int]) -> list[Run]:
        return tone_runs(self.rec, freqs, self.recorder)


def joined(runs: list[Run], device_underflows: int) -> list[Run]:
    """`runs` with a tone's runs that a gap of at most 0.2 s splits joined, when the
    device reported underflows (a loaded machine ran its callback late; counted): the
    gap is the device's, the audio around it is whole. A joined run lasts as long as
    its parts sounded (its end moves back by the gaps)."""
    out: list[Run] = []
    for run in runs:
        last = out[-1] if out else None
        if device_underflows and last and run.freq == last.freq and run.start - last.end <= 0.2:
            last.end += run.duration
        else:
            out.append(run)
    return out


def tone_runs(rec: Pcm, freqs: list[int], recorder: Recorder) -> list[Run]:
    """Contiguous stretches where one of `freqs` (multiples of 100 Hz) dominates."""
    count = max(0, (len(rec) - WINDOW) // HOP + 1)
    frames = np.lib.stride_tricks.sliding_window_view(rec.astype(np.float64), WINDOW)[::HOP]
    spectra = np.abs(np.fft.rfft(frames[:count] * np.hanning(WINDOW), axis=1))
    bins = [f * WINDOW // REC_RATE for f in freqs]
    strength = spectra[:, bins]
    labels = np.where(strength.max(axis=1) > 2e4, np.argmax(strength, axis=1), -1)
    runs: list[Run] = []
    index = 0
    while index < count:
        stop = index
        while stop < count and labels[stop] == labels[index]:
            stop += 1
        if labels[index] >= 0 and stop - index >= 3:
            first, last = index * HOP + WINDOW // 2, stop * HOP + WINDOW // 2
            middle = rec[first + 480 : max(first + 960, last - 480)].astype(np.float64)
            rms = float(np.sqrt(np.mean(middle**2)))
            start, end = recorder.time_of(first), recorder.time_of(last)
            runs.append(Run(freqs[labels[index]], start, end, rms))
        index = stop
    return runs


@pytest.fixture(scope="module")
def rig() -> Iterator[AudioRig]:
    if shutil.which("pulseaudio") is None:
        pytest.skip("pulseaudio is not installed")
    with AudioRig() as running:
        yield running


def rig_env(rig: AudioRig) -> dict[str, str]:
    return {**os.environ, **rig.env}


def play(rig: AudioRig, scenario: dict[str, Any], tmp_path: Path) -> Result:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps({"device": rig.speaker_device, **scenario}))
    env = rig_env(rig)
    recorder = Recorder(env)
    recorder.wait_started()
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    time.sleep(0.1)
    rec = recorder.stop()
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return Result(lines, rec, recorder)


def feed(utt: int, freq: int, seconds: float, chunk: int, interval: float = 0.01) -> dict[str, Any]:
    return {"op": "feed", "utt": utt, "freq": freq, "seconds": seconds, "chunk": chunk,
            "interval": interval}  # fmt: skip


@pytest.mark.rig
@needs_pulseaudio
def test_utterances_play_in_order_with_their_durations_and_drain_after_the_audio(
    rig: AudioRig, tmp_path: Path
) -> None:
    plan = {500: 0.7, 800: 1.1, 1100: 0.9}
    scenario = {
        "steps": [
            {"op": "probe", "every": 0.05},
            {"op": "start", "utt": 1},
            {"op": "start", "utt": 2},
            {"op": "start", "utt": 3},
            {"op": "spawn", "steps": [feed(2, 800, 1.1, 977)]},  # arrives before 1 ends
            feed(1, 500, 0.7, 1237),
            feed(3, 1100, 0.9, 1511),
            {"op": "join"},
        ]
    }
    result = play(rig, scenario, tmp_path)
    runs = result.runs(list(plan))
    assert [run.freq for run in runs] == list(plan), runs  # in order, nothing twice
    for run in runs:
        assert run.duration == pytest.approx(plan[run.freq], abs=0.05), run
    assert result.events("done")[0]["drained"] is True
    # Fed 5x faster than real time, nothing should starve; one stall of the driver on a
    # loaded 2-core machine can still starve a first 51 ms chunk (a true, counted
    # underflow). The recording above proves no audio was lost or reordered.
    assert result.counters.get("output_underflows", 0) <= 1
    assert result.counters.get("playback_callback_errors", 0) == 0
    assert [e["utt"] for e in result.events("started")] == [1, 2, 3]
    assert [e["utt"] for e in result.events("drained")] == [1, 2, 3]
    for utt, run in enumerate(runs, start=1):
        started, drained = result.one("started", utt), result.one("drained", utt)
        assert started["audible_at"] == pytest.approx(run.start, abs=0.03)
        assert drained["t"] == pytest.approx(run.end, abs=0.03)
        assert drained["emitted"] >= run.end - 0.03  # after the audio was in the recording
    # audible_until: from the end of feeding to the end of the sound it covers the sound
    last_fed = max(e["t"] for e in result.events("fed"))
    probes = [p for p in result.events("probe") if last_fed <= p["now"] <= runs[-1].end]
    assert len(probes) >= 10
    for probe in probes:
        assert probe["until"] >= runs[-1].end - 0.03, probe
        assert probe["until"] <= runs[-1].end + 0.05, probe
        assert probe["state"] == "speaking"
    after = [p for p in result.events("probe") if p["now"] > runs[-1].end + 0.05]
    assert after and all(p["until"] < p["now"] and p["state"] == "idle" for p in after)


@pytest.mark.rig
@needs_pulseaudio
def test_speech_that_waits_plays_faster_on_the_speaker_at_its_pitch(
    rig: AudioRig, tmp_path: Path
) -> None:
    """The second translation waits behind 3 s of the first: it plays faster (eased in),
    whole, at its own frequency; the first plays as spoken."""
    scenario = {
        "max_rate": 1.4,
        "steps": [
            {"op": "start", "utt": 1},
            {"op": "start", "utt": 2},
            feed(1, 500, 3.0, 2400, 0.002),
            feed(2, 800, 2.0, 2400, 0.002),
        ],
    }
    result = play(rig, scenario, tmp_path)
    underflows = result.counters.get("playback_device_underflows", 0)
    runs = joined(result.runs([500, 800]), underflows)
    assert len(runs) == 2, (runs, result.counters)  # each whole: no gap, nothing else
    first, second = runs
    assert (first.freq, second.freq) == (500, 800)
    assert first.duration == pytest.approx(3.0, abs=0.05)
    assert 2.0 / 1.4 - 0.05 <= second.duration <= 1.9, second
    assert result.counters.get("playback_stretched_seconds", 0) > 0
    assert [e["utt"] for e in result.events("drained")] == [1, 2]
    assert not result.events("skipped")


@pytest.mark.rig
@needs_pulseaudio
def test_a_quiet_room_stops_the_output_stream_and_the_next_utterance_plays_in_full(
    rig: AudioRig, tmp_path: Path
) -> None:
    scenario = {
        "steps": [
            {"op": "start", "utt": 1},
            feed(1, 500, 0.5, 1237),
            {"op": "wait_drained", "utt": 1},
            {"op": "stream"},
            {"op": "sleep", "s": IDLE_STOP_S + TICK_STOPPED_S + 0.5},
            {"op": "stream"},
            {"op": "start", "utt": 2},
            {"op": "stream"},
            feed(2, 800, 0.5, 1237),
        ]
    }
    result = play(rig, scenario, tmp_path)
    assert [e["running"] for e in result.events("stream")] == [True, False, True]
    assert all(e["state"] != "unavailable" for e in result.events("stream"))
    runs = result.runs([500, 800])
    assert [run.freq for run in runs] == [500, 800], runs
    for run in runs:
        assert run.duration == pytest.approx(0.5, abs=0.05), run
    started = result.one("started", 2)
    assert started["audible_at"] == pytest.approx(runs[1].start, abs=0.03)
    assert result.one("drained", 2)["t"] == pytest.approx(runs[1].end, abs=0.03)
    assert result.counters.get("playback_reopens", 0) == 0  # stopping is not losing it


@pytest.mark.rig
@needs_pulseaudio
def test_the_profiles_output_format_is_opened_when_the_device_takes_it(
    rig: AudioRig, tmp_path: Path
) -> None:
    """A profile's [output] rate and channels come first (a device that wants stereo at
    48 kHz); the 24 kHz speech is resampled to it and still plays."""
    steps = [{"op": "start", "utt": 1}, feed(1, 700, 0.5, 1237), {"op": "wait_drained", "utt": 1}]
    result = play(rig, {"format": {"rate": 48000, "channels": 2}, "steps": steps}, tmp_path)
    ready = result.events("ready")[0]
    assert (ready["rate"], ready["channels"]) == (48000, 2)
    runs = result.runs([700])  # one run; a loaded machine may split it with an underflow
    assert len(runs) <= 1 + result.counters.get("output_underflows", 0), runs
    assert sum(run.duration for run in runs) == pytest.approx(0.5, abs=0.05), runs
    default = play(rig, {"steps": steps}, tmp_path).events("ready")[0]
    assert (default["rate"], default["channels"]) == (OUTPUT_RATE, 1)


@pytest.mark.rig
@needs_pulseaudio
def test_volume_50_is_18_db_below_100_and_mute_is_silent(rig: AudioRig, tmp_path: Path) -> None:
    scenario = {
        "steps": [
            {"op": "start", "utt": 1},
            feed(1, 600, 0.6, 1237),
            {"op": "wait_drained", "utt": 1},
            {"op": "volume", "volume": 50},
            {"op": "start", "utt": 2},
            feed(2, 900, 0.6, 1237),
            {"op": "wait_drained", "utt": 2},
            {"op": "volume", "volume": 100, "mute": True},
            {"op": "start", "utt": 3},
            feed(3, 1200, 0.6, 1237),
            {"op": "wait_drained", "utt": 3},
        ]
    }
    result = play(rig, scenario, tmp_path)
    runs = result.runs([600, 900, 1200])
    assert [run.freq for run in runs] == [600, 900], runs
    ratio_db = 20 * math.log10(runs[1].rms / runs[0].rms)
    assert ratio_db == pytest.approx(-18.06, abs=0.3)
    start, end = result.one("started", 3)["audible_at"], result.one("drained", 3)["t"]
    first = round((start - result.recorder.anchor) * REC_RATE)
    last = round((end - result.recorder.anchor) * REC_RATE)
    assert last - first > 0.5 * REC_RATE
    assert not result.rec[first:last].any()  # muted: digital silence


@pytest.mark.rig
@needs_pulseaudio
def test_backlog_cap_skips_the_oldest_waiting_utterance(rig: AudioRig, tmp_path: Path) -> None:
    scenario = {
        "max_backlog_s": 1.5,
        "steps": [
            {"op": "start", "utt": 1},
            {"op": "start", "utt": 2},
            {"op": "start", "utt": 3},
            feed(1, 500, 1.0, 2411, 0.005),
            feed(2, 800, 1.0, 2411, 0.005),  # 1 still has ~0.9 s: 2 overflows the cap
            {"op": "sleep", "s": 0.5},
            feed(3, 1100, 0.8, 2411, 0.005),
        ],
    }
    result = play(rig, scenario, tmp_path)
    runs = result.runs([500, 800, 1100])
    assert [run.freq for run in runs] == [500, 1100], runs
    assert [run.duration for run in runs] == [
        pytest.approx(1.0, abs=0.05),
        pytest.approx(0.8, abs=0.05),
    ]
    (skipped,) = result.events("skipped")
    assert skipped["utt"] == 2 and skipped["reason"] == "backlog"
    assert 0.3 < skipped["seconds"] < 1.0
    assert result.counters["playback_skipped_utterances"] == 1
    assert result.counters["playback_skipped_seconds"] == pytest.approx(1.0, abs=0.001)
    assert [e["utt"] for e in result.events("drained")] == [1, 3]


@pytest.mark.rig
@needs_pulseaudio
def test_reopens_after_the_sound_server_dies(tmp_path: Path) -> None:
    rig = AudioRig(tmp_path / "rig")
    rig.start()
    scenario = {
        "device": rig.speaker_device,
        "steps": [
            {"op": "start", "utt": 1},
            feed(1, 500, 0.5, 1237),
            {"op": "wait_drained", "utt": 1},
            {"op": "sleep", "s": 2.5},  # the server dies and comes back meanwhile
            {"op": "start", "utt": 2},
            feed(2, 800, 0.5, 1237),
        ],
    }
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario))
    errors = (tmp_path / "driver.err").open("w")
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER), str(path)],
        env=rig_env(rig),
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
    )
    lines: list[dict[str, Any]] = []
    try:
        assert driver.stdout is not None
        for line in driver.stdout:  # until 1 has drained
            lines.append(json.loads(line))
            if lines[-1]["ev"] == "drained":
                break
        rig.stop()
        time.sleep(0.3)
        rig.start()
        recorder = Recorder(rig_env(rig))
        lines.extend(json.loads(line) for line in driver.stdout)
        driver.wait(timeout=20)
        time.sleep(0.1)
        rec = recorder.stop()
    finally:
        if driver.poll() is None:
            driver.kill()
        errors.close()
        rig.stop()
    assert driver.returncode == 0, (tmp_path / "driver.err").read_text()[-2000:]
    done = next(line for line in lines if line["ev"] == "done")
    assert done["drained"] is True
    assert done["counters"]["playback_reopens"] >= 1
    runs = tone_runs(rec, [500, 800], recorder)
    assert [run.freq for run in runs] == [800]
    assert runs[0].duration == pytest.approx(0.5, abs=0.05)
