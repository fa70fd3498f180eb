"""End to end on the rig: remote configuration changes the running daemon.

The real daemon on the sound rig, the simulator and Mosquitto (scripts/e2e_harness.py);
changes are published with `mosquitto_pub`, a real client. The simulator records each
request it receives (`GET /_sim/stats`: target, source, voice, modalities per clip).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from daemon.control.state import FILE_NAME
from scripts.e2e_harness import CAPTIONS, TARGET_LANG, Harness
from tests.rigutil import module_harness

pytestmark = [pytest.mark.rig, pytest.mark.e2e]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    yield from module_harness(tmp_path_factory, "e2e-control")


@pytest.fixture
def room(harness: Harness) -> Harness:
    """The shared harness, its simulator reset, no room changes kept from another test."""
    harness.reset_simulator()
    (harness.workdir / "state" / FILE_NAME).unlink(missing_ok=True)
    return harness


def test_target_language_changed_over_mqtt_applies_to_the_next_utterance(room: Harness) -> None:
    first = room.compose([("en_sr_english", 0.5)], "before-change", tail_s=1.0)
    second = room.compose([("fr_sr_french", 0.5)], "after-change", tail_s=1.0)
    with room.session() as s:
        room.play(first).wait()
        assert s.wait_finals(1, 10.0), s.daemon.log_tail()

        reply = room.config_set(s, {"target_lang": "de"})
        assert reply["status"] == "ok", reply
        assert reply["config"]["target_lang"] == "de"

        room.play(second).wait()
        assert s.wait_finals(2, 10.0), s.daemon.log_tail()
        finals = s.finals()
        assert s.wait_status(lambda st: st["target_lang"] == "de", 5.0)
    clips = room.sim.stats()["clips"]
    assert [c["target"] for c in clips] == [TARGET_LANG, "de"], clips
    assert clips[1]["voice"] == "Cherry" and "audio" in clips[1]["modalities"]
    assert [c.topic for c in finals] == [CAPTIONS + TARGET_LANG, CAPTIONS + "de"]
    assert finals[1].text.startswith("[de] clip ")
    assert all(c.outcome == "translated" for c in finals)


def test_mute_over_mqtt_silences_the_speech_that_is_playing(room: Harness) -> None:
    scene = room.compose([("de_pv_leopard", 0.5)], "mute", tail_s=1.0)
    with room.session() as s:
        speaker = room.record_speaker("mute-speaker.wav")
        room.play(scene).wait()
        # the simulator answers at once: the final is out while the speech still plays
        assert s.wait_finals(1, 10.0), s.daemon.log_tail()
        reply = room.config_set(s, {"mute": True})
        assert reply["status"] == "ok" and reply["config"]["mute"] is True
        spoken = s.finals()[0].duration_s
        time.sleep(spoken + 1.0)  # past the end the unmuted speech would have had
        tones = speaker.stop_and_detect()
    assert spoken > 4.0
    assert len(tones) == 1, tones
    assert tones[0].duration_s < spoken - 1.5, (tones, spoken)  # cut, not played out
