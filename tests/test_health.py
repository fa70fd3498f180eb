"""Health that tells the truth: the key checked at start, a wrong key stays `error`, READY
says what is missing, and the watchdog starves when the microphone stays silent.

The daemon runs as a real process without sound devices (HOME without .asoundrc, no
PulseAudio), against the simulator and a real Mosquitto, with a real NOTIFY_SOCKET.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from daemon.config import ApiSettings
from daemon.counters import Counters
from daemon.translator import Translator
from scripts.broker import Broker, retained
from scripts.procs import soundless_daemon_env, start_daemon, stop_process
from scripts.simproc import Simulator
from tests.test_budget import ROOM, clip

DEAD_URL = "http://127.0.0.1:9/compatible-mode/v1"  # nothing listens: connection refused


def env_for(tmp_path: Path, **settings: str) -> dict[str, str]:
    return soundless_daemon_env(tmp_path, AUDIO__READY_TIMEOUT_S="1", **settings)


@contextmanager
def daemon(tmp_path: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_daemon(env, tmp_path / "daemon.log")
    try:
        yield proc
    finally:
        stop_process(proc, 10.0)


def log_of(tmp_path: Path) -> str:
    return (tmp_path / "daemon.log").read_text(errors="replace")


def status_of(broker: Broker) -> dict[str, Any]:
    payload = asyncio.run(retained(broker, "roomtranslate/health-room/status"))
    return json.loads(payload) if payload else {}


def wait_status(broker: Broker, predicate: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status = status_of(broker)
    while not predicate(status) and time.monotonic() < deadline:
        time.sleep(0.2)
        status = status_of(broker)
    return status


def mqtt_env(broker: Broker) -> dict[str, str]:
    return {
        "MQTT__ENABLED": "true",
        "MQTT__HOST": broker.host,
        "MQTT__PORT": str(broker.port),
        "MQTT__ROOM_ID": "health-room",
    }


@pytest.mark.e2e
def test_a_wrong_key_found_at_start_stays_error_past_the_pause(tmp_path: Path) -> None:
    with (
        Simulator("--api-key", "the-right-key") as sim,
        Broker() as broker,
        daemon(
            tmp_path,
            env_for(
                tmp_path, API__BASE_URL=sim.base_url, API__FATAL_PAUSE_S="1", **mqtt_env(broker)
            ),
        ),
    ):
        status = wait_status(broker, lambda s: s.get("state") == "error", 20.0)
        assert status.get("state") == "error", (status, log_of(tmp_path))
        assert "auth" in status["problems"]["service"]
        time.sleep(3.0)  # the 1 s pause is long over: no request succeeded since
        status = status_of(broker)
        assert status["state"] == "error" and "auth" in status["problems"]["service"], status
        assert "next clip tries again" in status["problems"]["service"]
        assert sim.stats()["by_status"] == {"401": 1}  # one request, not a storm
    assert "start check: the service refused" in log_of(tmp_path)


@pytest.mark.e2e
def test_an_unreachable_service_at_start_is_degraded_not_fatal(tmp_path: Path) -> None:
    with (
        Broker() as broker,
        daemon(
            tmp_path,
            env_for(tmp_path, API__BASE_URL=DEAD_URL, API__MAX_ATTEMPTS="1", **mqtt_env(broker)),
        ) as proc,
    ):
        status = wait_status(
            broker,
            lambda s: "service" in s.get("problems", {}) and s["state"] != "starting",
            20.0,
        )
        assert status["state"] == "degraded", status
        assert status["problems"]["service"] == "not reachable at start (connection)"
        assert proc.poll() is None  # still running


async def test_a_refusal_lasts_until_a_request_succeeds() -> None:
    with Simulator("--faults", "401") as sim:
        api = ApiSettings(base_url=sim.base_url, fatal_pause_s=0.2)
        translator = Translator(api, "test", Counters())
        try:
            async for _ in translator.translate(clip(1, 1.0), ROOM):
                pass
            assert "auth" in translator.refusal
            await asyncio.sleep(0.3)
            assert not translator.paused and "auth" in translator.refusal  # still wrong
            async for _ in translator.translate(clip(2, 1.0), ROOM):
                pass
            assert translator.refusal == ""  # this one succeeded
        finally:
            await translator.aclose()


@contextmanager
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()


def receive(sock: socket.socket, seconds: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(max(0.05, left))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return got


def receive_until(sock: socket.socket, text: str, seconds: float) -> list[str]:
    """Messages until one holds `text` (that one included), or `seconds` have passed:
    the daemon's start (a cold import on a fresh clone) is not what is judged."""
    got: list[str] = []
    deadline = time.monotonic() + seconds
    while not any(text in m for m in got) and time.monotonic() < deadline:
        got += receive(sock, min(0.5, max(0.0, deadline - time.monotonic())))
    return got


@pytest.mark.e2e
def test_ready_says_degraded_and_the_watchdog_starves_without_input(tmp_path: Path) -> None:
    with notify_socket(tmp_path) as (sock, path):
        env = env_for(
            tmp_path,
            API__BASE_URL=DEAD_URL,
            API__CHECK_KEY_AT_START="false",
            AUDIO__NO_INPUT_RESTART_S="4",
        )
        env |= {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
        with daemon(tmp_path, env):
            first = receive_until(sock, "READY=1", 30.0)
            ready = [m for m in first if "READY=1" in m]
            assert ready, first
            assert "STATUS=degraded: no input" in ready[0], ready
            assert "microphone: no input device" in ready[0], ready
            assert any("WATCHDOG=1" in m for m in first), first  # fed while young
            starved = "no audio from the microphone for 4 s: not feeding the watchdog"
            deadline = time.monotonic() + 20.0
            while starved not in log_of(tmp_path) and time.monotonic() < deadline:
                receive(sock, 0.2)
            assert starved in log_of(tmp_path), log_of(tmp_path)
            receive(sock, 0.3)  # a ping already on its way
            later = receive(sock, 2.0)
            assert not any("WATCHDOG=1" in m for m in later), later
