"""One account, many rooms, over a real Mosquitto (and two bridged ones).

Each room is the daemon's own `SharedBudget` with its service load, on a short heartbeat;
what is asserted is what each room paces itself to (its share), what the broker holds
(the records) and what the rooms count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from daemon.config import ApiSettings, MqttSettings
from daemon.counters import Counters
from daemon.fleet.account import SharedBudget
from daemon.fleet.share import HEADROOM
from daemon.ratelimit import ServiceLoad
from scripts.broker import Broker, Recorder, eventually, retained
from scripts.paths import PROJECT_ROOT

pytestmark = pytest.mark.e2e

HEARTBEAT_S = 0.3
ALL = 100 * HEADROOM  # requests a minute the rooms of an account share
RECORDS = "roomtranslate/_account/acme"


@dataclass
class Room:
    budget: SharedBudget
    load: ServiceLoad
    counters: Counters
    task: asyncio.Task[None]
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.budget.pacer.share.total.requests

    @property
    def rooms(self) -> int:
        return self.budget.pacer.share.rooms

    def sees(self, rooms: int, share: float) -> bool:
        found = self.budget.pacer.share
        return found.rooms == rooms and abs(found.total.requests - share) < 1e-6 * share


def mqtt_for(broker: Broker, room_id: str, **more: object) -> MqttSettings:
    options = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.3, "keepalive_s": 5, **more}
    return MqttSettings(host=broker.host, port=broker.port, room_id=room_id, **options)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def room(broker: Broker, room_id: str, account: str = "acme") -> AsyncIterator[Room]:
    counters = Counters()
    load = ServiceLoad(counters, 100)
    settings = {"account": account}
    budget = SharedBudget(
        mqtt_for(broker, room_id),
        ApiSettings(),
        load,
        lambda: settings["account"],
        counters,
        device_id=f"dev-{room_id}",
        heartbeat_s=HEARTBEAT_S,
    )
    task = asyncio.create_task(budget.run())
    try:
        yield Room(budget, load, counters, task, settings)
    finally:
        await budget.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def asking_speech(r: Room, times: int) -> AsyncIterator[None]:
    """`times` speech requests asked for at once (each waits for the room's share)."""
    asks = [asyncio.create_task(r.load.admit(False, 100)) for _ in range(times)]
    try:
        yield
    finally:
        for ask in asks:
            ask.cancel()
        await asyncio.gather(*asks, return_exceptions=True)


async def test_rooms_of_one_account_split_it_and_a_room_alone_gets_all() -> None:
    with Broker() as broker:
        async with room(broker, "a") as a, Recorder(broker, f"{RECORDS}/b") as rec:
            await eventually(lambda: a.budget.connected)
            assert a.load.pacer is a.budget.pacer and a.sees(1, ALL)
            async with room(broker, "b") as b, room(broker, "c", account="other") as c:
                await eventually(lambda: a.sees(2, ALL / 2) and b.sees(2, ALL / 2))
                await eventually(lambda: c.sees(1, ALL) and c.budget.connected)
                await rec.wait_for(lambda: rec.on(f"{RECORDS}/b")[-1].json()["share"]["rooms"] == 2)
                record = rec.on(f"{RECORDS}/b")[-1]
                assert record.retain and record.json()["share"]["requests"] == ALL / 2
            # b stopped cleanly: its record is cleared and a has all of it again
            await eventually(lambda: a.sees(1, ALL), within_s=2 * HEARTBEAT_S)
            assert await retained(broker, f"{RECORDS}/b") is None
            assert a.budget.figures()["rooms"] == 1


async def test_the_speech_of_every_room_goes_before_any_extra_language() -> None:
    with Broker() as broker:
        async with room(broker, "talky") as talky, room(broker, "multi") as multi:
            await eventually(lambda: multi.sees(2, ALL / 2))
            async with asking_speech(talky, 20):  # 120 a minute, over the account
                await eventually(lambda: multi.budget.pacer.share.speech_fraction < 1)
                why = await multi.load.admit(True, 40)
                assert "extra caption languages paused: the account goes to the speech" in why
                assert multi.budget.pacer.share.extra.requests == 0
                assert multi.budget.figures()["shed"] == {"speech": 0, "extra": 1}


async def test_a_429_holds_and_shrinks_the_whole_account() -> None:
    with Broker() as broker:
        async with room(broker, "a") as a, room(broker, "b") as b:
            await eventually(lambda: b.sees(2, ALL / 2))
            a.load.throttled(2.0)  # the service refused one of a's requests
            await eventually(lambda: b.budget.pacer.hold_left() > 0)
            await eventually(lambda: b.budget.figures()["rejected"] == {"room": 0, "account": 1})
            # the account has less to share for a minute
            await eventually(lambda: b.sees(2, ALL * 0.9 / 2))


async def test_a_room_gone_silent_is_forgotten_within_seconds() -> None:
    with Broker() as broker:
        async with room(broker, "a") as a, room(broker, "b") as b:
            await eventually(lambda: a.sees(2, ALL / 2))
            # b stops without a word and no will (its connection closed cleanly)
            b.task.cancel()
            await asyncio.wait([b.task])
            assert await retained(broker, f"{RECORDS}/b") is not None
            await eventually(lambda: a.sees(1, ALL), within_s=5 * HEARTBEAT_S)


async def test_a_killed_room_is_cleared_by_its_will() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from daemon.config import ApiSettings, MqttSettings
        from daemon.counters import Counters
        from daemon.fleet.account import SharedBudget
        from daemon.ratelimit import ServiceLoad

        mqtt = MqttSettings(host="127.0.0.1", port=int(sys.argv[1]), room_id="doomed",
                            keepalive_s=5)
        budget = SharedBudget(mqtt, ApiSettings(), ServiceLoad(Counters(), 100),
                              lambda: "acme", Counters(), heartbeat_s=0.3)
        asyncio.run(budget.run())
        """
    )
    with Broker() as broker:
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(broker.port), env=env
        )
        try:
            async with Recorder(broker, f"{RECORDS}/#") as rec:
                await rec.wait_for(lambda: bool(rec.on(f"{RECORDS}/doomed")), within_s=10)
                os.kill(child.pid, signal.SIGKILL)
                await child.wait()
                killed = time.monotonic()
                # the will: an empty retained record, within 1.5 keepalives
                await rec.wait_for(lambda: rec.payloads(f"{RECORDS}/doomed")[-1] == b"", 10)
                assert rec.on(f"{RECORDS}/doomed")[-1].retain
                assert rec.on(f"{RECORDS}/doomed")[-1].at - killed < 10
            assert await retained(broker, f"{RECORDS}/doomed") is None
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()


async def test_broker_down_keeps_the_last_share_and_the_room_rejoins() -> None:
    with Broker() as broker:
        async with room(broker, "a") as a, room(broker, "b") as b:
            await eventually(lambda: a.sees(2, ALL / 2) and b.sees(2, ALL / 2))
            broker.stop()
            await eventually(lambda: not a.budget.connected and not b.budget.connected)
            await asyncio.sleep(5 * HEARTBEAT_S)  # longer than a room is remembered
            assert a.sees(2, ALL / 2) and a.load.pacer is a.budget.pacer
            assert await a.load.admit(False, 100) == ""  # still paced, nothing lost
            broker.start()
            await eventually(lambda: a.budget.connected and b.budget.connected)
            # a asked for more than b since: the two shares differ, and add up (each
            # room sees the other's demand as of its last record)
            await eventually(lambda: a.rooms == b.rooms == 2 and a.share > b.share)
            assert a.share + b.share == pytest.approx(ALL, rel=0.05)
            assert a.counters.get("fleet_disconnects") >= 1


async def test_bad_and_stale_records_are_not_counted() -> None:
    with Broker() as broker:
        async with Recorder(broker, "#") as rec:
            stale = {"room_id": "old", "at": time.time() - 3600, "limits": {"requests": 1}}
            await rec.publish(f"{RECORDS}/old", json.dumps(stale).encode(), retain=True)
            await rec.publish(f"{RECORDS}/evil", b'{"room_id": "evil", "at": NaN}', retain=True)
            await rec.publish(f"{RECORDS}/deep", b"[" * 3000 + b"]" * 3000, retain=True)
            async with room(broker, "a") as a:
                await eventually(lambda: a.budget.connected)
                await eventually(lambda: a.counters.get("fleet_bad_records") == 2)
                await asyncio.sleep(2 * HEARTBEAT_S)
                assert a.sees(1, ALL)  # the stale room's limit of 1 a minute is not taken
                await rec.publish(f"{RECORDS}/live", json.dumps(stale).encode())  # a live one
                await eventually(lambda: a.sees(2, 1 * HEADROOM / 2))  # its limit counts


async def test_the_account_is_a_live_setting() -> None:
    with Broker() as broker:
        async with room(broker, "a") as a, room(broker, "b") as b:
            await eventually(lambda: a.sees(2, ALL / 2))
            a.settings["account"] = "other"
            await eventually(lambda: a.sees(1, ALL) and b.sees(1, ALL))
            assert await retained(broker, f"{RECORDS}/a") is None
            assert await retained(broker, "roomtranslate/_account/other/a") is not None
            a.settings["account"] = ""
            await eventually(lambda: a.load.pacer is None)
            assert await retained(broker, "roomtranslate/_account/other/a") is None
            assert a.budget.figures() == {"account": ""}


async def test_rooms_on_two_bridged_brokers_share_one_account() -> None:
    with Broker() as central:
        bridge = [
            "connection central",
            f"address {central.host}:{central.port}",
            "topic roomtranslate/_account/# both 1",
            "cleansession true",
            "restart_timeout 1",
        ]
        with Broker(listener_options=bridge) as site:
            async with room(central, "hq-1") as hq, room(site, "site-1") as branch:
                await eventually(lambda: hq.sees(2, ALL / 2) and branch.sees(2, ALL / 2), 10)
                async with room(site, "site-2") as more:
                    await eventually(lambda: hq.sees(3, ALL / 3) and more.sees(3, ALL / 3), 10)
                await eventually(lambda: hq.sees(2, ALL / 2), 10)
