"""End to end with extra caption languages: `room.caption_langs = ["de", "fr"]`.

The real daemon on the sound rig, the simulator and Mosquitto (scripts/e2e_harness.py).
Every utterance gets exactly one final per language, each language in utterance order on
its own topic, with text traceable to the same clip; a 429 storm sheds de/fr and never
the speech (zh captions translated, every translation played on the speaker).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from daemon.config import AudioSettings
from daemon.simulator.speech import tone_hz
from scripts.broker import retained
from scripts.e2e_harness import BASE, CAPTIONS, TARGET_LANG, Caption, Harness
from tests.rigutil import module_harness

pytestmark = [pytest.mark.rig, pytest.mark.e2e]

EXTRA = ["de", "fr"]
LANGS = [TARGET_LANG, *EXTRA]
SETTINGS = {"ROOM__CAPTION_LANGS": json.dumps(EXTRA), "CAPTIONS__RECENT": "2"}
PARTS = [("en_sr_english", 0.5), ("fr_sr_french", 1.5), ("ko_pv_leopard", 1.5)]
TONE_HZ_TOLERANCE = 10.0
MAX_RATE = AudioSettings().max_playback_rate


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    yield from module_harness(tmp_path_factory, "e2e-langs")


def collapse(values: list[int]) -> list[int]:
    """Consecutive values within the tone tolerance of each other as one."""
    return [v for i, v in enumerate(values) if i == 0 or abs(values[i - 1] - v) > TONE_HZ_TOLERANCE]


def finals_by_lang(finals: list[Caption]) -> dict[str, list[Caption]]:
    return {lang: [c for c in finals if c.topic == CAPTIONS + lang] for lang in LANGS}


def test_one_final_per_language_per_utterance_in_order(harness: Harness) -> None:
    harness.reset_simulator(jitter_ms=300)
    scene = harness.compose(PARTS, "langs", tail_s=0.5)
    count = len(PARTS)
    with harness.session(SETTINGS) as s:
        harness.play(scene).wait()
        assert s.wait_finals(count * len(LANGS), 10.0), s.daemon.log_tail()
        s.wait_status(lambda st: st["counters"]["translated"] >= count, 3.0)
        finals, status, captions = s.finals(), s.status(), s.captions()
        recent = asyncio.run(retained(harness.broker, f"{BASE}/captions/de/recent"))
    by_lang = finals_by_lang(finals)
    digests = [c.digest for c in by_lang[TARGET_LANG]]
    for lang in LANGS:
        got = by_lang[lang]
        assert [c.utterance_id for c in got] == list(range(1, count + 1)), (lang, got)
        assert all(c.outcome == "translated" and c.text.startswith(f"[{lang}] clip ") for c in got)
        assert [c.digest for c in got] == digests  # the same clips, in the same order
        ids = [c.utterance_id for c in captions if c.topic == CAPTIONS + lang]
        assert ids == sorted(ids)  # no partial of k+1 before the final of k
    assert len(finals) == count * len(LANGS)  # exactly one final each
    lanes = status["caption_lanes"]
    assert {lang: lanes[lang]["translated"] for lang in EXTRA} == {"de": count, "fr": count}
    assert status["caption_langs"] == EXTRA
    assert status["service"]["requests_per_minute"] == count * len(LANGS)
    assert status["service"]["requests"] == {lang: count for lang in LANGS}
    assert set(status["usage"]) == set(LANGS)
    assert status["usage"]["de"]["billed_audio_s_output"] == 0  # text only
    assert status["usage"][TARGET_LANG]["billed_audio_s_output"] > 0
    assert recent is not None
    document = json.loads(recent)
    assert [c["utterance_id"] for c in document["captions"]] == [count - 1, count]
    # the clean stop cleared it
    assert asyncio.run(retained(harness.broker, f"{BASE}/captions/de/recent")) is None


def test_a_429_storm_sheds_de_and_fr_never_the_speech(harness: Harness) -> None:
    harness.reset_simulator()
    # The first six requests are refused; the speech's request retries after Retry-After.
    harness.sim.control(faults=["429"] * 6, retry_after=0.5)
    scene = harness.compose(PARTS, "storm", tail_s=0.5)
    count = len(PARTS)
    settings = {**SETTINGS, "API__MAX_ATTEMPTS": "8"}
    with harness.session(settings) as s:
        speaker = harness.record_speaker("storm-speaker.wav")
        harness.play(scene).wait()
        assert s.wait_finals(count * len(LANGS), 15.0), s.daemon.log_tail()
        s.wait_status(lambda st: st["counters"]["translated"] >= count, 3.0)
        # every translation has drained from the speaker (the first waited for the storm)
        assert s.wait_timelines(count, 20.0), s.daemon.log_tail()
        time.sleep(0.3)
        finals, status = s.finals(), s.status()
        tones = speaker.stop_and_detect()
    by_lang = finals_by_lang(finals)
    speech = by_lang[TARGET_LANG]
    assert [(c.utterance_id, c.outcome) for c in speech] == [
        (i, "translated") for i in range(1, count + 1)
    ]
    # Every translation was played, in order. Two neighbours with the same tone (the digest
    # picks one of a few) show as one when they play back to back, as two when the second
    # came after the first had ended: compared with neighbours merged on both sides, the
    # durations below then say that each was played whole.
    assert collapse([round(t.hz) for t in tones]) == pytest.approx(
        collapse([tone_hz(c.digest) for c in speech]), abs=TONE_HZ_TOLERANCE
    )
    # whole, though faster when waiting (up to the fastest rate)
    played, spoken = sum(t.duration_s for t in tones), sum(c.duration_s for c in speech)
    assert spoken / MAX_RATE - 0.1 * count <= played <= spoken + 0.1 * count
    assert status["playback"]["rate"] == 1.0  # nothing waits any more
    for lang in EXTRA:
        got = by_lang[lang]
        assert [c.utterance_id for c in got] == list(range(1, count + 1))  # one final each
        assert got[0].outcome == "dropped" and got[0].reason == "shed", got[0]
        shed = status["caption_lanes"][lang]["dropped"]["shed"]
        assert shed == sum(c.reason == "shed" for c in got) >= 1
    assert status["counters"]["service_errors"]["rate_limited"] >= 3
    assert status["counters"]["failed"] == {}
