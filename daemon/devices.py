"""The sound devices PortAudio sees, the rates they accept, and resolving a device spec.

sounddevice is imported inside the functions: PortAudio reads the ALSA configuration
(`$HOME/.asoundrc`) when it initialises, which is when sounddevice is imported.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from daemon.backoff import Backoff
from daemon.counters import Counters
from daemon.profiles import Profile, name_matches

log = logging.getLogger(__name__)

PROBE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
Kind = Literal["input", "output"]


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    index: int
    name: str
    hostapi: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float
    input_rates: tuple[int, ...] = ()  # rates accepted for mono int16 capture (if probed)
    output_rates: tuple[int, ...] = ()

    @property
    def is_input(self) -> bool:
        return self.max_input_channels > 0

    @property
    def is_output(self) -> bool:
        return self.max_output_channels > 0


class DeviceNotFoundError(LookupError):
    """A device spec that matches no device; the message lists the devices."""


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """ALSA prints every refused probe to fd 2; a refusal is an answer here, not an error."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _accepted_rates(sd: Any, index: int, kind: Kind) -> tuple[int, ...]:
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    rates = []
    with _quiet_stderr():
        for rate in PROBE_RATES:
            try:
                check(device=index, samplerate=rate, channels=1, dtype="int16")
            except Exception:  # PortAudioError or ValueError: not accepted
                continue
            rates.append(rate)
    return tuple(rates)


def list_devices(probe_rates: bool = True) -> list[DeviceInfo]:
    """All PortAudio devices; with `probe_rates` the rates each accepts (slower: it opens
    every device once per rate, and a device in use may accept none)."""
    import sounddevice as sd

    hostapis = [str(api["name"]) for api in sd.query_hostapis()]
    devices = []
    for raw in sd.query_devices():
        index = int(raw["index"])
        ins, outs = int(raw["max_input_channels"]), int(raw["max_output_channels"])
        devices.append(
            DeviceInfo(
                index=index,
                name=str(raw["name"]),
                hostapi=hostapis[int(raw["hostapi"])],
                max_input_channels=ins,
                max_output_channels=outs,
                default_samplerate=float(raw["default_samplerate"]),
                input_rates=_accepted_rates(sd, index, "input") if probe_rates and ins else (),
                output_rates=(_accepted_rates(sd, index, "output") if probe_rates and outs else ()),
            )
        )
    return devices


def default_device(kind: Kind) -> int | None:
    """PortAudio's default input or output device index, None if there is none."""
    import sounddevice as sd

    index = int(sd.default.device[0 if kind == "input" else 1])
    if index < 0:
        try:
            index = int(sd.query_devices(kind=kind)["index"])
        except Exception:  # PortAudioError / ValueError: no default device
            return None
    return index


def _channels(device: DeviceInfo, kind: Kind) -> int:
    return device.max_input_channels if kind == "input" else device.max_output_channels


def describe_devices(devices: Sequence[DeviceInfo], kind: Kind) -> str:
    usable = [d for d in devices if _channels(d, kind) > 0]
    if not usable:
        return f"no {kind} devices"
    return "; ".join(f"#{d.index} {d.name!r}" for d in usable)


def resolve_device(spec: str | int, kind: Kind, devices: Sequence[DeviceInfo]) -> DeviceInfo:
    """The device a spec names: an index, an exact name, or a case-insensitive substring
    (the first in index order). Raises DeviceNotFoundError listing the devices."""
    usable = [d for d in devices if _channels(d, kind) > 0]
    text = str(spec).strip()
    if isinstance(spec, int) or text.isdigit():
        found = [d for d in usable if d.index == int(text)]
    else:
        exact = [d for d in usable if d.name.casefold() == text.casefold()]
        found = exact or [d for d in usable if name_matches(text, d.name)]
    if not found:
        raise DeviceNotFoundError(
            f"no {kind} device matches {text!r}; {kind} devices: {describe_devices(devices, kind)}"
        )
    if len(found) > 1:
        log.info(
            "%s device %r matches %d devices; using #%d %r",
            kind,
            text,
            len(found),
            found[0].index,
            found[0].name,
        )
    return found[0]


def _rates(rates: tuple[int, ...]) -> str:
    return ",".join(f"{r // 1000}k" if r % 1000 == 0 else f"{r / 1000:g}k" for r in rates) or "-"


def format_devices(devices: Sequence[DeviceInfo], profiles: Sequence[Profile]) -> str:
    """The `roomtranslate devices` listing: devices, rates, and which profile matches."""
    lines = ["Devices:"]
    for d in devices:
        lines.append(
            f"  #{d.index:<3} {d.name}  [{d.hostapi}]  in {d.max_input_channels} ch"
            f" @ {_rates(d.input_rates)} | out {d.max_output_channels} ch"
            f" @ {_rates(d.output_rates)}  (default {d.default_samplerate:g} Hz)"
        )
    lines.append("Hardware profiles (auto picks the first present):")
    chosen = False
    for profile in profiles:
        device = profile.input_device(devices)
        if device is None:
            lines.append(f"  - {profile.name}: not present ({profile.description})")
            continue
        output = profile.output_device(devices)
        out_name = output.name if output is not None else "default output"
        mark = "*" if not chosen else "+"
        chosen = True
        lines.append(
            f"  {mark} {profile.name}: input {device.name!r}, output {out_name!r},"
            f" echo guard {profile.echo_guard} ({profile.description})"
        )
    if not chosen:
        lines.append("  (no profile matches: set audio.profile / audio.input_device)")
    return "\n".join(lines)


RESCAN_INTERVAL_S = 5.0  # at most one re-enumeration this often while a device is missing
RESCAN_MAX_S = 1800.0  # with no change seen in the sound system, rescans back off to this
_ASOUND_SERVER = re.compile(r'\bserver\s+(?:"(?:unix:)?(/[^"]+)"|(?:unix:)?(/[^\s}"]+))')


def sound_system_signature(environ: Mapping[str, str] | None = None) -> tuple[object, ...]:
    """What PortAudio's device list depends on, read cheaply (a few stat calls): the ALSA
    cards and device nodes, the ALSA configuration files, and the sound servers' sockets
    (PulseAudio/PipeWire, and any `server` a pulse PCM in ~/.asoundrc names). A device
    that is plugged in, or a sound server that comes up, changes it."""
    env = os.environ if environ is None else environ
    home = Path(env.get("HOME", "/nonexistent"))
    configs = [home / ".asoundrc", Path("/etc/asound.conf")]
    sockets = [Path(p.removeprefix("unix:")) for p in [env.get("PULSE_SERVER", "")] if p]
    if runtime := env.get("XDG_RUNTIME_DIR"):
        sockets += [Path(runtime) / "pulse" / "native", Path(runtime) / "pipewire-0"]
    with contextlib.suppress(OSError, UnicodeDecodeError):
        found = _ASOUND_SERVER.findall(configs[0].read_text())
        sockets += [Path(quoted or bare) for quoted, bare in found]
    return (
        _text(Path("/proc/asound/cards")),
        tuple(sorted(_names(Path("/dev/snd")))),
        tuple(_stamp(path) for path in configs + sockets),
    )


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def _stamp(path: Path) -> tuple[str, int, int]:
    """(path, inode, mtime) — (path, 0, 0) when it does not exist."""
    try:
        st = path.stat()
    except OSError:
        return str(path), 0, 0
    return str(path), st.st_ino, st.st_mtime_ns


Listener = Callable[[list[DeviceInfo]], None]


class DeviceHost:
    """PortAudio's device list for the whole process, and renewing it safely.

    PortAudio enumerates the devices once, in `Pa_Initialize` (when sounddevice is
    imported): a USB device that appears later, or comes back under another card number,
    is not in that list. Renewing it means `Pa_Terminate` + `Pa_Initialize` (sounddevice's
    `_terminate()` / `_initialize()`), and `Pa_Terminate` closes every stream that is
    still open — under the feet of its owner. So:

    - every PortAudio call that opens a stream or reads the device list runs under
      `lock`, and the capture and playback stages say when their stream is open
      (`opened`) and when it is closed for good (`closed`);
    - a stage that cannot open its device says so (`missing`); a rescan happens (in
      `rescan_if_due`, called by the stages before they open) only while a device is
      missing, NO stream is open, and not more often than every `interval_s`: at once
      (after `interval_s`) when the sound system changed (`sound_system_signature`: a
      card or device node, the ALSA configuration, a sound server's socket), otherwise
      backing off from `interval_s` doubling to `RESCAN_MAX_S` — every Pa_Initialize
      keeps ~12.6 KB inside libasound, so a device missing all day must not mean a
      rescan every few seconds (scripts/soak.py measured it);
    - an open stage gives way (`should_yield`): the speaker closes its stream between
      utterances when the microphone is missing and a rescan is due, and reopens right
      after it; the microphone gives way to a missing speaker only while nobody speaks
      (its caller decides) and at most every `CAPTURE_YIELD_S`.

    After each rescan the listeners get the new list (the daemon re-chooses the profile
    and the output device, in one place: daemon/app.py).
    """

    def __init__(
        self,
        counters: Counters | None = None,
        interval_s: float = RESCAN_INTERVAL_S,
        *,
        signature: Callable[[], object] = sound_system_signature,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.lock = threading.RLock()
        self._counters = counters
        self._interval = interval_s
        self._signature = signature
        self._clock = clock
        self._seen = signature()  # the sound system as the last enumeration saw it
        self._backoff = Backoff(interval_s, max(interval_s, RESCAN_MAX_S))
        self._wait = self._backoff.next()
        self._open: set[Kind] = set()
        self._missing: set[Kind] = set()
        self._last = clock()  # the enumeration at import is fresh
        self._listeners: list[Listener] = []
        self.rescans = 0

    @classmethod
    def fixed(cls) -> DeviceHost:
        """A host that never re-enumerates (a stage used on its own, e.g. by `check`)."""
        return cls(None, interval_s=math.inf)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def opened(self, kind: Kind) -> None:
        """Called with `lock` held, by the code that opened the stream."""
        with self.lock:
            self._open.add(kind)
            self._missing.discard(kind)
            if not self._missing:  # everything found: the next loss rescans promptly
                self._backoff.reset()
                self._wait = self._backoff.next()

    # `closed`, `missing` and `should_yield` do not take the lock (single set operations,
    # atomic under the GIL): the event loop calls them and must not wait while a worker
    # thread holds the lock to open the microphone. `closed` can only make a rescan safer.

    def closed(self, kind: Kind) -> None:
        self._open.discard(kind)

    def missing(self, kind: Kind) -> None:
        self._missing.add(kind)

    def _due(self) -> bool:
        elapsed = self._clock() - self._last
        if elapsed < self._interval:
            return False
        return elapsed >= self._wait or self._signature() != self._seen

    def should_yield(self, kind: Kind) -> bool:
        """The other stage's device is missing and a rescan is due: close `kind`'s stream."""
        return bool(self._missing - {kind}) and self._due()

    def rescan_if_due(self) -> bool:
        """Re-enumerate if a device is missing, no stream is open and it is time."""
        with self.lock:
            if not self._missing or self._open or not self._due():
                return False
            self._last = self._clock()
            self._seen = self._signature()
            self._wait = self._backoff.next()
            if not _reinitialize():
                self._count("device_rescan_failures")
                return False
            self.rescans += 1
            self._count("device_rescans")
            devices = list_devices(probe_rates=False)
            log.info(
                "devices re-enumerated (for the missing %s): inputs %s; outputs %s",
                " and ".join(sorted(self._missing)),
                describe_devices(devices, "input"),
                describe_devices(devices, "output"),
            )
            for listener in self._listeners:
                try:
                    listener(devices)
                except Exception:
                    log.exception("device list listener failed")
            return True

    def _count(self, name: str) -> None:
        if self._counters is not None:
            self._counters.add(name)


def _reinitialize() -> bool:
    """Pa_Terminate until PortAudio is down, then Pa_Initialize: a fresh device list."""
    import sounddevice as sd

    with _quiet_stderr():
        try:
            for _ in range(sd._initialized):  # sounddevice counts its Pa_Initialize calls
                sd._terminate()
        except sd.PortAudioError as exc:
            log.error("PortAudio did not terminate: %s", exc)
        try:
            sd._initialize()
        except sd.PortAudioError as exc:
            log.error("PortAudio did not initialise again: %s; retrying later", exc)
            return False
    return True
