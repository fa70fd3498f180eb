"""MqttLink against a real Mosquitto: availability, will, status, captions, outages, auth."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from daemon.config import MqttSettings
from daemon.counters import Counters
from daemon.mqtt import MqttLink
from scripts.broker import Broker, Received, Recorder, eventually, retained

PREFIX = "rt"
ROOM = "room-7"
BASE = f"{PREFIX}/{ROOM}"
AVAILABILITY = f"{BASE}/availability"
STATUS = f"{BASE}/status"
CAPTIONS_EN = f"{BASE}/captions/en"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import asyncio, sys
from daemon.config import MqttSettings
from daemon.counters import Counters
from daemon.mqtt import MqttLink

async def main() -> None:
    port, prefix, room = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    settings = MqttSettings(host="127.0.0.1", port=port, prefix=prefix, room_id=room)
    link = MqttLink(settings, Counters())
    task = asyncio.create_task(link.run())
    while not link.connected:
        await asyncio.sleep(0.01)
    print("READY", flush=True)
    await task

asyncio.run(main())
"""


def make_settings(broker: Broker, **changes: Any) -> MqttSettings:
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


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[asyncio.Task[None]]:
    """link.run() as a task; closed (and awaited) on the way out."""
    task = asyncio.create_task(link.run())
    try:
        yield task
    finally:
        await link.close(timeout=1.0)
        await asyncio.wait_for(task, 2.0)


def caption(seq: int, text: str = "") -> dict[str, Any]:
    return {"seq": seq, "text": text or f"line {seq}"}


def seqs(messages: list[Received], final: bool) -> list[int]:
    return [m.json()["seq"] for m in messages if m.json()["final"] is final]


@pytest.mark.e2e
async def test_online_on_connect_and_offline_on_close() -> None:
    with Broker() as broker:
        async with Recorder(broker, f"{BASE}/#") as rec:
            link = MqttLink(make_settings(broker), Counters())
            task = asyncio.create_task(link.run())
            await eventually(lambda: link.connected)
            assert await retained(broker, AVAILABILITY) == b"online"

            await link.close()
            await asyncio.wait_for(task, 1.0)  # returns normally
            assert not link.connected
            assert await retained(broker, AVAILABILITY) == b"offline"
            await rec.wait_for(lambda: len(rec.on(AVAILABILITY)) == 2)
            got = [(m.payload, m.qos, m.retain) for m in rec.on(AVAILABILITY)]
            assert got == [(b"online", 1, True), (b"offline", 1, True)]


@pytest.mark.e2e
async def test_cancelled_run_says_offline_and_reraises() -> None:
    with Broker() as broker:
        link = MqttLink(make_settings(broker), Counters())
        task = asyncio.create_task(link.run())
        await eventually(lambda: link.connected)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await retained(broker, AVAILABILITY) == b"offline"


@pytest.mark.e2e
async def test_will_offline_when_the_daemon_dies() -> None:
    with Broker() as broker:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            str(broker.port),
            PREFIX,
            ROOM,
            cwd=PROJECT_ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            assert await asyncio.wait_for(child.stdout.readline(), 10.0) == b"READY\n"
            assert await retained(broker, AVAILABILITY) == b"online"
        finally:
            child.kill()  # SIGKILL: the socket closes without DISCONNECT
            await child.wait()
        for _ in range(50):
            if await retained(broker, AVAILABILITY, wait_s=0.1) == b"offline":
                break
        assert await retained(broker, AVAILABILITY) == b"offline"


@pytest.mark.e2e
async def test_status_is_retained_and_the_latest_wins() -> None:
    with Broker() as broker:
        async with Recorder(broker, STATUS) as rec:
            link = MqttLink(make_settings(broker), Counters())
            link.publish_status({"n": 1, "state": "starting"})  # before the connection
            async with running(link):
                await rec.wait_for(lambda: len(rec.on(STATUS)) == 1)
                link.publish_status({"n": 2})
                link.publish_status({"n": 3, "note": "größer"})
                await rec.wait_for(lambda: rec.on(STATUS)[-1].json()["n"] == 3)
                assert await retained(broker, STATUS) == '{"n":3,"note":"größer"}'.encode()
            received = rec.on(STATUS)
            assert all(m.retain and m.qos == 1 for m in received)
            numbers = [m.json()["n"] for m in received]
            assert numbers[0] == 1 and numbers[-1] == 3 and numbers == sorted(numbers)


@pytest.mark.e2e
async def test_captions_partials_qos0_finals_qos1_in_order_never_retained() -> None:
    with Broker() as broker:
        async with Recorder(broker, f"{BASE}/captions/#") as rec:
            counters = Counters()
            link = MqttLink(make_settings(broker), counters)
            async with running(link):
                await eventually(lambda: link.connected)
                link.publish_caption("en", caption(1, "Hel"), final=False)
                link.publish_caption("en", caption(1, "Hello"), final=False)
                link.publish_caption("en", caption(1, "Hello, 世界"), final=True)
                link.publish_caption("de", caption(1, "Hallo"), final=True)
                link.publish_caption("en", caption(2, "Next"), final=False)
                link.publish_caption("en", caption(2, "Next one"), final=True)
                await rec.wait_for(lambda: len(rec.on(CAPTIONS_EN)) == 5)
                await rec.wait_for(lambda: len(rec.on(f"{BASE}/captions/de")) == 1)
                assert await retained(broker, CAPTIONS_EN) is None

            got = [
                (m.json()["text"], m.json()["final"], m.qos, m.retain) for m in rec.on(CAPTIONS_EN)
            ]
            assert got == [
                ("Hel", False, 0, False),
                ("Hello", False, 0, False),
                ("Hello, 世界", True, 1, False),
                ("Next", False, 0, False),
                ("Next one", True, 1, False),
            ]
            assert rec.on(CAPTIONS_EN)[2].payload == (
                '{"seq":1,"text":"Hello, 世界","final":true}'.encode()
            )
            assert counters.get("mqtt_captions_published") == 6


@pytest.mark.e2e
async def test_broker_down_at_start_finals_wait_and_arrive_in_order() -> None:
    with Broker(persistence=True) as broker:
        async with Recorder(broker, f"{BASE}/captions/#", persistent=True) as rec:
            broker.stop()  # saves the recorder's session: it gets what it misses
            counters = Counters()
            link = MqttLink(make_settings(broker), counters)
            async with running(link) as task:
                await eventually(lambda: counters.get("mqtt_connect_failures") >= 2)
                for seq in (1, 2, 3):
                    link.publish_caption("en", caption(seq), final=True)
                link.publish_caption("en", caption(4, "partial"), final=False)
                assert counters.get("mqtt_partials_dropped") == 1
                assert link.pending == 3 and not task.done()

                broker.start()
                await eventually(lambda: link.connected)
                link.publish_caption("en", caption(4), final=True)
                await rec.wait_for(lambda: len(rec.on(CAPTIONS_EN)) == 4)
            assert seqs(rec.on(CAPTIONS_EN), final=True) == [1, 2, 3, 4]
            assert seqs(rec.on(CAPTIONS_EN), final=False) == []
            assert counters.get("mqtt_captions_published") == 4


@pytest.mark.e2e
async def test_broker_killed_mid_stream_gap_finals_arrive_after_partials_dropped() -> None:
    with Broker(persistence=True) as broker:
        async with Recorder(broker, f"{BASE}/captions/#", persistent=True) as rec:
            broker.restart()  # the recorder's session is now on disk
            await rec.wait_connected(2)
            counters = Counters()
            link = MqttLink(make_settings(broker), counters)
            async with running(link) as task:
                await eventually(lambda: link.connected)
                link.publish_caption("en", caption(1), final=True)
                link.publish_caption("en", caption(2, "partial"), final=False)
                link.publish_caption("en", caption(2), final=True)
                await rec.wait_for(lambda: len(rec.on(CAPTIONS_EN)) == 3)

                broker.kill()
                await eventually(lambda: not link.connected)
                link.publish_caption("en", caption(3, "gap partial"), final=False)
                link.publish_caption("en", caption(3), final=True)
                link.publish_caption("en", caption(4), final=True)
                link.publish_caption("en", caption(5, "gap partial"), final=False)
                assert counters.get("mqtt_partials_dropped") == 2
                await asyncio.sleep(0.3)  # a few failed reconnects
                assert not task.done()

                broker.start()
                await eventually(lambda: link.connected)
                link.publish_caption("en", caption(5), final=True)
                await rec.wait_for(lambda: len(seqs(rec.on(CAPTIONS_EN), final=True)) == 5)
            assert seqs(rec.on(CAPTIONS_EN), final=True) == [1, 2, 3, 4, 5]
            assert seqs(rec.on(CAPTIONS_EN), final=False) == [2]
            assert counters.get("mqtt_disconnects") == 1
            assert counters.get("mqtt_connect_failures") >= 1


@pytest.mark.e2e
async def test_final_lost_in_flight_goes_back_to_the_head_of_the_outbox() -> None:
    with Broker(persistence=True) as broker:
        async with Recorder(broker, f"{BASE}/captions/#", persistent=True) as rec:
            broker.restart()
            await rec.wait_connected(2)
            counters = Counters()
            link = MqttLink(make_settings(broker), counters)
            async with running(link):
                await eventually(lambda: link.connected)
                link.publish_caption("en", caption(1), final=True)
                await rec.wait_for(lambda: len(rec.on(CAPTIONS_EN)) == 1)

                broker.pause()  # caption 2 goes on the wire but is never acknowledged
                link.publish_caption("en", caption(2), final=True)
                await asyncio.sleep(0.3)
                assert link.pending == 0  # taken by the sender, in flight
                link.publish_caption("en", caption(3), final=True)
                broker.kill()
                await eventually(lambda: not link.connected)
                assert link.pending == 2  # 2 back at the head, then 3

                broker.start()
                await rec.wait_for(lambda: len(rec.on(CAPTIONS_EN)) == 3)
            assert seqs(rec.on(CAPTIONS_EN), final=True) == [1, 2, 3]
            assert counters.get("mqtt_outbox_dropped") == 0


@pytest.mark.e2e
async def test_outbox_overflow_drops_the_oldest_finals() -> None:
    with Broker() as broker:
        async with Recorder(broker, f"{BASE}/captions/#") as rec:
            counters = Counters()
            link = MqttLink(make_settings(broker, outbox_size=3), counters)
            for seq in range(1, 6):  # not connected yet
                link.publish_caption("en", caption(seq), final=True)
            link.publish_caption("en", caption(6, "partial"), final=False)
            assert counters.get("mqtt_outbox_dropped") == 2
            assert counters.get("mqtt_partials_dropped") == 1
            assert link.pending == 3
            async with running(link):
                await rec.wait_for(lambda: len(rec.on(CAPTIONS_EN)) == 3)
            assert seqs(rec.on(CAPTIONS_EN), final=True) == [3, 4, 5]


@pytest.mark.e2e
async def test_password_auth_and_a_wrong_password_that_stays_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    good, wrong = "c0rrect-h0rse", "wr0ng-batt3ry"
    with Broker(users={"room": good}) as broker:
        link = MqttLink(
            make_settings(broker, username="room", password=SecretStr(good)), Counters()
        )
        async with running(link):
            await eventually(lambda: link.connected)
            assert await retained(broker, AVAILABILITY, username="room", password=good) == b"online"

        counters = Counters()
        bad = MqttLink(make_settings(broker, username="room", password=SecretStr(wrong)), counters)
        task = asyncio.create_task(bad.run())
        await eventually(lambda: counters.get("mqtt_connect_failures") >= 3)
        assert not task.done() and not bad.connected
        await bad.close(timeout=1.0)
        await asyncio.wait_for(task, 1.0)

    assert "cannot connect" in caplog.text
    assert wrong not in caplog.text and good not in caplog.text
    for record in caplog.records:
        assert wrong not in str(record.args) and wrong not in str(record.exc_info)


@pytest.mark.e2e
async def test_subscription_callback_receives_messages() -> None:
    with Broker() as broker:
        got: list[tuple[str, bytes, bool]] = []

        def on_message(topic: str, payload: bytes, retained: bool) -> None:
            if payload == b"boom":
                raise ValueError("handler bug")
            got.append((topic, payload, retained))

        counters = Counters()
        link = MqttLink(
            make_settings(broker),
            counters,
            subscriptions=[f"{BASE}/config/set"],
            on_message=on_message,
        )
        async with running(link), Recorder(broker, f"{BASE}/config/#") as rec:
            await eventually(lambda: link.connected)
            await rec.publish(f"{BASE}/config/set", b"boom")
            await rec.publish(f"{BASE}/config/set", '{"volume":50,"x":"é"}'.encode())
            await eventually(lambda: len(got) == 1)
            assert got == [(f"{BASE}/config/set", '{"volume":50,"x":"é"}'.encode(), False)]
            assert counters.get("mqtt_handler_errors") == 1
            assert link.connected


async def test_close_is_bounded_while_a_connect_attempt_hangs() -> None:
    with socket.socket() as mute:  # accepts TCP (backlog) but never answers CONNECT
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        settings = MqttSettings(host="127.0.0.1", port=mute.getsockname()[1])
        link = MqttLink(settings, Counters())
        task = asyncio.create_task(link.run())
        await asyncio.sleep(0.2)
        link.publish_caption("en", caption(1), final=True)
        # close() gives up on the hanging connect after its timeout: it returns
        await asyncio.wait_for(link.close(timeout=0.5), 30.0)
        await asyncio.wait_for(task, 0.5)  # returns: the cancel was close()'s own
        assert task.exception() is None and not link.connected
