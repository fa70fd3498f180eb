"""EchoGate: frames captured while our speech plays (or within the tail) become silence."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.config import AudioSettings
from daemon.counters import Counters
from daemon.echo import EchoGate, EchoStage, make_echo_stage
from daemon.values import Frame


def frame(start: int) -> Frame:
    return Frame(start, np.full(480, 1234, dtype=np.int16))


def test_gate_zeroes_frames_until_the_tail_has_passed() -> None:
    counters = Counters()
    until = 10.0
    gate = EchoGate(lambda: until, counters, tail_s=0.3)
    cases = [(9.0, True), (10.0, True), (10.29, True), (10.3, False), (11.0, False)]
    for i, (captured_at, gated) in enumerate(cases):
        original = frame(i * 480)
        out = gate.process(original, captured_at)
        assert out.start == original.start and len(out.pcm) == 480
        assert (not out.pcm.any()) is gated
        assert (out is original) is not gated
    assert counters.get("echo_gated_frames") == 3


def test_gate_follows_the_speaker_state_as_it_changes() -> None:
    state = {"until": 0.0}
    gate = EchoGate(lambda: state["until"], Counters(), tail_s=0.2)
    assert gate.process(frame(0), 5.0).pcm.any()  # never spoke: open
    state["until"] = 6.0
    assert not gate.process(frame(480), 5.5).pcm.any()
    assert gate.process(frame(960), 6.25).pcm.any()


def test_off_mode_passes_everything() -> None:
    counters = Counters()
    gate = EchoGate(lambda: 1e12, counters, mode="off")
    original = frame(0)
    assert gate.process(original, 1.0) is original
    assert counters.snapshot() == {}


def test_make_echo_stage_from_settings() -> None:
    stage: EchoStage = make_echo_stage(
        AudioSettings(echo_guard="gate", echo_tail_ms=450), None, lambda: 0.0, Counters()
    )
    assert isinstance(stage, EchoGate)
    assert stage.mode == "gate" and stage.tail_s == pytest.approx(0.45)
    with pytest.raises(ValueError):
        EchoGate(lambda: 0.0, Counters(), tail_s=-1)


def test_pcm_history_keeps_the_newest_samples_by_position() -> None:
    from daemon.echo.history import PcmHistory

    history = PcmHistory(100)
    history.write(0, np.arange(1, 71, dtype=np.int16))
    history.write(90, np.arange(1, 51, dtype=np.int16))  # a 20-sample gap, then wraps
    assert (history.end, history.oldest) == (140, 40)
    got = history.read(30, 120)  # before the kept span, the gap, past the end: silence
    assert not got[:10].any() and list(got[10:40]) == list(range(41, 71))
    assert not got[40:60].any() and list(got[60:110]) == list(range(1, 51))
    assert not got[110:].any()


def test_the_segmenter_confirms_every_frame_in_double_talk() -> None:
    """`confirmer_for`: while the stage is in double talk a frame is confirmed whatever it
    holds (AEC3 turned the person down; the guard judges the clip); otherwise Silero
    judges it, and silence is not speech; with confirmation off there is no confirmer."""
    from daemon.config import SegmenterSettings
    from daemon.echo import confirmer_for

    talking = [True]

    class Stage:
        def double_talk(self) -> bool:
            return talking[0]

    confirmer = confirmer_for(Stage())(SegmenterSettings())  # type: ignore[arg-type]
    assert confirmer is not None
    silence = np.zeros(480, dtype=np.int16)
    assert confirmer.confirms(silence)
    talking[0] = False
    assert not confirmer.confirms(silence)
    assert confirmer_for(Stage())(SegmenterSettings(confirm="off")) is None  # type: ignore[arg-type]
