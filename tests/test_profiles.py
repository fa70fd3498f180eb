"""Hardware profiles: the shipped TOML files, validation errors, auto-selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import AudioSettings, ConfigError
from daemon.devices import DeviceInfo
from daemon.echo import echo_mode
from daemon.profiles import PROFILES_DIR, load_profile, load_profiles, profiles_dir, select_profile

SHIPPED = [
    "jabra_speak",
    "pulse_echo_cancel",
    "respeaker_array",
    "usb_mic_speakers",
    "virtual_rig",
    "pulse_default",
]


def device(index: int, name: str, ins: int = 2, outs: int = 2) -> DeviceInfo:
    return DeviceInfo(index, name, "ALSA", ins, outs, 48000.0)


PI_OUTPUTS = [device(0, "bcm2835 Headphones: - (hw:0,0)", 0, 8), device(1, "vc4-hdmi-0", 0, 2)]
PULSE = [device(8, "pulse", 32, 32), device(9, "default", 32, 32)]


def test_shipped_profiles_load_in_priority_order() -> None:
    profiles = load_profiles(PROFILES_DIR)
    assert [p.name for p in profiles] == SHIPPED
    by_name = {p.name: p for p in profiles}
    assert by_name["jabra_speak"].echo_guard == "off"
    assert by_name["pulse_echo_cancel"].echo_guard == "off"
    for name in ("usb_mic_speakers", "respeaker_array", "virtual_rig", "pulse_default"):
        assert by_name[name].echo_guard == "aec", name
    respeaker = by_name["respeaker_array"].input
    assert (respeaker.open_channels, respeaker.use_channels, respeaker.rate) == (6, (0,), 16000)
    assert by_name["virtual_rig"].input.match == ("rig_mic",)
    assert by_name["virtual_rig"].output.match == ("rig_spk",)


def test_profiles_dir_defaults_to_the_shipped_directory(tmp_path: Path) -> None:
    assert profiles_dir(AudioSettings()) == PROFILES_DIR
    assert Path(__file__).resolve().parent.parent / "hw_profiles" == PROFILES_DIR
    assert profiles_dir(AudioSettings(profiles_dir=tmp_path)) == tmp_path


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (
            ["Jabra SPEAK 510 USB: Audio (hw:2,0)", "USB PnP Sound Device: Audio (hw:3,0)"],
            "jabra_speak",
        ),
        (["Poly Sync 20: USB Audio (hw:2,0)"], "jabra_speak"),
        (["Anker PowerConf: USB Audio (hw:2,0)"], "jabra_speak"),
        (["ReSpeaker 4 Mic Array (UAC1.0): USB Audio (hw:2,0)"], "respeaker_array"),
        (["USB PnP Sound Device: Audio (hw:2,0)"], "usb_mic_speakers"),
        (["rig_mic", "rig_spk"], "virtual_rig"),
        ([], "pulse_default"),
    ],
)
def test_auto_picks_the_first_profile_whose_input_is_present(
    names: list[str], expected: str
) -> None:
    devices = PI_OUTPUTS + [device(2 + i, n) for i, n in enumerate(names)] + PULSE
    assert select_profile("auto", devices).name == expected


def test_output_match_falls_back_to_the_default_output() -> None:
    profile = select_profile("usb_mic_speakers", [])
    usb = device(2, "USB PnP Sound Device: Audio (hw:2,0)", 1, 0)
    assert profile.input_device([*PI_OUTPUTS, usb]) == usb
    assert profile.output_device([*PI_OUTPUTS, usb]) is None  # no patterns: default output
    jabra = select_profile("jabra_speak", [])
    speaker = device(3, "Jabra SPEAK 510 USB: Audio (hw:3,0)", 1, 2)
    assert jabra.output_device([*PI_OUTPUTS, speaker]) == speaker


def test_output_only_devices_do_not_make_a_profile_present() -> None:
    devices = [device(0, "Jabra SPEAK 510 USB", 0, 2), *PULSE]
    assert select_profile("auto", devices).name == "pulse_default"


def test_auto_without_any_match_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no profile matches"):
        select_profile("auto", PI_OUTPUTS)


def test_unknown_profile_name_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        select_profile("polycom", PULSE)
    assert "'polycom'" in str(caught.value)
    assert all(name in str(caught.value) for name in SHIPPED)


VALID = """
description = "test"
echo_guard = "gate"
[input]
match = ["usb"]
"""


def write(tmp_path: Path, text: str, name: str = "custom.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_minimal_profile_has_defaults(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, VALID))
    assert profile.name == "custom"
    assert profile.input.open_channels == 1 and profile.input.rate is None
    assert profile.input.latency == "high" and profile.output.match == ()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (VALID + "colour = 1\n", "input.colour: unknown setting"),
        (VALID.replace('echo_guard = "gate"', 'echo_guard = "on"'), "echo_guard = 'on'"),
        (VALID.replace('echo_guard = "gate"\n', ""), "echo_guard: required setting is missing"),
        (VALID + "channels = 2\nuse_channels = [2]\n", "input: use_channels [2] needs more"),
        (VALID + "use_channels = [0, 0]\n", "use_channels must be distinct"),
        (VALID + "latency = 5.0\n", "input.latency"),
        (VALID + 'latency = "medium"\n', "input.latency"),
        (VALID + "rate = 1000\n", "input.rate = 1000"),
        (VALID + "gain_db = 60\n", "input.gain_db = 60"),
        (VALID.replace('match = ["usb"]', "match = []"), "input.match = []"),
        (VALID.replace('match = ["usb"]', 'match = [" "]'), "match patterns must not be empty"),
        ('name = "x"\n' + VALID, "name: unknown setting"),
    ],
)
def test_invalid_profiles_name_the_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert field in message


def test_bad_toml_and_every_bad_file_are_reported(tmp_path: Path) -> None:
    write(tmp_path, "description = ", "broken.toml")
    write(tmp_path, VALID + "bogus = true\n", "extra.toml")
    write(tmp_path, VALID, "fine.toml")
    with pytest.raises(ConfigError) as caught:
        load_profiles(tmp_path)
    assert len(caught.value.lines) == 2
    assert "broken.toml: not valid TOML" in caught.value.lines[0]
    assert "extra.toml: input.bogus: unknown setting" in caught.value.lines[1]


def test_empty_or_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no hardware profiles"):
        load_profiles(tmp_path)
    with pytest.raises(ConfigError, match="no such hardware profile directory"):
        load_profiles(tmp_path / "nope")


def test_echo_mode_follows_settings_then_profile() -> None:
    jabra = select_profile("jabra_speak", [])
    assert echo_mode(AudioSettings(), jabra) == "off"
    assert echo_mode(AudioSettings(echo_guard="gate"), jabra) == "gate"
    assert echo_mode(AudioSettings(), select_profile("usb_mic_speakers", [])) == "aec"
    assert echo_mode(AudioSettings(), None) == "aec"
    assert echo_mode(AudioSettings(echo_guard="off"), None) == "off"
