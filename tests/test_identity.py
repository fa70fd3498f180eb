"""One room, one identity: device ids, the default room id, and two devices on one room_id.

Against a real Mosquitto: two MqttLinks with the same room_id and different device ids
stay connected side by side (distinct client ids) and each reports the other; the
daemon process reports a second device in its status `problems` and its log. Two
processes of one device (one client id) report each other and take turns on the broker.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.config import MqttSettings, load_settings
from daemon.counters import Counters
from daemon.identity import default_room_id, device_id
from daemon.mqtt import MqttLink
from scripts.broker import Broker, Recorder, eventually, retained
from scripts.procs import soundless_daemon_env, start_daemon, stop_process

ROOM = "shared-room"


def test_device_id_derives_from_the_machine_id_without_revealing_it(tmp_path: Path) -> None:
    machine = tmp_path / "machine-id"
    machine.write_text("0123456789abcdef0123456789abcdef\n")
    first = device_id(tmp_path / "state", [machine])
    assert first == device_id(tmp_path / "state", [machine])  # stable
    assert len(first) == 12 and first not in machine.read_text()
    other = tmp_path / "other-id"
    other.write_text("fedcba9876543210fedcba9876543210\n")
    assert device_id(tmp_path / "state", [other]) != first
    assert not (tmp_path / "state").exists()  # nothing written when the machine id exists


def test_device_id_without_machine_id_is_made_once_and_kept(tmp_path: Path) -> None:
    missing = [tmp_path / "none", tmp_path / "empty"]
    (tmp_path / "empty").write_text("")
    made = device_id(tmp_path / "state", missing)
    assert (tmp_path / "state" / "device-id").read_text().strip() == made
    assert device_id(tmp_path / "state", missing) == made
    unwritable = tmp_path / "file"
    unwritable.write_text("not a directory")
    fallback = device_id(unwritable, missing)  # no state dir either: hostname + MAC
    assert len(fallback) == 12 and fallback == device_id(unwritable, missing)


def test_default_room_id_is_the_hostname_as_a_topic_level() -> None:
    assert default_room_id("Meeting-Room-3") == "meeting-room-3"
    assert default_room_id("pi4.example.org") == "pi4"
    assert default_room_id("Salle #2/B") == "salle-2-b"
    assert default_room_id("###") == "room"
    os_default = load_settings().mqtt.room_id
    assert os_default == default_room_id() and os_default != "room-1"


def link_settings(broker: Broker) -> MqttSettings:
    return MqttSettings(
        host=broker.host,
        port=broker.port,
        room_id=ROOM,
        status_interval_s=1.0,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
    )


def make_link(broker: Broker, device: str, counters: Counters) -> MqttLink:
    return MqttLink(
        link_settings(broker),
        counters,
        client_id=f"roomtranslate-{ROOM}-{device}",
        device_id=device,
    )


@pytest.mark.e2e
async def test_two_devices_on_one_room_id_see_each_other_and_stay_connected() -> None:
    with Broker() as broker:
        first_counters, second_counters = Counters(), Counters()
        first = make_link(broker, "aaaaaaaaaaaa", first_counters)
        second = make_link(broker, "bbbbbbbbbbbb", second_counters)
        first_task = asyncio.create_task(first.run())
        await eventually(lambda: first.connected)
        await asyncio.sleep(0.3)
        assert first.other_devices() == {}  # alone in the room
        second_task = asyncio.create_task(second.run())
        try:
            await eventually(lambda: "aaaaaaaaaaaa" in second.other_devices(), 5.0)
            await eventually(lambda: "bbbbbbbbbbbb" in first.other_devices(), 5.0)
            await asyncio.sleep(3.0)  # several claim intervals side by side
            for counters in (first_counters, second_counters):
                assert counters.get("mqtt_connects") == 1
                assert counters.get("mqtt_disconnects") == 0
            assert first.connected and second.connected
            claim = await retained(broker, f"roomtranslate/{ROOM}/device")
            assert claim is not None and json.loads(claim)["device_id"] in (
                "aaaaaaaaaaaa",
                "bbbbbbbbbbbb",
            )
            await second.close(timeout=1.0)
            await asyncio.wait_for(second_task, 2.0)
            # No fresh claim of the second device for 3 intervals: forgotten.
            await eventually(lambda: first.other_devices() == {}, 6.0)
        finally:
            await first.close(timeout=1.0)
            await asyncio.wait_for(first_task, 2.0)
            if not second_task.done():
                await second.close(timeout=1.0)


@pytest.mark.e2e
async def test_the_room_reads_online_while_one_of_its_two_devices_runs() -> None:
    availability = f"roomtranslate/{ROOM}/availability"
    with Broker() as broker:
        first = make_link(broker, "aaaaaaaaaaaa", Counters())
        second = make_link(broker, "bbbbbbbbbbbb", Counters())
        tasks = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
        try:
            await eventually(lambda: first.connected and second.connected)
            await second.close(timeout=1.0)  # says offline for the room
            await eventually(tasks[1].done)

            async def online() -> bool:
                return await retained(broker, availability, wait_s=1.0) == b"online"

            for _ in range(50):  # the survivor answers: online again
                if await online():
                    break
            assert await online()
            await first.close(timeout=1.0)
            assert await retained(broker, availability) == b"offline"  # the last one went
        finally:
            for link in (first, second):
                await link.close(timeout=1.0)
            await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.e2e
async def test_an_old_retained_claim_is_not_a_second_device() -> None:
    with Broker() as broker:
        async with Recorder(broker, "#") as rec:
            old = {"device_id": "cccccccccccc", "host": "old-pi", "at": time.time() - 3600}
            await rec.publish(f"roomtranslate/{ROOM}/device", json.dumps(old).encode())
        link = make_link(broker, "dddddddddddd", Counters())
        task = asyncio.create_task(link.run())
        try:
            await eventually(lambda: link.connected)
            await asyncio.sleep(1.5)
            assert link.other_devices() == {}
        finally:
            await link.close(timeout=1.0)
            await asyncio.wait_for(task, 2.0)


def daemon_env(tmp_path: Path, broker: Broker, device: str) -> dict[str, str]:
    return soundless_daemon_env(
        tmp_path,
        API__BASE_URL="http://127.0.0.1:9/compatible-mode/v1",
        API__CHECK_KEY_AT_START="false",
        AUDIO__READY_TIMEOUT_S="0",
        MQTT__ENABLED="true",
        MQTT__HOST=broker.host,
        MQTT__PORT=str(broker.port),
        MQTT__ROOM_ID=ROOM,
        MQTT__DEVICE_ID=device,
        MQTT__STATUS_INTERVAL_S="1",
    )


def statuses(rec: Recorder) -> list[dict[str, Any]]:
    return [m.json() for m in rec.on(f"roomtranslate/{ROOM}/status") if m.payload]


@pytest.mark.e2e
async def test_two_daemons_with_one_room_id_both_report_it(tmp_path: Path) -> None:
    with Broker() as broker:
        async with Recorder(broker, f"roomtranslate/{ROOM}/#") as rec:
            procs = []
            logs = []
            for device in ("eeeeeeeeeeee", "ffffffffffff"):
                log = tmp_path / f"{device}.log"
                logs.append(log)
                workdir = tmp_path / device
                workdir.mkdir()
                procs.append(start_daemon(daemon_env(workdir, broker, device), log))
            try:

                def reported_by(device: str, other: str) -> bool:
                    return any(
                        s.get("device_id") == device and other in s["problems"].get("room_id", "")
                        for s in statuses(rec)
                    )

                await eventually(lambda: reported_by("eeeeeeeeeeee", "ffffffffffff"), 20.0)
                await eventually(lambda: reported_by("ffffffffffff", "eeeeeeeeeeee"), 20.0)
            finally:
                codes = [stop_process(proc, 10.0) for proc in procs]
            texts = [log.read_text() for log in logs]
            assert codes == [0, 0], texts
            for text, other in zip(texts, ("ffffffffffff", "eeeeeeeeeeee"), strict=True):
                assert f"id {other}) also uses room_id" in text, text
                assert text.count("MQTT connected") == 1, text  # nobody was kicked off


TWIN = "abababababab"


def twin_link(broker: Broker, **options: Any) -> MqttLink:
    """A link as a second process of device TWIN would make it: the same client id."""
    return MqttLink(
        link_settings(broker),
        Counters(),
        client_id=f"roomtranslate-{ROOM}-{TWIN}",
        device_id=TWIN,
        **options,
    )


@pytest.mark.e2e
async def test_two_processes_of_one_device_report_each_other_and_take_turns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with Broker() as broker:
        links = [twin_link(broker), twin_link(broker)]
        pauses: list[list[tuple[float, bool]]] = [[], []]
        for link, taken in zip(links, pauses, strict=True):

            async def pause(seconds: float, link: MqttLink = link, taken: Any = taken) -> None:
                taken.append((seconds, link.conflict() is not None))
                await asyncio.sleep(seconds)

            monkeypatch.setattr(link, "_pause", pause)
        tasks = [asyncio.create_task(link.run()) for link in links]
        try:
            await eventually(lambda: all(link.conflict() for link in links), 20.0)
            for link in links:
                conflict = link.conflict() or ""
                assert f"'roomtranslate-{ROOM}-{TWIN}'" in conflict and "pid" in conflict
            # the turns: at least a status interval's half (1 s, jittered) between attempts
            await eventually(
                lambda: sum(in_conflict for p in pauses for _, in_conflict in p) >= 4, 20.0
            )
            turns = [seconds for p in pauses for seconds, in_conflict in p if in_conflict]
            assert turns and min(turns) >= 0.5, pauses
        finally:
            for link in links:
                await link.close(timeout=1.0)
            await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.e2e
async def test_a_claim_of_an_earlier_run_of_this_device_is_no_conflict() -> None:
    """Only a claim made after this process started is another process (injected clock)."""
    started = 1_800_000_000.0
    device_topic = f"roomtranslate/{ROOM}/device"

    def claim(device: str, instance: str, pid: int, at: float) -> bytes:
        doc = {"device_id": device, "host": "pi", "at": at, "instance": instance, "pid": pid}
        return json.dumps(doc).encode()

    with Broker() as broker:
        async with Recorder(broker, "#") as rec:
            # the last claim of the run before a restart, retained
            await rec.publish(device_topic, claim(TWIN, "0ld0ld00", 41, started - 5), retain=True)
            link = twin_link(broker, wall_clock=lambda: started)
            task = asyncio.create_task(link.run())
            try:
                await eventually(lambda: link.connected)
                # a later message from another device shows the retained one was handled
                await rec.publish(device_topic, claim("cdcdcdcdcdcd", "x", 7, started))
                await eventually(lambda: "cdcdcdcdcdcd" in link.other_devices())
                assert link.conflict() is None
                await rec.publish(device_topic, claim(TWIN, "n3wn3wn3", 42, started + 1))
                await eventually(lambda: link.conflict() is not None)
                assert "pid 42 on pi" in (link.conflict() or "")
            finally:
                await link.close(timeout=1.0)
                await asyncio.wait_for(task, 2.0)
                await rec.publish(device_topic, b"", retain=True)


@pytest.mark.e2e
async def test_two_run_processes_on_one_host_report_the_conflict(tmp_path: Path) -> None:
    """Same device id, same room: one client id. Both statuses and both logs say so."""
    with Broker() as broker:
        async with Recorder(broker, f"roomtranslate/{ROOM}/#") as rec:
            procs: list[subprocess.Popen[bytes]] = []
            logs = [tmp_path / "first.log", tmp_path / "second.log"]
            for log in logs:
                workdir = tmp_path / log.stem
                workdir.mkdir()
                env = daemon_env(workdir, broker, TWIN)
                env.pop("ROOMTRANSLATE_MQTT__STATUS_INTERVAL_S")  # the default turns
                procs.append(start_daemon(env, log))
            try:

                def names(other: subprocess.Popen[bytes]) -> bool:
                    conflicts = [s["problems"].get("mqtt.conflict", "") for s in statuses(rec)]
                    return any(f"pid {other.pid} on" in text for text in conflicts)

                await eventually(lambda: names(procs[1]) and names(procs[0]), 30.0)
            finally:
                codes = [stop_process(proc, 10.0) for proc in procs]
            texts = [log.read_text() for log in logs]
            assert codes == [0, 0], texts
            for text, other in zip(texts, reversed(procs), strict=True):
                assert f"another roomtranslate process (pid {other.pid} on" in text, text
