"""The budget in a running room (the rig): used up → status `paused`, clips dropped with
reason `budget`, the first caption says why, and nothing more reaches the service; the
cap raised remotely (`config/set`) resumes the room at once.

The cap is 1.5 s and the start check (a 1 s clip, reserved as 1.04 s, billed 0.96 s by the
simulator) leaves less than the shortest clip, so the room is paused before
anyone speaks; the usage is in the state directory afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from daemon.budget import NOTICE
from scripts.e2e_harness import Daemon, Harness, Session, Tap
from tests.rigutil import module_harness

pytestmark = [pytest.mark.rig, pytest.mark.e2e]

SPEECH = [("en_sr_english", 0.5), ("fr_sr_french", 1.5)]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    yield from module_harness(tmp_path_factory, "budget")


def test_a_used_up_budget_pauses_the_room_and_says_why_once(harness: Harness) -> None:
    h = harness
    settings = {"ROOM__DAILY_AUDIO_S": "1.5", "API__CHECK_KEY_AT_START": "true"}
    with Tap(h.broker, "roomtranslate/#") as tap:
        time.sleep(0.2)  # retained messages of earlier daemons first
        daemon = Daemon(h.daemon_env(settings), h.workdir / "budget-daemon.log")
        session = Session(daemon, tap, len(tap.messages))
        daemon.start()
        try:
            check_paused_room(h, session)
            check_raised_cap_resumes(h, session)
        finally:
            assert daemon.stop() == 0
    saved = json.loads((h.workdir / "state" / "budget.json").read_text())
    assert saved["clips"] == 1 + len(SPEECH)  # the start check and the speech after the raise
    assert saved["audio_s"] > 0.96


def check_paused_room(h: Harness, session: Session) -> None:
    assert session.wait_status(lambda s: s["state"] == "paused", 20.0), (
        session.status(),
        session.daemon.log_tail(),
    )
    status = session.status()
    assert status["budget"]["state"] == "exhausted"
    assert status["budget"]["used_audio_s"] == 1.0  # 0.96 s, rounded
    assert "used up" in status["problems"]["budget"]
    assert h.sim.stats()["requests"] == 1  # the start check
    h.play(h.compose(SPEECH, "budget-speech"))
    assert session.wait_finals(len(SPEECH), 40.0), session.daemon.log_tail()
    finals = session.finals()
    assert [(c.outcome, c.reason) for c in finals] == [("dropped", "budget")] * len(SPEECH)
    assert [c.text for c in finals] == [NOTICE] + [""] * (len(SPEECH) - 1)
    assert session.wait_status(
        lambda s: s["counters"]["dropped"].get("budget") == len(SPEECH), 10.0
    ), session.status()
    assert h.sim.stats()["requests"] == 1  # nothing sent past the cap


def check_raised_cap_resumes(h: Harness, session: Session) -> None:
    answer = h.config_set(session, {"daily_audio_s": 600})
    assert answer["status"] == "ok", answer
    assert session.wait_status(lambda s: s["state"] == "listening", 10.0), session.status()
    assert session.status()["budget"]["daily_audio_s"] == 600
    dropped = len(session.finals())
    h.play(h.compose(SPEECH, "budget-speech-raised"))
    assert session.wait_finals(dropped + len(SPEECH), 40.0), session.daemon.log_tail()
    resumed = session.finals()[dropped:]
    assert [c.outcome for c in resumed] == ["translated"] * len(SPEECH), resumed
    assert h.sim.stats()["requests"] == 1 + len(SPEECH)
