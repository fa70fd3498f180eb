"""Device listing (on the audio rig, in a subprocess with its environment) and resolving."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.counters import Counters
from daemon.devices import (
    DeviceHost,
    DeviceInfo,
    DeviceNotFoundError,
    format_devices,
    resolve_device,
    sound_system_signature,
)
from daemon.profiles import PROFILES_DIR, load_profiles
from tests.rigutil import PYTHON, client_env, started_rig

LIST_SCRIPT = """
import dataclasses, json
from daemon.devices import list_devices, format_devices
from daemon.profiles import PROFILES_DIR, load_profiles
devices = list_devices()
print(json.dumps({
    "devices": [dataclasses.asdict(d) for d in devices],
    "text": format_devices(devices, load_profiles(PROFILES_DIR)),
}))
"""


@pytest.fixture(scope="module")
def rig() -> Iterator[Any]:
    yield from started_rig()


@pytest.mark.rig
def test_rig_devices_are_listed_with_their_rates(rig: Any) -> None:
    result = subprocess.run(
        [PYTHON, "-c", LIST_SCRIPT],
        env=client_env(rig),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    listing = json.loads(result.stdout)
    devices = {d["name"]: d for d in listing["devices"]}
    mic, spk = devices["rig_mic"], devices["rig_spk"]
    assert mic["hostapi"] == "ALSA" and mic["max_input_channels"] >= 1
    assert {16_000, 48_000} <= set(mic["input_rates"])
    assert {24_000, 48_000} <= set(spk["output_rates"])
    text = listing["text"]
    print(text)
    assert "* virtual_rig: input 'rig_mic', output 'rig_spk'" in text
    assert "+ pulse_default" in text  # present too, but later in the priority order
    assert "- jabra_speak: not present" in text


def devices() -> list[DeviceInfo]:
    return [
        DeviceInfo(0, "HDA Intel PCH: ALC3246 Analog (hw:0,0)", "ALSA", 2, 2, 48000.0),
        DeviceInfo(1, "Jabra SPEAK 510 USB: Audio (hw:1,0)", "ALSA", 1, 2, 16000.0),
        DeviceInfo(2, "HDMI 0 (hw:2,3)", "ALSA", 0, 8, 48000.0),
        DeviceInfo(3, "pulse", "ALSA", 32, 32, 44100.0),
        DeviceInfo(4, "default", "ALSA", 32, 32, 44100.0),
    ]


@pytest.mark.parametrize(
    ("spec", "kind", "index"),
    [
        ("jabra", "input", 1),
        ("JABRA speak", "input", 1),
        ("1", "input", 1),
        (2, "output", 2),
        ("default", "input", 4),  # an exact name wins over substrings
        ("hw:", "output", 0),  # several match: the first in index order
    ],
)
def test_resolve_device_by_index_or_name(spec: str | int, kind: Any, index: int) -> None:
    assert resolve_device(spec, kind, devices()).index == index


@pytest.mark.parametrize(("spec", "kind"), [("hdmi", "input"), ("7", "input"), ("poly", "output")])
def test_unknown_device_lists_the_devices(spec: str, kind: Any) -> None:
    with pytest.raises(DeviceNotFoundError) as caught:
        resolve_device(spec, kind, devices())
    message = str(caught.value)
    assert repr(spec) in message and "#1 'Jabra SPEAK 510 USB: Audio (hw:1,0)'" in message
    if kind == "input":
        assert "HDMI" not in message  # only devices of the asked kind are listed


def test_format_devices_marks_the_auto_profile() -> None:
    text = format_devices(devices(), load_profiles(PROFILES_DIR))
    assert "* jabra_speak: input 'Jabra SPEAK 510 USB: Audio (hw:1,0)'" in text
    assert "echo guard off" in text
    assert "- respeaker_array: not present" in text


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rescans_back_off_while_nothing_changes_and_come_at_once_when_it_does() -> None:
    """While a device stays missing, rescans double their spacing (each Pa_Initialize keeps
    memory inside libasound); a change in the sound system (a card, a server's socket)
    brings the next one as soon as the minimum interval allows. Real PortAudio rescans."""
    clock, world = Clock(), ["cards: 0"]
    counters = Counters()
    host = DeviceHost(counters, interval_s=5.0, signature=lambda: tuple(world), clock=clock)
    host.missing("output")
    rescans = []
    for _ in range(2000):  # 2000 s of a missing speaker, checked every second
        clock.now += 1.0
        if host.rescan_if_due():
            rescans.append(clock.now - 1000.0)
    assert rescans == [5.0, 15.0, 35.0, 75.0, 155.0, 315.0, 635.0, 1275.0]
    world[0] = "cards: 0 1 (a USB speakerphone)"
    clock.now += 1.0
    assert host.rescan_if_due()  # the change: at once, not 640 s after the last rescan
    world[0] = "cards: 0 1 2"
    clock.now += 2.0
    assert not host.rescan_if_due()  # never more often than every interval_s
    clock.now += 3.0
    assert host.rescan_if_due()
    assert not host.should_yield("output")
    host.missing("input")
    assert not host.should_yield("input") and not host.should_yield("output")
    world[0] = "cards: 0 1 2 3"
    clock.now += 5.0
    assert host.should_yield("output")  # the microphone is missing: the speaker gives way
    assert counters.get("device_rescans") == 10


def test_found_devices_reset_the_backoff() -> None:
    clock = Clock()
    host = DeviceHost(None, interval_s=5.0, signature=lambda: "same", clock=clock)
    host.missing("output")
    for _ in range(100):
        clock.now += 1.0
        host.rescan_if_due()
    with host.lock:
        host.opened("output")  # found
    host.closed("output")
    host.missing("output")  # lost again later
    clock.now += 5.0
    assert host.rescan_if_due()


def test_the_signature_sees_a_sound_server_come_up(tmp_path: Path) -> None:
    socket_path = tmp_path / "pulse" / "native"
    asoundrc = f'pcm.rig_mic {{\n type pulse\n server "unix:{socket_path}"\n}}\n'
    (tmp_path / ".asoundrc").write_text(asoundrc)
    env = {"HOME": str(tmp_path)}
    before = sound_system_signature(env)
    assert sound_system_signature(env) == before
    socket_path.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(socket_path))
        assert sound_system_signature(env) != before
