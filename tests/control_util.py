"""Helpers for the remote configuration tests: the control plane on a real broker.

async with control_plane(broker, tmp_path) as cp:      # ControlPlane + MqttLink
    async with Operator(broker) as op:                 # a real MQTT client
        reply = await op.set({"volume": 40})           # waits for config/response
        assert reply["status"] == "ok"
        assert cp.room.current.volume == 40
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from daemon.config import LiveRoom, MqttSettings, RoomSettings, Settings
from daemon.control import ControlPlane
from daemon.counters import Counters
from daemon.mqtt import MqttLink
from daemon.status import Health
from scripts.broker import Broker, Received, Recorder, eventually

PREFIX = "rt"
ROOM = "room-7"
BASE = f"{PREFIX}/{ROOM}"
SET = f"{BASE}/config/set"
RESPONSE = f"{BASE}/config/response"
CONFIG = f"{BASE}/config"
FLEET = f"{PREFIX}/_fleet/config"
SITE = "hq"
SITE_TOPIC = f"{PREFIX}/_site/{SITE}/config"
HA_STATUS = "homeassistant/status"
HA_DISCOVERY = f"homeassistant/device/roomtranslate_{ROOM}/config"
_transactions = itertools.count(1)


def mqtt_settings(broker: Broker, **changes: Any) -> MqttSettings:
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "prefix": PREFIX,
        "room_id": ROOM,
        "keepalive_s": 5,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
    }
    return MqttSettings(**(values | changes))


@dataclass
class Plane:
    """A running control plane and what it drives."""

    control: ControlPlane
    room: LiveRoom
    counters: Counters
    health: Health
    link: MqttLink
    state_dir: Path


@contextlib.asynccontextmanager
async def control_plane(
    broker: Broker,
    state_dir: Path,
    *,
    room: Mapping[str, Any] | None = None,
    connect: bool = True,
    clock: Callable[[], float] | None = None,
    remote_config: Mapping[str, Any] | None = None,
    homeassistant: Mapping[str, Any] | None = None,
    **mqtt: Any,
) -> AsyncIterator[Plane]:
    """ControlPlane + MqttLink wired as the daemon wires them, connected (or, with
    `connect=False`, only created: what the daemon has before it reaches the broker).
    `clock` is the plane's rate-limit clock (default: time.monotonic)."""
    settings = Settings(
        room=RoomSettings(**(room or {})),
        mqtt=mqtt_settings(broker, **mqtt),
        remote_config={"site": SITE, "changes_per_s": 1000.0, **(remote_config or {})},
        homeassistant=homeassistant or {},
        state_dir=state_dir,
    )
    counters, health = Counters(), Health()
    live = LiveRoom(settings.room)
    control = ControlPlane(settings, live, counters, health.problem, clock=clock)
    link = MqttLink(
        settings.mqtt, counters, subscriptions=control.subscriptions, on_message=control.receive
    )
    control.attach(link, device_id="d3v1ce")
    if not connect:
        yield Plane(control, live, counters, health, link, state_dir)
        return
    tasks = [asyncio.create_task(link.run()), asyncio.create_task(control.run())]
    try:
        await eventually(lambda: link.connected)
        yield Plane(control, live, counters, health, link, state_dir)
    finally:
        await link.close(1.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Operator:
    """A real MQTT client that sends config/set and group documents and reads answers."""

    def __init__(
        self,
        broker: Broker,
        base: str = BASE,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.recorder = Recorder(broker, "#", username=username, password=password)
        self.set_topic = f"{base}/config/set"
        self.response_topic = f"{base}/config/response"
        self.config_topic = f"{base}/config"

    async def __aenter__(self) -> Operator:
        await self.recorder.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.recorder.__aexit__(exc_type, exc, tb)

    def responses(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.recorder.on(self.response_topic)]

    def configs(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.recorder.on(self.config_topic) if m.payload]

    def on(self, topic: str) -> list[Received]:
        return self.recorder.on(topic)

    async def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1
    ) -> None:
        client = self.recorder._client
        if client is None:
            raise RuntimeError("the operator is not connected")
        await client.publish(topic, payload, qos=qos, retain=retain)

    async def set(self, changes: Mapping[str, Any], within_s: float = 5.0) -> dict[str, Any]:
        """Publish a config/set with a fresh transaction; its config/response."""
        transaction = f"t{next(_transactions)}"
        payload = json.dumps({**changes, "transaction": transaction}).encode()
        await self.publish(self.set_topic, payload)
        return await self.reply_to(transaction, within_s)

    async def send_raw(self, payload: bytes, within_s: float = 5.0) -> dict[str, Any]:
        """Publish raw bytes to config/set; the next config/response."""
        seen = len(self.responses())
        await self.publish(self.set_topic, payload)
        await eventually(lambda: len(self.responses()) > seen, within_s)
        return self.responses()[seen]

    async def reply_to(self, transaction: Any, within_s: float = 5.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for reply in self.responses():
                if reply.get("transaction") == transaction:
                    return reply
            return None

        await eventually(lambda: found() is not None, within_s)
        reply = found()
        assert reply is not None
        return reply

    async def latest_config(self, predicate: Any = None, within_s: float = 5.0) -> dict[str, Any]:
        """The last `config` document, once one satisfies `predicate`."""
        await eventually(
            lambda: bool(self.configs()) and (predicate is None or predicate(self.configs()[-1])),
            within_s,
        )
        return self.configs()[-1]
