"""The Mosquitto ACL example of docs/mqtt.md, run on a real Mosquitto with the daemon's link.

The ACL text is taken from that page itself (the block after "one block per room"), so
the documented example is the tested one. A denied publish is silently dropped by
Mosquitto; to see that it was, an allowed message follows it on the same path (the
broker keeps the order), and only the allowed one arrives.
"""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from daemon.config import ApiSettings, MqttSettings
from daemon.counters import Counters
from daemon.fleet.account import SharedBudget
from daemon.mqtt import MqttLink
from daemon.ratelimit import ServiceLoad
from scripts.broker import Broker, eventually, retained
from tests.control_util import Operator, Plane, control_plane

pytestmark = pytest.mark.e2e

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "mqtt.md"
PASSWORD = "pw"
USERS = ("room-1", "room-2", "display", "fleet", "homeassistant")
BASE1, BASE2 = "roomtranslate/room-1", "roomtranslate/room-2"


def readme_acl() -> str:
    text = GUIDE.read_text()
    match = re.search(r"```\n(# one block per room.*?)```", text, re.S)
    assert match, "the ACL example is missing from docs/mqtt.md"
    return match.group(1)


@pytest.fixture
def broker(tmp_path: Path) -> Broker:
    acl = readme_acl()
    room_1 = acl[: acl.index("\n\n")]
    acl += "\n" + room_1.replace("room-1", "room-2") + "\n"  # a second room, same pattern
    path = tmp_path / "roomtranslate.acl"
    path.write_text(acl)
    return Broker(users=dict.fromkeys(USERS, PASSWORD), listener_options=[f"acl_file {path}"])


def room(broker: Broker, state: Path, room_id: str) -> AbstractAsyncContextManager[Plane]:
    return control_plane(
        broker,
        state,
        prefix="roomtranslate",
        room_id=room_id,
        username=room_id,
        password=PASSWORD,
    )


def who(broker: Broker, user: str, base: str = BASE1) -> Operator:
    return Operator(broker, base, username=user, password=PASSWORD)


async def test_a_room_account_does_its_job_within_its_topics(
    broker: Broker, tmp_path: Path
) -> None:
    with broker:
        async with (
            room(broker, tmp_path / "s1", "room-1") as cp,
            who(broker, "fleet") as fleet,
            who(broker, "homeassistant") as ha,
        ):
            assert (await fleet.set({"volume": 33}))["status"] == "ok"
            await fleet.publish("roomtranslate/_fleet/config", b'{"vad_mode": 1}', retain=True)
            await fleet.publish("roomtranslate/_site/hq/config", b'{"mute": true}', retain=True)
            config = await fleet.latest_config(lambda c: c["config"]["mute"] is True)
            assert config["layers"]["vad_mode"] == "fleet" and config["layers"]["mute"] == "site"
            assert cp.room.current.volume == 33
            discovery = await retained(
                broker,
                "homeassistant/device/roomtranslate_room-1/config",
                username="homeassistant",
                password=PASSWORD,
                wait_s=5.0,
            )
            assert discovery and json.loads(discovery)["components"]
            await ha.publish("homeassistant/status", b"online")
            await eventually(lambda: cp.counters.get("config.ha_online") == 1)
            reply = await ha.set({"mute": False})  # Home Assistant may command the room
            assert reply["status"] == "ok"


async def test_a_room_cannot_touch_another_room_or_the_fleet(
    broker: Broker, tmp_path: Path
) -> None:
    with broker:
        async with (
            room(broker, tmp_path / "s1", "room-1") as one,
            room(broker, tmp_path / "s2", "room-2") as two,
            who(broker, "fleet", BASE2) as fleet,
            who(broker, "room-1", BASE2) as intruder,
        ):
            await intruder.publish(f"{BASE2}/config/set", b'{"volume": 1, "transaction": "x"}')
            await intruder.publish("roomtranslate/_fleet/config", b'{"volume": 2}', retain=True)
            await intruder.publish(f"{BASE2}/config", b'{"version": 99}', retain=True)
            reply = await fleet.set({"volume": 44})  # allowed, after the denied ones
            assert reply["status"] == "ok"
            assert [r["transaction"] for r in fleet.responses()] == [reply["transaction"]]
            assert two.room.current.volume == 44 and one.room.current.volume == 80
            fleet_doc = await retained(
                broker, "roomtranslate/_fleet/config", username="fleet", password=PASSWORD
            )
            assert fleet_doc is None
            config = await retained(
                broker, f"{BASE2}/config", username="fleet", password=PASSWORD, wait_s=5.0
            )
            assert config is not None and json.loads(config)["version"] == two.control.version


async def test_a_room_reads_the_device_claims_of_its_room_id(broker: Broker) -> None:
    """The daemon subscribes to its room's `device` claims to notice a second device."""
    with broker:
        async with (
            who(broker, "room-1") as device_a,
            who(broker, "room-1") as device_b,
            who(broker, "room-2") as other,
        ):
            claim = f"{BASE1}/device"
            await other.publish(claim, b'{"device_id": "intruder"}')  # denied: not its room
            await device_a.publish(claim, b'{"device_id": "a"}')
            await eventually(lambda: bool(device_b.on(claim)))
            assert [m.payload for m in device_b.on(claim)] == [b'{"device_id": "a"}']
            assert not other.on(claim)  # nor may it read another room's claims


async def test_displays_read_and_cannot_write(broker: Broker, tmp_path: Path) -> None:
    with broker:
        async with (
            room(broker, tmp_path / "s1", "room-1") as cp,
            who(broker, "display") as display,
            who(broker, "fleet") as fleet,
        ):
            link: MqttLink = cp.link
            link.publish_caption("en", {"utterance_id": 1, "text": "hello"}, True)
            await eventually(lambda: bool(display.on(f"{BASE1}/captions/en")))
            await display.latest_config()
            await display.publish(f"{BASE1}/config/set", b'{"mute": true, "transaction": "d"}')
            reply = await fleet.set({"volume": 12})
            assert [r["transaction"] for r in fleet.responses()] == [reply["transaction"]]
            assert cp.room.current.mute is False
            assert not display.on(f"{BASE1}/config/response")  # answers are not for displays


async def test_rooms_share_their_account_within_their_own_records(broker: Broker) -> None:
    with broker:
        budgets = [shared_budget(broker, room_id) for room_id in ("room-1", "room-2")]
        tasks = [asyncio.create_task(b.run()) for b in budgets]
        try:
            async with who(broker, "room-1") as intruder, who(broker, "fleet") as fleet:
                await eventually(lambda: all(b.pacer.share.rooms == 2 for b in budgets))
                forged = b'{"room_id": "room-2", "at": 0, "limits": {"requests": 1}}'
                await intruder.publish(f"{ACCOUNT}/room-2", forged, retain=True)  # denied
                await intruder.publish(f"{ACCOUNT}/room-9", forged, retain=True)  # denied
                await eventually(lambda: bool(fleet.on(f"{ACCOUNT}/room-2")))  # fleet reads
                await asyncio.sleep(0.5)
                assert all(b.pacer.share.rooms == 2 for b in budgets)
                assert budgets[0].pacer.share.capacity.requests == 90  # no forged limit
                assert forged not in [m.payload for m in fleet.recorder.messages]
        finally:
            for budget in budgets:
                await budget.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


ACCOUNT = "roomtranslate/_account/acme"


def shared_budget(broker: Broker, room_id: str) -> SharedBudget:
    mqtt = MqttSettings(
        host=broker.host,
        port=broker.port,
        room_id=room_id,
        username=room_id,
        password=PASSWORD,  # type: ignore[arg-type]
    )
    load = ServiceLoad(Counters(), 100)
    return SharedBudget(mqtt, ApiSettings(), load, lambda: "acme", Counters(), heartbeat_s=0.3)
