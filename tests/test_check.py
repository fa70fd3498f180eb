"""`roomtranslate check` on the virtual rig with a real Mosquitto (with a password) and the
simulator (with a key): it passes when everything is right and names each broken part."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from scripts.broker import Broker
from scripts.simproc import Simulator
from tests.rigutil import ROOT, client_env, started_rig
from tests.test_mqtt_tls import make_ca, make_cert

pytestmark = [pytest.mark.rig, pytest.mark.e2e]

KEY = "sk-check-good-key"
PASSWORD = "broker-secret-pw"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from started_rig(tmp_path_factory.mktemp("check-rig"))


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    with Broker(users={"room": PASSWORD, "other": "other-pw"}) as running:
        yield running


@pytest.fixture(scope="module")
def service() -> Iterator[Simulator]:
    with Simulator("--api-key", KEY, "--first-text-ms", "5") as sim:
        yield sim


def write_config(tmp_path: Path, broker: Broker, service: Simulator, **extra: str) -> Path:
    mqtt = {
        "host": f'"{broker.host}"',
        "port": str(broker.port),
        "username": '"room"',
        "password": f'"{PASSWORD}"',
        "room_id": '"check-room"',
        **{k.removeprefix("mqtt_"): v for k, v in extra.items() if k.startswith("mqtt_")},
    }
    audio = {
        "profile": '"virtual_rig"',
        **{k.removeprefix("audio_"): v for k, v in extra.items() if k.startswith("audio_")},
    }
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    text = f'state_dir = "{extra.get("state_dir", state)}"\n'
    text += "[audio]\n" + "".join(f"{k} = {v}\n" for k, v in audio.items())
    text += "[mqtt]\n" + "".join(f"{k} = {v}\n" for k, v in mqtt.items())
    text += f'[api]\nbase_url = "{service.base_url}"\n'
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def check(
    rig: Any, config: Path, *args: str, key: str = KEY, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {**client_env(rig), "DASHSCOPE_API_KEY": key, **(env or {})}
    full["ROOMTRANSLATE_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "daemon", "check", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        env=full,
    )


def lines_of(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """check name → its line."""
    found = {}
    for line in result.stdout.splitlines():
        if line[:2] in ("✓ ", "✗ ", "- "):
            found[line[2:].split(":", 1)[0]] = line
    return found


def assert_only_failing(result: subprocess.CompletedProcess[str], *failing: str) -> dict[str, str]:
    found = lines_of(result)
    assert set(found) == {"config", "state", "input", "output", "broker", "room id", "service"}, (
        result.stdout + result.stderr
    )
    bad = {name for name, line in found.items() if line.startswith("✗")}
    assert bad == set(failing), result.stdout + result.stderr
    assert result.returncode == (1 if failing else 0), result.stdout + result.stderr
    assert KEY not in result.stdout + result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    return found


def test_passes_on_the_rig(rig: Any, broker: Broker, service: Simulator, tmp_path: Path) -> None:
    before = service.stats()["requests"]
    result = check(rig, write_config(tmp_path, broker, service))
    found = assert_only_failing(result)
    assert "'rig_mic' at 16000 Hz, audio flowing" in found["input"]
    assert "'rig_spk'" in found["output"]
    assert f"{broker.host}:{broker.port} as 'room': connected" in found["broker"]
    assert "'check-room' is free" in found["room id"]
    assert "key accepted, 1 s test clip translated" in found["service"]
    stats = service.stats()
    assert stats["requests"] == before + 1  # exactly one test clip
    clip = stats["clips"][-1]
    assert clip["modalities"] == ["text"] and abs(clip["duration_s"] - 1.0) < 0.01, clip


def test_wrong_key(rig: Any, broker: Broker, service: Simulator, tmp_path: Path) -> None:
    result = check(rig, write_config(tmp_path, broker, service), key="sk-wrong-key")
    found = assert_only_failing(result, "service")
    assert "auth: the key is wrong" in found["service"]
    assert "sk-wrong-key" not in result.stdout + result.stderr


def test_no_service_skips_the_clip(
    rig: Any, broker: Broker, service: Simulator, tmp_path: Path
) -> None:
    before = service.stats()["requests"]
    result = check(rig, write_config(tmp_path, broker, service), "--no-service", key="sk-wrong")
    found = assert_only_failing(result)
    assert found["service"].startswith("- service: skipped")
    assert service.stats()["requests"] == before


def test_no_broker(rig: Any, broker: Broker, service: Simulator, tmp_path: Path) -> None:
    from scripts.broker import free_port

    config = write_config(tmp_path, broker, service, mqtt_port=str(free_port()))
    found = assert_only_failing(check(rig, config, "--no-service"), "broker")
    assert "Connection refused" in found["broker"]
    assert found["room id"].startswith("- room id: skipped")


def test_wrong_broker_password(
    rig: Any, broker: Broker, service: Simulator, tmp_path: Path
) -> None:
    config = write_config(tmp_path, broker, service, mqtt_password='"not-the-password"')
    found = assert_only_failing(check(rig, config, "--no-service"), "broker")
    assert "as 'room'" in found["broker"] and "not-the-password" not in found["broker"]
    assert any(word in found["broker"].lower() for word in ("password", "authori")), found


def test_check_ends_when_portaudio_would_hang_at_exit(
    rig: Any, broker: Broker, service: Simulator, tmp_path: Path
) -> None:
    """PortAudio's terminate blocking at exit (a loaded machine's sound server) does not
    keep the command from ending: nothing calls it once the checks are done."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import time, sounddevice\nsounddevice._terminate = lambda: time.sleep(3600)\n"
    )
    config = write_config(tmp_path, broker, service)
    result = check(rig, config, "--no-service", env={"PYTHONPATH": f"{hook}:{ROOT}"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "✓ output:" in result.stdout


def test_check_terminates_portaudio_before_it_ends(
    rig: Any, broker: Broker, service: Simulator, tmp_path: Path
) -> None:
    """PortAudio is terminated before the interpreter finalizes: left running, the sound
    server's client thread now and then crashed the process at exit (SIGSEGV, exit -11,
    after every check had printed)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    marker = tmp_path / "terminated"
    (hook / "sitecustomize.py").write_text(
        "import pathlib, sounddevice\n"
        "_real = sounddevice._terminate\n"
        "def _terminate():\n"
        "    _real()\n"
        f"    pathlib.Path({str(marker)!r}).touch()\n"
        "sounddevice._terminate = _terminate\n"
    )
    config = write_config(tmp_path, broker, service)
    result = check(rig, config, "--no-service", env={"PYTHONPATH": f"{hook}:{ROOT}"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert marker.exists(), "PortAudio was left running at exit"


def test_room_id_already_online(
    rig: Any, broker: Broker, service: Simulator, tmp_path: Path
) -> None:
    async def announce(topic: str, payload: bytes) -> None:
        async with aiomqtt.Client(
            broker.host, broker.port, username="other", password="other-pw"
        ) as client:
            await client.publish(f"roomtranslate/taken-room/{topic}", payload, 1, True)

    asyncio.run(announce("availability", b"online"))
    config = write_config(tmp_path, broker, service, mqtt_room_id='"taken-room"')
    found = assert_only_failing(check(rig, config, "--no-service"), "room id")
    assert "'taken-room' is already online" in found["room id"]
    # a device claim beside it names the other device, or says it is this one
    claim = b'{"device_id": "d2", "host": "pi-room-7", "at": 0}'
    asyncio.run(announce("device", claim))
    found = assert_only_failing(check(rig, config, "--no-service"), "room id")
    assert "another device (pi-room-7) has this room_id" in found["room id"]
    mine = json.dumps({"device_id": "d1", "host": socket.gethostname(), "at": 0}).encode()
    asyncio.run(announce("device", mine))
    found = assert_only_failing(check(rig, config, "--no-service"), "room id")
    assert "this device's own service" in found["room id"]
    asyncio.run(announce("availability", b"offline"))  # the other device went away: free
    found = assert_only_failing(check(rig, config, "--no-service"))
    assert "availability: offline" in found["room id"]


def test_state_dir_missing_or_not_writable(
    rig: Any, broker: Broker, service: Simulator, tmp_path: Path
) -> None:
    missing = tmp_path / "nonexistent"
    config = write_config(tmp_path, broker, service, state_dir=str(missing))
    found = assert_only_failing(check(rig, config, "--no-service"), "state")
    assert f"{missing}: no such directory" in found["state"]
    config = write_config(tmp_path, broker, service, state_dir="/proc")  # nobody writes there
    found = assert_only_failing(check(rig, config, "--no-service"), "state")
    assert "/proc: not writable by this user" in found["state"]


def test_missing_device(rig: Any, broker: Broker, service: Simulator, tmp_path: Path) -> None:
    config = write_config(tmp_path, broker, service, audio_input_device='"Jabra Speak 750"')
    found = assert_only_failing(check(rig, config, "--no-service"), "input")
    assert "no input device matches 'Jabra Speak 750'" in found["input"]
    assert "rig_mic" in found["input"]  # the devices that are there are listed


def test_profile_not_present(rig: Any, broker: Broker, service: Simulator, tmp_path: Path) -> None:
    config = write_config(tmp_path, broker, service, audio_profile='"jabra_speak"')
    found = assert_only_failing(check(rig, config, "--no-service"), "input")
    assert "no input device matches profile 'jabra_speak'" in found["input"]
    assert "'default'" in found["output"]  # the daemon plays on the default output then


def test_bad_config_exits_78_with_every_field(
    rig: Any, broker: Broker, service: Simulator, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        broker,
        service,
        mqtt_reconnect_min_s="60.0",
        mqtt_ca_file='"/nonexistent/ca.pem"',
        audio_ring_seconds="0",
    )
    result = check(rig, config, env={"ROOMTRANSLATE_MQTT_HOST": "x"})
    assert result.returncode == 78, result.stdout + result.stderr
    assert result.stdout.startswith("✗ config: ")
    for needle in (
        "mqtt.ca_file = '/nonexistent/ca.pem': no such file",
        "audio.ring_seconds = 0",
        "environment ROOMTRANSLATE_MQTT_HOST: no such setting",
    ):
        assert needle in result.stdout, result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    assert len(lines_of(result)) == 1  # nothing else is tried with a bad configuration


@pytest.fixture(scope="module")
def tls_broker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Broker, dict[str, Path]]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl missing")
    d = tmp_path_factory.mktemp("check-pki")
    ca = make_ca(d, "room-ca")
    server = make_cert(d, "broker", ca, "IP:127.0.0.1")
    client = make_cert(d, "room-1", ca, None)
    pki = {"ca": ca[1], "client_key": client[0], "client_cert": client[1]}
    pki["other_ca"] = make_ca(d, "other-ca")[1]
    options = [
        f"cafile {ca[1]}",
        f"certfile {server[1]}",
        f"keyfile {server[0]}",
        "require_certificate true",
    ]
    with Broker(listener_options=options) as broker:
        yield broker, pki


@pytest.mark.parametrize("ca", ["ca", "other_ca"])
def test_tls_broker_with_a_client_certificate(
    rig: Any,
    tls_broker: tuple[Broker, dict[str, Path]],
    service: Simulator,
    tmp_path: Path,
    ca: str,
) -> None:
    broker, pki = tls_broker
    config = write_config(
        tmp_path,
        broker,
        service,
        mqtt_username='""',
        mqtt_password='""',
        mqtt_tls="true",
        mqtt_ca_file=f'"{pki[ca]}"',
        mqtt_cert_file=f'"{pki["client_cert"]}"',
        mqtt_key_file=f'"{pki["client_key"]}"',
    )
    if ca == "ca":
        found = assert_only_failing(check(rig, config, "--no-service"))
        assert f"{broker.host}:{broker.port} (TLS): connected" in found["broker"]
    else:  # a CA that did not sign the broker's certificate
        found = assert_only_failing(check(rig, config, "--no-service"), "broker")
        assert "certificate verify failed" in found["broker"], found["broker"]
