"""Status: state derived from the stages' conditions; figures derived from the counters."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from daemon.config import LiveRoom, RoomSettings
from daemon.counters import Counters
from daemon.status import Health, StatusPublisher, StatusSource


def source(counters: Counters | None = None, health: Health | None = None) -> StatusSource:
    return StatusSource(
        counters or Counters(),
        LiveRoom(RoomSettings(target_lang="de")),
        health or Health(),
        lambda: {"input": "mic", "output": "spk", "profile": "p"},
        lambda: {"waiting": 0, "in_flight": 1},
    )


def test_state_priority() -> None:
    h = Health()
    assert h.state() == "starting"
    h.started = True
    assert h.state() == "listening"
    h.hearing = True
    assert h.state() == "hearing"
    h.translating = True
    assert h.state() == "translating"
    h.speaking = True
    assert h.state() == "speaking"
    h.problem("mqtt", "broker unreachable")
    assert h.state() == "degraded" and h.last_error == "mqtt: broker unreachable"
    h.fatal = "requests paused after auth"
    assert h.state() == "error"
    h.fatal = ""
    h.problem("mqtt", None)
    assert h.state() == "speaking" and not h.problems


def test_figures_come_from_the_counters() -> None:
    c = Counters()
    for name, n in {
        "utterances": 5,
        "outcomes.translated": 3,
        "failed.auth": 1,
        "dropped.queue_full": 1,
        "input_overflows": 2,
        "service_errors.rate_limited": 4,
        "tokens.prompt": 100,
        "billed_audio_s.input": 12.34,
    }.items():
        c.add(name, n)
    status = source(c).snapshot()
    figures = status["counters"]
    assert figures["utterances"] == 5 and figures["translated"] == 3
    assert figures["failed"] == {"auth": 1} and figures["dropped"] == {"queue_full": 1}
    assert figures["service_errors"] == {"rate_limited": 4}
    assert figures["input_overflows"] == 2 and figures["billed_audio_s"]["input"] == 12.3
    assert status["target_lang"] == "de" and status["devices"]["input"] == "mic"
    assert status["version"] and status["state"] == "starting"


async def test_published_on_change_at_most_twice_a_second_and_periodically() -> None:
    c = Counters()
    sent: list[Mapping[str, Any]] = []
    publisher = StatusPublisher(source(c), sent.append, interval_s=1.0)
    task = asyncio.create_task(publisher.run())

    async def churn() -> None:
        for _ in range(100):
            c.add("utterances")
            await asyncio.sleep(0.01)

    await churn()  # 100 changes in ~1 s
    during = len(sent)
    await asyncio.sleep(2.2)  # nothing changes: the periodic publish still comes
    task.cancel()
    assert 1 <= during <= 4
    assert len(sent) >= during + 1
    assert sent[-1]["counters"]["utterances"] == 100
