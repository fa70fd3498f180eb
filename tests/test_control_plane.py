"""The control plane without a broker: `config/set` and group documents fed straight into
`ControlPlane.receive`, its answers and retained documents caught by a publisher stand-in.
The broker-level behaviour (ACL, retained delivery, the daemon process) is in
test_control*.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemon.config import LiveRoom, Settings
from daemon.control import ControlPlane
from daemon.control.state import FILE_NAME
from daemon.counters import Counters

BASE = "roomtranslate/room-1"
SET, RESPONSE, CONFIG = f"{BASE}/config/set", f"{BASE}/config/response", f"{BASE}/config"
FLEET = "roomtranslate/_fleet/config"


@dataclass
class Published:
    """What the plane published, in order: (topic, JSON payload, retained)."""

    messages: list[tuple[str, Any, bool]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        self.messages.append((topic, json.loads(payload) if payload else None, retain))
        self.changed.set()

    def on(self, topic: str) -> list[Any]:
        return [payload for t, payload, _ in self.messages if t == topic]


@dataclass
class Room:
    plane: ControlPlane
    live: LiveRoom
    counters: Counters
    out: Published
    state_dir: Path
    clock: list[float]

    async def send(self, topic: str, document: Any, retained: bool = False) -> None:
        answers = len(self.out.on(RESPONSE))
        configs = len(self.out.on(CONFIG))
        self.plane.receive(topic, json.dumps(document).encode(), retained)
        while len(self.out.on(RESPONSE)) == answers and len(self.out.on(CONFIG)) == configs:
            self.out.changed.clear()
            await asyncio.wait_for(self.out.changed.wait(), 10.0)

    async def set(self, **changes: Any) -> dict[str, Any]:
        await self.send(SET, {**changes, "transaction": "t"})
        answer: dict[str, Any] = self.out.on(RESPONSE)[-1]
        return answer


@asynccontextmanager
async def room(tmp_path: Path, **remote_config: Any) -> AsyncIterator[Room]:
    settings = Settings(
        state_dir=tmp_path,
        mqtt={"room_id": "room-1"},
        remote_config=remote_config,
        homeassistant={"discovery": False},
    )
    live, counters, out, clock = LiveRoom(settings.room), Counters(), Published(), [0.0]
    plane = ControlPlane(settings, live, counters, lambda what, why: None, clock=lambda: clock[0])
    plane.attach(out)
    worker = asyncio.create_task(plane.run())
    try:
        yield Room(plane, live, counters, out, tmp_path, clock)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


async def test_a_change_applies_answers_saves_and_republishes(tmp_path: Path) -> None:
    async with room(tmp_path) as r:
        answer = await r.set(target_lang="de", volume=60)
        assert (answer["status"], answer["errors"], answer["transaction"]) == ("ok", [], "t")
        assert (r.live.current.target_lang, r.live.current.volume) == ("de", 60)
        config = r.out.on(CONFIG)[-1]
        assert config["config"]["target_lang"] == "de"
        assert config["layers"]["target_lang"] == "room"
        saved = json.loads((tmp_path / FILE_NAME).read_text())
        assert saved["room"] == {"target_lang": "de", "volume": 60}


async def test_a_bad_request_is_answered_per_field_and_changes_nothing(tmp_path: Path) -> None:
    async with room(tmp_path) as r:
        before = r.live.current
        answer = await r.set(volume=500, loudness=1, target_lang="de")
        assert answer["status"] == "error"
        fields = sorted(error["field"] for error in answer["errors"])
        assert fields == ["loudness", "room.volume"]
        assert r.live.current == before
        assert not (tmp_path / FILE_NAME).exists()


async def test_layers_file_fleet_room_and_null_falls_back(tmp_path: Path) -> None:
    async with room(tmp_path) as r:
        await r.send(FLEET, {"target_lang": "fr", "volume": 30}, retained=True)
        assert (r.live.current.target_lang, r.live.current.volume) == ("fr", 30)
        await r.set(volume=70)
        assert (r.live.current.target_lang, r.live.current.volume) == ("fr", 70)
        await r.set(volume=None)  # the room's override removed: the fleet's value again
        assert r.live.current.volume == 30
        assert r.out.on(CONFIG)[-1]["layers"]["target_lang"] == "fleet"


async def test_a_retained_request_is_answered_and_not_applied(tmp_path: Path) -> None:
    async with room(tmp_path) as r:
        before = r.live.current
        await r.send(SET, {"volume": 5, "transaction": "t"}, retained=True)
        answer = r.out.on(RESPONSE)[-1]
        assert answer["status"] == "error" and answer["errors"][0]["field"] == "payload"
        assert "retained" in answer["errors"][0]["message"]
        assert r.live.current == before and not (tmp_path / FILE_NAME).exists()
        assert r.counters.get("config.rejected.retained") == 1


@pytest.mark.parametrize("payload", [b"\xff", b"not json", b"[1]", b"{" + b" " * 17_000 + b"}"])
async def test_unreadable_requests_are_answered(tmp_path: Path, payload: bytes) -> None:
    async with room(tmp_path) as r:
        r.plane.receive(SET, payload, False)
        while not r.out.on(RESPONSE):
            r.out.changed.clear()
            await asyncio.wait_for(r.out.changed.wait(), 10.0)
        answer = r.out.on(RESPONSE)[-1]
        assert (answer["status"], answer["transaction"]) == ("error", None)
        assert answer["errors"][0]["field"] == "payload"


async def test_the_rate_limit_follows_the_planes_clock(tmp_path: Path) -> None:
    async with room(tmp_path, changes_per_s=1.0) as r:
        assert (await r.set(volume=10))["status"] == "ok"
        limited = await r.set(volume=11)
        assert limited["status"] == "error" and "rate limit" in limited["errors"][0]["message"]
        assert (await r.set(volume=10))["status"] == "ok"  # no change: no token needed
        r.clock[0] += 1.0
        assert (await r.set(volume=12))["status"] == "ok"
        assert r.counters.get("config.rejected.rate_limited") == 1
