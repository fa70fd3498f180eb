"""`roomtranslate fleet` against a real Mosquitto: the rooms, their health and shares,
from what the broker retains and nothing else (the rooms' processes are not running)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from daemon.fleet.record import Record
from scripts.broker import Broker, free_port
from scripts.procs import run_cli


def record(room: str, share: float, sent: float, shed: tuple[int, int], rejected: int) -> bytes:
    return Record.model_validate(
        {
            "room_id": room,
            "at": time.time(),
            "limits": {"requests": 100, "tokens": 100000},
            "demand": {"speech": {"requests": 8.0}, "extra": {"requests": 16.0}},
            "sent": {"requests": sent},
            "share": {"requests": share, "speech_fraction": 0.55, "extra_fraction": 0.0},
            "shed": {"speech": shed[0], "extra": shed[1]},
            "rejected": rejected,
        }
    ).encode()


def retain(broker: Broker, topic: str, payload: bytes) -> None:
    subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-r",
            "-t",
            topic,
            "-s",
        ],
        input=payload,
        check=True,
        timeout=10,
    )


def config_for(tmp_path: Path, port: int) -> dict[str, str]:
    path = tmp_path / "config.toml"
    path.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n')
    return {**os.environ, "ROOMTRANSLATE_CONFIG": str(path)}


@pytest.mark.e2e
def test_the_fleet_view_lists_the_rooms_from_the_retained_topics(tmp_path: Path) -> None:
    with Broker() as broker:
        for room, state in (
            ("room-1", "translating"),
            ("room-2", "degraded"),
            ("lobby", "listening"),
        ):
            retain(broker, f"roomtranslate/{room}/availability", b"online")
            problems = {"microphone": "no audio"} if room == "room-2" else {}
            status = {"state": state, "problems": problems}
            retain(broker, f"roomtranslate/{room}/status", json.dumps(status).encode())
        retain(broker, "roomtranslate/room-3/availability", b"offline")
        retain(broker, "roomtranslate/_account/acme/room-1", record("room-1", 45.0, 44, (3, 16), 1))
        retain(broker, "roomtranslate/_account/acme/room-2", record("room-2", 45.0, 40, (0, 12), 0))
        retain(broker, "roomtranslate/_account/acme/room-3", b"[[[")
        env = config_for(tmp_path, broker.port)
        shown = run_cli("fleet", "--wait", "0.5", env=env)
        assert shown.returncode == 0, shown.stderr
        lines = {line.split()[0]: line.split() for line in shown.stdout.splitlines()}
        assert lines["room-1"] == [
            "room-1",
            "translating",
            "acme",
            "45.0",
            "44",
            "24.0",
            "55%",
            "3/16",
            "1",
        ]
        assert lines["room-2"][:5] == ["room-2", "degraded", "(microphone)", "acme", "45.0"]
        assert lines["lobby"] == ["lobby", "listening", "-", "-", "-", "-", "-", "-", "-"]
        assert lines["room-3"][:2] == ["room-3", "offline"]
        assert (
            "account acme: 2 room(s) on a limit of 100 requests a minute; sent 84" in shown.stdout
        )
        assert "429s 1 in the last minute" in shown.stdout
        assert "unreadable: roomtranslate/_account/acme/room-3" in shown.stdout

        as_json = json.loads(run_cli("fleet", "--wait", "0.5", "--json", env=env).stdout)
        rooms = {room["room_id"]: room for room in as_json["rooms"]}
        assert rooms["room-2"]["problems"] == ["microphone"]
        assert rooms["room-1"]["record"]["shed"] == {"speech": 3, "extra": 16}
        assert as_json["accounts"]["acme"]["rooms"] == 2


def test_the_fleet_view_says_when_the_broker_cannot_be_reached(tmp_path: Path) -> None:
    shown = run_cli("fleet", "--wait", "0.2", env=config_for(tmp_path, free_port()))
    assert shown.returncode == 69
    assert shown.stderr.startswith("roomtranslate: fleet: cannot reach the broker 127.0.0.1:")
