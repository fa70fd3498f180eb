"""The daily budget: reserved before sending, never passed by concurrent clips, persisted.

The concurrency test runs the real pipeline stages (Sequencer → Budget → Translator →
openai SDK → the simulator over HTTP) with many clips in flight at once, and checks what
the simulator billed against the cap.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np

from daemon.budget import NOTICE, Budget, billed_estimate
from daemon.config import ApiSettings, LiveRoom, PipelineSettings, RoomSettings
from daemon.counters import Counters
from daemon.sequencer import Sequencer
from daemon.translator import Translator
from daemon.values import SAMPLE_RATE, Outcome, Utterance, UtteranceStats
from scripts.simproc import Simulator

ROOM = RoomSettings(target_lang="zh", speech=False)


def clip(uid: int, seconds: float) -> Utterance:
    rng = np.random.default_rng(uid)
    samples = round(seconds * SAMPLE_RATE)
    pcm = (rng.standard_normal(samples) * 3000).astype(np.int16)
    stats = UtteranceStats(samples // 480, samples // 480, -20.0, -6.0, False)
    return Utterance(uid, 0, samples, pcm, stats, 0.0, seconds)


def billed_by_simulator(sim: Simulator) -> float:
    """Input audio the simulator billed: 12.5 tokens per second, at least 1 s, per clip."""
    tokens = sum(round(12.5 * max(1.0, c["duration_s"])) for c in sim.stats()["clips"])
    return tokens / 12.5


class Limits:
    """The live cap, changeable while running (what remote configuration does)."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def __call__(self) -> float:
        return self.cap


async def run_clips(sequencer: Sequencer, clips: list[Utterance]) -> dict[int, Outcome]:
    outcomes: dict[int, Outcome] = {}
    runner = asyncio.create_task(sequencer.run())
    for utt in clips:
        sequencer.submit(utt)
    sequencer.close()
    async for utt, event in sequencer.results():
        if isinstance(event, Outcome):
            outcomes[utt.id] = event
    await runner
    return outcomes


async def test_the_cap_holds_under_concurrent_clips(tmp_path: Path) -> None:
    cap = 20.0
    with Simulator("--first-text-ms", "300", "--jitter-ms", "200", "--chunk-ms", "5") as sim:
        counters = Counters()
        limits = Limits(cap)
        budget = Budget(limits, tmp_path, counters)
        api = ApiSettings(base_url=sim.base_url, max_attempts=1)
        translator = Translator(api, "test", counters)
        pipeline = PipelineSettings(max_in_flight=8, queue_size=64)
        sequencer = Sequencer(pipeline, budget.gate(translator.translate), LiveRoom(ROOM), counters)
        durations = [1.3 + 0.37 * (i % 5) for i in range(30)]  # 1.3 … 2.78 s: 53 s in all
        try:
            outcomes = await run_clips(sequencer, [clip(i + 1, d) for i, d in enumerate(durations)])
            billed = billed_by_simulator(sim)
            translated = [o for o in outcomes.values() if o.kind == "translated"]
            dropped = [o for o in outcomes.values() if o.kind == "dropped"]
            assert len(outcomes) == 30 and len(translated) + len(dropped) == 30
            assert billed <= cap, billed
            assert cap - billed < billed_estimate(max(durations))  # the cap was used, not idle
            assert dropped and all(o.reason == "budget" for o in dropped)
            assert sum(1 for o in dropped if o.text == NOTICE) <= 1  # captions say why, once
            assert sim.stats()["requests"] == len(translated)  # nothing sent past the cap
            assert math.isclose(budget.used_s, billed, abs_tol=1e-6)
            assert counters.get("dropped.budget") == len(dropped)
            assert budget.state() in ("warning", "exhausted")
            saved = json.loads((tmp_path / "budget.json").read_text())
            assert math.isclose(saved["audio_s"], billed, abs_tol=1e-3)
            assert saved["clips"] == len(translated)

            # Exhausted for a 3 s clip; raising the cap (read per clip) lets it through.
            sequencer = Sequencer(
                pipeline, budget.gate(translator.translate), LiveRoom(ROOM), counters
            )
            limits.cap = cap + 10.0
            more = await run_clips(sequencer, [clip(100, 3.0)])
            assert more[100].kind == "translated"
            assert budget.used_s <= cap + 10.0
        finally:
            await translator.aclose()


async def test_warning_then_pause_then_the_next_day(tmp_path: Path) -> None:
    day = ["2026-12-01"]
    counters = Counters()
    budget = Budget(Limits(10.0), tmp_path, counters, today=lambda: day[0])
    assert budget.state() == "ok"
    ticket = budget.reserve(7.0)
    assert ticket is not None and budget.state() == "ok"
    ticket2 = budget.reserve(1.5)
    assert ticket2 is not None and budget.state() == "warning"  # 8.5 of 10 reserved
    budget.settle(ticket, 7.0)
    budget.settle(ticket2, 1.5)
    assert budget.problem() == "over 80% of the daily 10 s budget used"
    assert budget.reserve(2.0) is None  # 8.5 + 2 > 10
    last = budget.reserve(0.5)  # billed as 1 s: fits
    assert last is not None
    budget.settle(last, 1.0)
    assert budget.state() == "exhausted"
    assert budget.problem() == "daily budget of 10 s used up: paused until tomorrow"
    never_called = Translator(ApiSettings(base_url="http://127.0.0.1:9/v1"), "test", counters)
    gated = budget.gate(never_called.translate)
    texts = []
    for uid in (1, 2):
        async for event in gated(clip(uid, 1.0), ROOM):
            assert isinstance(event, Outcome) and (event.kind, event.reason) == (
                "dropped",
                "budget",
            )
            texts.append(event.text)
    assert texts == [NOTICE, ""]  # the captions say why once
    await never_called.aclose()
    day[0] = "2026-12-02"
    assert budget.state() == "ok" and budget.used_s == 0.0
    assert json.loads((tmp_path / "budget.json").read_text())["day"] == "2026-12-02"


def test_usage_survives_a_restart_and_a_corrupt_file_is_set_aside(tmp_path: Path) -> None:
    day = "2026-12-01"
    first = Budget(Limits(0.0), tmp_path, Counters(), today=lambda: day)
    ticket = first.reserve(4.0)
    assert ticket is not None and first.state() == "unlimited"
    first.settle(ticket, 4.0)
    again = Budget(Limits(0.0), tmp_path, Counters(), today=lambda: day)
    assert again.used_s == 4.0 and again.snapshot()["clips"] == 1
    tomorrow = Budget(Limits(0.0), tmp_path, Counters(), today=lambda: "2026-12-02")
    assert tomorrow.used_s == 0.0

    (tmp_path / "budget.json").write_bytes(b'{"day": "2026-12-01", "audio_s": 4')  # torn
    counters = Counters()
    recovered = Budget(Limits(0.0), tmp_path, counters, today=lambda: day)
    assert recovered.used_s == 0.0
    aside = list(tmp_path.glob("budget.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().endswith(b"4")
    assert "set aside as budget.json.corrupt-" in recovered.snapshot()["state_file"]
    assert counters.get("budget_state_file_problems") == 1


def test_an_unwritable_state_dir_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    budget = Budget(Limits(0.0), blocker, Counters())
    ticket = budget.reserve(1.0)
    assert ticket is not None
    budget.settle(ticket, 1.0)
    problem = budget.problem()
    assert problem is not None and "cannot write" in problem
    assert budget.used_s == 1.0  # kept in memory
