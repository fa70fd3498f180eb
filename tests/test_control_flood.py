"""The control plane under a flood, on a real Mosquitto: nothing the broker delivers is
lost before it is counted, a retained fleet document is never lost, and the published
status accounts for every message."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import LiveRoom, MqttSettings, Settings
from daemon.control import ControlPlane
from daemon.control.plane import QUEUE_LIMIT
from daemon.counters import Counters
from daemon.status import Health, StatusPublisher, StatusSource
from scripts.broker import Broker, eventually
from tests.control_util import FLEET, SET, SITE_TOPIC, Operator, Plane, control_plane

BURST = 5000
STATUS = "rt/room-7/status"


@contextlib.asynccontextmanager
async def publishing_status(cp: Plane) -> AsyncIterator[None]:
    """The daemon's status publisher over the plane's link (status every second)."""
    source = StatusSource(cp.counters, cp.room, cp.health, dict, dict)
    task = asyncio.create_task(StatusPublisher(source, cp.link.publish_status, 1.0).run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def publish_lines(broker: Broker, topic: str, lines: list[bytes]) -> None:
    """Publish each line as one QoS 1 message from another process, as fast as it goes."""
    command = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1"]
    subprocess.run([*command, "-t", topic, "-l"], input=b"\n".join(lines), check=True)


def accounted(op: Operator) -> tuple[int, dict[str, Any]]:
    """Requests answered (distinct transactions) plus those the latest status counts as
    dropped; and that status."""
    statuses = [json.loads(m.payload) for m in op.on(STATUS) if m.payload]
    if not statuses:
        return 0, {}
    counters = statuses[-1]["counters"]
    answered = {r["transaction"] for r in op.responses() if isinstance(r["transaction"], int)}
    dropped = counters["config"].get("dropped_queue_full", 0)
    dropped += counters["mqtt"]["replies_dropped"]
    return len(answered) + dropped, counters


@pytest.mark.e2e
async def test_a_burst_is_answered_or_counted_and_the_fleet_document_applies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # Mosquitto holds at most 1,000 messages for a client by default and drops the rest
    # unseen: a burst the daemon is to count must fit the broker's own queue first.
    with Broker(listener_options=["max_queued_messages 10000"]) as broker:
        async with (
            Operator(broker) as op,
            control_plane(broker, tmp_path / "state") as cp,
            publishing_status(cp),
        ):
            assert cp.room.current.vad_mode == 2
            requests = [
                json.dumps({"volume": n % 101, "transaction": n}).encode() for n in range(BURST)
            ]
            half = BURST // 2
            await asyncio.to_thread(publish_lines, broker, SET, requests[:half])
            await op.publish(FLEET, b'{"vad_mode": 0}', retain=True)
            await asyncio.to_thread(publish_lines, broker, SET, requests[half:])

            await eventually(lambda: cp.room.current.vad_mode == 0, 30.0)
            config = await op.latest_config(lambda c: c["layers"]["vad_mode"] == "fleet", 30.0)
            assert config["config"]["vad_mode"] == 0
            await eventually(lambda: accounted(op)[0] >= BURST, 60.0)
            total, counters = accounted(op)
            assert total == BURST, counters
            assert counters["config"].get("fleet_applied") == 1, counters
            await op.publish(FLEET, b"", retain=True)
    assert "Message queue is full" not in caplog.text


async def test_the_newest_group_document_is_kept_however_full_the_queue(tmp_path: Path) -> None:
    """No broker needed: messages arrive faster than `run()` takes them; the fleet and site
    documents keep their newest version per topic, the requests beyond the queue are
    counted."""
    counters = Counters()
    mqtt = MqttSettings(prefix="rt", room_id="room-7")
    settings = Settings(mqtt=mqtt, remote_config={"site": "hq"}, state_dir=tmp_path)
    room = LiveRoom(settings.room)
    control = ControlPlane(settings, room, counters, Health().problem)
    for n in range(QUEUE_LIMIT):
        control.receive(SET, json.dumps({"volume": n % 101}).encode(), False)
    control.receive(FLEET, b'{"vad_mode": 1}', True)
    control.receive(SITE_TOPIC, b'{"mute": true}', False)
    for _ in range(50):
        control.receive(SET, b"{}", False)
    control.receive(FLEET, b'{"vad_mode": 0}', False)
    assert counters.get("config.dropped_queue_full") == 50
    assert counters.get("config.superseded") == 1
    task = asyncio.create_task(control.run())
    try:
        await eventually(lambda: room.current.vad_mode == 0 and room.current.mute, 10.0)
        await eventually(lambda: counters.get("config.responses") == QUEUE_LIMIT, 10.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert counters.get("config.fleet_applied") == 1
    assert counters.get("config.site_applied") == 1
