"""Device listing (on the audio rig, in a subprocess with its environment) and resolving."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from daemon.devices import DeviceInfo, DeviceNotFoundError, format_devices, resolve_device
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
