"""Hardware profiles: TOML files in `hw_profiles/` describing a class of room audio kit.

A profile says how to find its devices (case-insensitive substrings of PortAudio device
names), how to open the microphone (rate, channels, which channel(s) to use, gain,
latency) and how our own speech is kept out of the microphone (`echo_guard`: "aec" for
separate microphone and speakers, "off" for speakerphones with hardware echo
cancellation or a sound server's echo-cancel source, "gate" on request).

`select_profile("auto", devices)` takes the first profile, by ascending `priority` (then
file name), whose input device is present. The shipped priorities:

    10 jabra_speak      USB speakerphones with hardware AEC (Jabra, Poly, Anker)
    15 pulse_echo_cancel a PulseAudio/PipeWire module-echo-cancel source (ALSA `echocancel_in`)
    20 respeaker_array  ReSpeaker-class USB mic arrays (processed channel 0)
    30 usb_mic_speakers any other USB microphone, separate speakers (echo canceller)
    40 virtual_rig      the test rig's rig_mic / rig_spk (scripts/audio_rig.py)
    90 pulse_default    the PulseAudio/PipeWire `pulse` or `default` device (fallback)
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from daemon.config import AudioSettings, ConfigError, describe_validation_error

# The checkout's hw_profiles/, or the copy a wheel installs inside the package.
_CHECKOUT_PROFILES = Path(__file__).parent.parent / "hw_profiles"
PROFILES_DIR = (
    _CHECKOUT_PROFILES if _CHECKOUT_PROFILES.is_dir() else Path(__file__).parent / "hw_profiles"
)

Latency = Literal["low", "high"] | float
EchoGuard = Literal["aec", "gate", "off"]


class NamedDevice(Protocol):
    """What profile matching needs to know about a device (see daemon.devices)."""

    @property
    def name(self) -> str: ...

    @property
    def max_input_channels(self) -> int: ...

    @property
    def max_output_channels(self) -> int: ...


D = TypeVar("D", bound=NamedDevice)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_latency(value: Latency) -> Latency:
    if isinstance(value, float) and not 0.0 < value <= 2.0:
        raise ValueError("latency must be 'low', 'high' or seconds in (0, 2]")
    return value


class InputProfile(_Strict):
    match: tuple[str, ...] = Field(min_length=1)
    rate: int | None = Field(default=None, ge=8000, le=192_000)  # None: 16 kHz if accepted
    channels: int | None = Field(default=None, ge=1, le=32)  # None: max(use_channels) + 1
    use_channels: tuple[int, ...] = Field(default=(0,), min_length=1)
    gain_db: float = Field(default=0.0, ge=-40.0, le=40.0)
    latency: Latency = "high"

    _latency = field_validator("latency")(_check_latency)

    @field_validator("match")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not pattern.strip() for pattern in value):
            raise ValueError("match patterns must not be empty")
        return value

    @model_validator(mode="after")
    def _channels(self) -> InputProfile:
        if len(set(self.use_channels)) != len(self.use_channels) or min(self.use_channels) < 0:
            raise ValueError("use_channels must be distinct channel numbers from 0")
        if self.channels is not None and max(self.use_channels) >= self.channels:
            raise ValueError(
                f"use_channels {list(self.use_channels)} needs more than {self.channels} channels"
            )
        return self

    @property
    def open_channels(self) -> int:
        """How many channels to open the device with."""
        return self.channels if self.channels is not None else max(self.use_channels) + 1


class OutputProfile(_Strict):
    match: tuple[str, ...] = ()  # empty: the default output device
    rate: int | None = Field(default=None, ge=8000, le=192_000)
    channels: int = Field(default=1, ge=1, le=8)
    latency: Latency = "high"

    _latency = field_validator("latency")(_check_latency)


class Profile(_Strict):
    name: str
    description: str
    priority: int = Field(default=50, ge=0, le=1000)
    echo_guard: EchoGuard
    input: InputProfile
    output: OutputProfile = OutputProfile()

    def input_device(self, devices: Iterable[D]) -> D | None:
        """The first input device matching a pattern (patterns tried in order)."""
        return _first_match(self.input.match, devices, output=False)

    def output_device(self, devices: Iterable[D]) -> D | None:
        """The first output device matching a pattern; None: use the default output."""
        return _first_match(self.output.match, devices, output=True)

    def is_present(self, devices: Iterable[NamedDevice]) -> bool:
        return self.input_device(devices) is not None


def name_matches(pattern: str, name: str) -> bool:
    return pattern.strip().casefold() in name.casefold()


def _first_match(patterns: Sequence[str], devices: Iterable[D], *, output: bool) -> D | None:
    usable = [d for d in devices if (d.max_output_channels if output else d.max_input_channels) > 0]
    for pattern in patterns:
        for device in usable:
            if name_matches(pattern, device.name):
                return device
    return None


def profiles_dir(settings: AudioSettings) -> Path:
    """`audio.profiles_dir`, else the `hw_profiles` directory shipped with the package."""
    return settings.profiles_dir if settings.profiles_dir is not None else PROFILES_DIR


def load_profile(path: Path) -> Profile:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    if "name" in data:
        raise ConfigError([f"{path}: name: unknown setting (the file name is the name)"])
    try:
        return Profile.model_validate({**data, "name": path.stem})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, where=f"{path}: ")) from None


def load_profiles(directory: Path) -> list[Profile]:
    """Every `*.toml` profile in `directory`, in auto-selection order; ConfigError lists
    every bad file's problems at once."""
    if not directory.is_dir():
        raise ConfigError([f"{directory}: no such hardware profile directory"])
    profiles: list[Profile] = []
    problems: list[str] = []
    for path in sorted(directory.glob("*.toml")):
        try:
            profiles.append(load_profile(path))
        except ConfigError as exc:
            problems.extend(exc.lines)
    if problems:
        raise ConfigError(problems)
    if not profiles:
        raise ConfigError([f"{directory}: no hardware profiles (*.toml)"])
    return sorted(profiles, key=lambda p: (p.priority, p.name))


def select_profile(
    name_or_auto: str,
    devices: Sequence[NamedDevice],
    profiles: Sequence[Profile] | None = None,
) -> Profile:
    """The named profile, or with "auto" the first whose input device is present.

    `profiles` defaults to the shipped `hw_profiles` (see `load_profiles`, `profiles_dir`).
    """
    if profiles is None:
        profiles = load_profiles(PROFILES_DIR)
    if name_or_auto != "auto":
        for profile in profiles:
            if profile.name == name_or_auto:
                return profile
        available = ", ".join(p.name for p in profiles)
        raise ConfigError(
            [f"audio.profile = {name_or_auto!r}: no such hardware profile; one of: {available}"]
        )
    for profile in profiles:
        if profile.is_present(devices):
            return profile
    names = ", ".join(d.name for d in devices if d.max_input_channels > 0) or "none"
    raise ConfigError(
        [f"audio.profile = 'auto': no profile matches the input devices present ({names})"]
    )
