"""End to end: `roomtranslate run` on the sound rig, against the simulator and Mosquitto.

Real recordings are played into the rig microphone in real time; the speaker is recorded;
captions and status are read from the broker (scripts/e2e_harness.py). The rig, broker and
simulator are shared by the module; each test runs its own daemon (utterance ids from 1).
The simulator answers a clip with the text `[zh] clip <dur>s #<digest>` and a tone at
tone_hz(digest) lasting the clip, so captions and speaker tones identify each clip.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from daemon.config import AudioSettings
from daemon.simulator.speech import tone_hz
from scripts.broker import retained
from scripts.e2e_harness import (
    AVAILABILITY,
    CAPTIONS,
    TARGET_LANG,
    Caption,
    Harness,
    Scene,
)
from scripts.simproc import wait_for
from scripts.tones import Tone, tones_in_wav
from tests.rigutil import module_harness

pytestmark = [pytest.mark.rig, pytest.mark.e2e]

CONVERSATION = [  # five speakers, five languages, 2–3 s of silence between
    ("en_sr_english", 1.0),
    ("fr_sr_french", 2.0),
    ("ko_pv_leopard", 2.5),
    ("pt_pv_leopard", 3.0),
    ("zh_wenet_aishell", 2.0),
]
DURATION_TOLERANCE_S = 0.6  # pre-roll (0.3 s) + post-roll (0.15 s) + VAD edges
TONE_HZ_TOLERANCE = 10.0
TONE_DURATION_TOLERANCE_S = 0.1
MAX_RATE = AudioSettings().max_playback_rate  # speech that waits plays up to this fast
SLOW_FIRST_TEXT_MS = 4500


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    yield from module_harness(tmp_path_factory, "e2e")


@pytest.fixture
def room(harness: Harness) -> Harness:
    """The shared harness with the simulator fast again (5 ms first text/audio)."""
    harness.reset_simulator()
    return harness


@dataclass(frozen=True)
class Run:
    """What one daemon run of a scene left behind."""

    scene: Scene
    captions: list[Caption]
    timelines: dict[int, dict[str, float]]
    status: dict[str, Any]
    tones: list[Tone]

    @property
    def finals(self) -> list[Caption]:
        return [c for c in self.captions if c.final]


@pytest.fixture(scope="module")
def conversation(harness: Harness) -> Run:
    harness.reset_simulator()
    scene = harness.compose(CONVERSATION, "conversation", tail_s=1.0)
    count = len(scene.truth)
    with harness.session() as s:
        speaker = harness.record_speaker("conversation-speaker.wav")
        harness.play(scene).wait()
        s.wait_finals(count, 10.0)
        s.wait_timelines(count, 10.0)  # logged once the last sample has drained
        s.wait_status(lambda st: st["counters"]["translated"] >= count, 3.0)
        time.sleep(0.3)
        tones = speaker.stop_and_detect()
        return Run(scene, s.captions(), s.daemon.timelines(), s.status(), tones)


def by_utterance(captions: list[Caption], utt_id: int) -> list[Caption]:
    return [c for c in captions if c.utterance_id == utt_id]


# ----------------------------------------------------------------------------- (a)


def test_one_final_per_segment_in_order(conversation: Run) -> None:
    finals = conversation.finals
    truth = conversation.scene.truth
    assert [c.utterance_id for c in finals] == list(range(1, len(truth) + 1))
    assert [c.seq for c in finals] == sorted(c.seq for c in finals)
    for caption, (start, end) in zip(finals, truth, strict=True):
        assert caption.topic == CAPTIONS + TARGET_LANG
        assert caption.outcome == "translated", caption
        assert caption.text.startswith(f"[{TARGET_LANG}] clip "), caption.text
        assert abs(caption.duration_s - (end - start)) <= DURATION_TOLERANCE_S, (
            caption.text,
            end - start,
        )
    assert conversation.status["counters"]["utterances"] == len(truth)


def test_partials_precede_their_final_finals_qos1_never_retained(conversation: Run) -> None:
    captions = conversation.captions
    assert all(not c.retain for c in captions)
    previous_final = -1
    for final in conversation.finals:
        assert final.qos == 1
        events = by_utterance(captions, final.utterance_id)
        partials = [c for c in events if not c.final]
        assert partials, f"no partial for utterance {final.utterance_id}"
        assert all(previous_final < p.index < final.index for p in partials)
        assert all(p.qos == 0 and final.text.startswith(p.text) for p in partials)
        assert [c for c in events if c.final] == [final]
        previous_final = final.index


# ----------------------------------------------------------------------------- (b)


def test_speaker_plays_each_translation_in_order(conversation: Run) -> None:
    """Each translation whole and at its pitch, in order: as long as its clip, or shorter
    down to the fastest rate when it had to wait."""
    finals = conversation.finals
    tones = conversation.tones
    expected = [tone_hz(c.digest) for c in finals]
    assert len(tones) == len(finals), (tones, expected)
    for tone, want, caption in zip(tones, expected, finals, strict=True):
        assert abs(tone.hz - want) <= TONE_HZ_TOLERANCE, (tones, expected)
        shortest = caption.duration_s / MAX_RATE - TONE_DURATION_TOLERANCE_S
        longest = caption.duration_s + TONE_DURATION_TOLERANCE_S
        assert shortest <= tone.duration_s <= longest, (tone, caption.text)
    assert all(a.end_s < b.start_s for a, b in itertools.pairwise(tones))


# ----------------------------------------------------------------------------- (c)


def test_nothing_lost_while_a_slow_translation_is_in_flight(room: Harness) -> None:
    room.reset_simulator(first_text_ms=SLOW_FIRST_TEXT_MS)
    parts = [("fr_sr_french", 0.5), ("en_sr_english", 1.5), ("ko_pv_leopard", 1.5)]
    parts.append(("fr_sr_french", 1.5))
    scene = room.compose(parts, "slow", tail_s=0.5)
    with room.session() as s:
        room.play(scene).wait()
        s.wait_finals(len(parts), SLOW_FIRST_TEXT_MS / 1000 + 8.0)
        s.wait_timelines(len(parts), 8.0)
        s.wait_status(lambda st: st["counters"]["translated"] >= len(parts), 3.0)
        finals, timelines, status = s.finals(), s.daemon.timelines(), s.status()
    assert [c.utterance_id for c in finals] == [1, 2, 3, 4]
    assert all(c.outcome == "translated" for c in finals)
    for caption, duration in zip(finals, scene.durations, strict=True):
        assert abs(caption.duration_s - duration) <= DURATION_TOLERANCE_S
    # the premise: speech ended while the previous translation was still waiting for text
    overlaps = [k for k in (1, 2, 3) if k + 1 in timelines and k in timelines]
    assert any(
        timelines[k + 1]["speech_end_detected"] < timelines[k]["first_text"] for k in overlaps
    ), timelines
    counters = status["counters"]
    assert counters["utterances"] == 4 and counters["translated"] == 4
    assert counters["ring_overruns"] == 0 and counters["ring_overrun_samples"] == 0
    assert counters["dropped"] == {} and counters["failed"] == {}
    assert counters["input_overflows"] == 0


# ----------------------------------------------------------------------------- (d)


def test_finals_spoken_while_the_broker_is_down_arrive_after_it_is_back(room: Harness) -> None:
    parts = [("en_sr_english", 0.5), ("fr_sr_french", 2.0), ("ko_pv_leopard", 2.0)]
    parts.append(("pt_pv_leopard", 2.5))
    scene = room.compose(parts, "outage", tail_s=0.5)
    with room.session(durable_tap=True) as s:
        playing = room.play(scene)
        assert s.wait_finals(1, scene.truth[0][1] + 5.0), s.daemon.log_tail()
        room.broker.kill()
        killed_at = time.monotonic()
        translated_3 = s.wait_log("utterance 3 translated", scene.truth[2][1] + 5.0)
        room.broker.start()
        back_at = time.monotonic()
        playing.wait()
        s.wait_finals(4, 8.0)
        s.wait_timelines(4, 8.0)
        s.wait_status(lambda st: st["counters"]["translated"] >= 4, 3.0)
        finals, timelines, status = s.finals(), s.daemon.timelines(), s.status()
    assert translated_3, "utterance 3 was not translated while the broker was down"
    assert [c.utterance_id for c in finals] == [1, 2, 3, 4]
    assert [c.seq for c in finals] == sorted(c.seq for c in finals)
    assert finals[0].at < killed_at
    for utt_id in (2, 3):  # spoken, cut and translated while the broker was down ...
        assert killed_at < timelines[utt_id]["speech_end_detected"] < back_at
        assert finals[utt_id - 1].at > back_at  # ... and delivered after it came back
    counters = status["counters"]
    assert counters["mqtt"]["disconnects"] >= 1
    assert counters["mqtt"]["outbox_dropped"] == 0
    assert counters["translated"] == 4


# ----------------------------------------------------------------------------- (e)


def test_sigterm_exits_0_and_leaves_offline_retained(room: Harness) -> None:
    room.reset_simulator(first_text_ms=60_000)  # the reply would take a minute
    scene = room.compose([("en_sr_english", 0.5)], "sigterm", tail_s=0.5)
    with room.session() as s:
        room.play(scene).wait()
        assert s.wait_log("utterance 1:", 3.0)  # cut and sent
        assert wait_for(lambda: room.sim.stats()["requests"] == 1, 5.0)  # and in flight
        rc = s.daemon.stop(timeout=10.0)  # SIGKILL after 10 s: the reply is not awaited
        finals, status, availability = s.finals(), s.status(), s.availability()
    assert rc == 0
    assert asyncio.run(retained(room.broker, AVAILABILITY)) == b"offline"  # a fresh subscriber
    assert availability[-1] == b"offline"
    assert status["state"] == "stopping"
    # the translation in flight ends with a final all the same: dropped at shutdown
    assert [(c.utterance_id, c.outcome, c.reason) for c in finals] == [(1, "dropped", "shutdown")]


# ----------------------------------------------------------------------------- (f)


def test_echo_gate_ignores_speech_over_our_own_translation(room: Harness) -> None:
    first = room.compose([("it_pv_leopard", 0.5)], "gate-first", tail_s=0.3)
    over = room.compose([("en_sr_english", 0.0)], "gate-over", tail_s=0.0)
    after = room.compose([("fr_sr_french", 0.0)], "gate-after", tail_s=0.3)
    with room.session({"AUDIO__ECHO_GUARD": "gate"}) as s:
        room.play(first).wait()
        assert s.wait_finals(1, 5.0), s.daemon.log_tail()
        room.play(over).wait()  # while our ~5 s translation plays
        over_ended = time.monotonic()
        assert s.wait_timelines(1, 8.0)  # the translation has drained
        drained = s.daemon.timelines()[1]["last_sample_drained"]  # the same monotonic clock
        assert over_ended < drained, "the speech over it came after our translation"
        time.sleep(0.5)  # past the 0.3 s echo tail
        room.play(after).wait()
        s.wait_finals(2, 5.0)
        time.sleep(1.0)  # a third utterance would be cut by now
        finals, status = s.finals(), s.status()
        requests = room.sim.stats()["requests"]
    assert [c.utterance_id for c in finals] == [1, 2]
    assert abs(finals[1].duration_s - after.durations[0]) <= DURATION_TOLERANCE_S
    assert requests == 2
    assert status["counters"]["echo_gated_frames"] > 0
    assert status["counters"]["utterances"] == 2


def test_harness_detects_tones_and_their_durations(tmp_path: Path) -> None:
    """The tone detector itself, on a synthetic recording (no rig needed)."""
    rate = 48_000
    parts = [(0.5, 0), (1.2, 600), (0.3, 0), (0.8, 650), (0.2, 0), (1.0, 650), (0.4, 0)]
    pcm = np.concatenate(
        [0.1 * np.sin(2 * np.pi * hz * np.arange(round(s * rate)) / rate) for s, hz in parts]
    )
    sf.write(tmp_path / "t.wav", pcm, rate, subtype="PCM_16")
    tones = tones_in_wav(tmp_path / "t.wav")
    assert [round(t.hz) for t in tones] == [600, 650, 650]
    assert [round(t.duration_s, 2) for t in tones] == [1.2, 0.8, 1.0]
