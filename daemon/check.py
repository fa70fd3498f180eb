"""`roomtranslate check`: what an installer runs before leaving the room.

One line per check, ✓ or ✗ with the reason:

- config: the configuration loads and validates (every bad field listed; exit 78), and an
  API key is there;
- state: `state_dir` exists and is writable (budget usage, device id);
- input / output: the devices the daemon would choose open at their rates, through the
  daemon's own capture and playback stages (the microphone must deliver audio);
- broker: connects with the configured credentials and TLS (its own client id, no will:
  a running daemon is never disturbed);
- room id: nobody holds `<prefix>/<room_id>/availability` = `online` (read only; the
  retained device claim `<prefix>/<room_id>/device`, when there is one, names the host);
- service: the daemon's own 1 s probe clip (`probe_utterance`, as the start-up key check)
  through its translator (text only, billed as 1 s),
  so the URL, the key and the region are proven; `--no-service` skips it.

Exit status: 0 when every check passed, 78 when the configuration is invalid, else 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import IO, cast

import aiomqtt

from daemon.config import (
    EX_CONFIG,
    ConfigError,
    Settings,
    config_path,
    load_settings,
    resolve_api_key,
)
from daemon.counters import Counters
from daemon.values import SAMPLE_RATE, Frame, Outcome

DEVICE_WAIT_S = 4.0  # the microphone's first frame, the speaker's stream
BROKER_TIMEOUT_S = 5.0
RETAINED_WAIT_S = 1.5  # how long a retained availability may take to arrive
TEST_CLIP_S = 1.0
PASS, FAIL, SKIP = "✓", "✗", "-"


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    mark: str  # PASS, FAIL or SKIP
    detail: str

    @property
    def line(self) -> str:
        return f"{self.mark} {self.name}: {self.detail}"


class _Problems(logging.Handler):
    """Collects the warnings a stage logs while it is tried (the reason of a failure)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def reason(self, fallback: str) -> str:
        return self.messages[-1] if self.messages else fallback


@contextlib.contextmanager
def _collected(*loggers: str) -> Iterator[_Problems]:
    handler = _Problems()
    targets = [logging.getLogger(name) for name in loggers]
    for target in targets:
        target.addHandler(handler)
    try:
        yield handler
    finally:
        for target in targets:
            target.removeHandler(handler)


def check_state_dir(settings: Settings) -> Result:
    """`state_dir` (budget usage, device id) exists and this user can write files in it."""
    path = settings.state_dir
    if not path.is_dir():
        return Result("state", FAIL, f"{path}: no such directory (the unit's StateDirectory)")
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".check-"):
            pass
    except OSError as exc:
        return Result("state", FAIL, f"{path}: not writable by this user: {exc.strerror}")
    return Result("state", PASS, f"{path}: writable")


async def _check_input(settings: Settings, profile: object) -> Result:
    from daemon.capture import Capture
    from daemon.profiles import Profile

    chosen = profile if isinstance(profile, Profile) else None
    frame = SAMPLE_RATE * settings.segmenter.frame_ms // 1000
    capture = Capture(settings.audio, Counters(), profile=chosen, frame_samples=frame)
    with _collected("daemon.capture") as problems:
        # frames() is an async generator: close it, its `finally` closes the stream
        frames = cast(AsyncGenerator[Frame, None], capture.frames())
        try:
            await asyncio.wait_for(anext(frames), DEVICE_WAIT_S)
        except TimeoutError:
            if capture.info is not None:
                return Result("input", FAIL, f"{capture.info.name!r} opened but sent no audio")
            return Result("input", FAIL, problems.reason("cannot open the input device"))
        finally:
            await frames.aclose()
    info = capture.info
    assert info is not None
    resampled = ", resampled to 16 kHz" if info.resampling else ""
    return Result(
        "input", PASS, f"#{info.index} {info.name!r} at {info.rate} Hz{resampled}, audio flowing"
    )


async def _check_output(settings: Settings, output: str | int | None, profile: object) -> Result:
    from daemon.playback import Playback, PlaybackState
    from daemon.profiles import Profile

    fmt = profile.output if isinstance(profile, Profile) else None
    playback = Playback(output, Counters(), fmt=fmt)
    with _collected("daemon.playback") as problems:
        task = asyncio.create_task(playback.run())
        deadline = time.monotonic() + DEVICE_WAIT_S
        # Playback has no "opened" event; its state says it
        while playback.state is PlaybackState.UNAVAILABLE and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        opened = playback.state is not PlaybackState.UNAVAILABLE
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if not opened:
        return Result("output", FAIL, problems.reason("cannot open the output device"))
    return Result(
        "output",
        PASS,
        f"{playback.device_name!r} at {playback.rate} Hz, {playback.channels} channel(s)",
    )


async def check_devices(settings: Settings) -> list[Result]:
    """The input and output devices the daemon would choose, opened by its own stages."""
    from daemon.app import choose_profile, output_spec
    from daemon.devices import list_devices

    devices = list_devices(probe_rates=False)
    try:
        profile = choose_profile(settings, devices)
    except ConfigError as exc:
        reason = "; ".join(exc.lines)
        return [Result("input", FAIL, reason), Result("output", FAIL, reason)]
    output = output_spec(settings, profile, devices)
    return list(
        await asyncio.gather(
            _check_input(settings, profile), _check_output(settings, output, profile)
        )
    )


def _broker_client(settings: Settings) -> aiomqtt.Client:
    from daemon.mqtt import broker_client

    mqtt = settings.mqtt
    return broker_client(
        mqtt,
        f"roomtranslate-check-{os.getpid()}-{mqtt.room_id}",
        keepalive=max(5, mqtt.keepalive_s),
        timeout=BROKER_TIMEOUT_S,
    )


async def _retained(client: aiomqtt.Client, topics: list[str]) -> dict[str, bytes]:
    """The retained messages of `topics` (those that have one), read within RETAINED_WAIT_S."""
    for topic in topics:
        await client.subscribe(topic, qos=1)
    found: dict[str, bytes] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(RETAINED_WAIT_S):
            async for message in client.messages:
                if isinstance(message.payload, bytes):
                    found[str(message.topic)] = message.payload
                if len(found) == len(topics):
                    break
    return found


def _claimed_host(claim: bytes | None) -> str:
    """The `host` of a retained device claim (`<prefix>/<room_id>/device`), "" if none."""
    try:
        host = json.loads(claim)["host"] if claim else ""
    except (ValueError, TypeError, KeyError):
        return ""
    return host if isinstance(host, str) else ""


def _room_result(settings: Settings, availability: bytes | None, claim: bytes | None) -> Result:
    mqtt = settings.mqtt
    topic = f"{mqtt.prefix}/{mqtt.room_id}/availability"
    if availability != b"online":
        last = availability.decode("utf-8", "replace") if availability else "never announced"
        return Result("room id", PASS, f"{mqtt.room_id!r} is free ({topic}: {last})")
    host = _claimed_host(claim)
    if host and host == socket.gethostname():
        who = f"this device's own service ({host}) is online: stop it before checking"
    elif host:
        who = f"another device ({host}) has this room_id"
    else:
        who = "another device has this room_id (or this device's service is running)"
    return Result(
        "room id", FAIL, f"{mqtt.room_id!r} is already online on the broker ({topic}): {who}"
    )


async def check_broker(settings: Settings) -> list[Result]:
    """Connect as the daemon would (own client id, no will); read the room's availability
    and device claim. Nothing is published."""
    mqtt = settings.mqtt
    if not mqtt.enabled:
        reason = "skipped (mqtt.enabled = false)"
        return [Result("broker", SKIP, reason), Result("room id", SKIP, reason)]
    where = f"{mqtt.host}:{mqtt.port}" + (" (TLS)" if mqtt.tls else "")
    who = f" as {mqtt.username!r}" if mqtt.username else ""
    base = f"{mqtt.prefix}/{mqtt.room_id}"
    topics = [f"{base}/availability", f"{base}/device"]
    try:
        async with asyncio.timeout(BROKER_TIMEOUT_S + RETAINED_WAIT_S + 2):
            async with _broker_client(settings) as client:
                found = await _retained(client, topics)
    except aiomqtt.MqttError as exc:
        broker = Result("broker", FAIL, f"{where}{who}: {exc}")
        return [broker, Result("room id", SKIP, "skipped (no broker)")]
    except TimeoutError:
        broker = Result("broker", FAIL, f"{where}{who}: no answer within {BROKER_TIMEOUT_S:g} s")
        return [broker, Result("room id", SKIP, "skipped (no broker)")]
    broker = Result("broker", PASS, f"{where}{who}: connected")
    return [broker, _room_result(settings, found.get(topics[0]), found.get(topics[1]))]


_HINTS = {
    "auth": "the key is wrong, or belongs to the other region (api.base_url)",
    "access_denied": "the key may not use this model",
    "model_not_found": "api.model is not served at api.base_url",
    "account": "the account cannot pay (arrears)",
}


async def check_service(settings: Settings, api_key: str) -> Result:
    """One 1 s test clip through the daemon's own translator, text only, one attempt."""
    from daemon.translator import Translator, probe_utterance

    api = settings.api.model_copy(update={"max_attempts": 1})
    room = settings.room.model_copy(update={"speech": False})
    translator = Translator(api, api_key, Counters())
    started = time.monotonic()
    outcome: Outcome | None = None
    try:
        async with asyncio.timeout(api.request_timeout_s + 5):
            async for event in translator.translate(probe_utterance(), room):
                if isinstance(event, Outcome):
                    outcome = event
    except TimeoutError:
        outcome = Outcome("failed", "timeout", f"no answer within {api.request_timeout_s:g} s")
    finally:
        await translator.aclose()
    elapsed = time.monotonic() - started
    if outcome is None or outcome.kind != "translated":
        reason = outcome.reason if outcome is not None else "no outcome"
        detail = outcome.detail if outcome is not None else ""
        hint = _HINTS.get(reason, detail) or detail
        return Result("service", FAIL, f"{api.base_url}: {reason}" + (f": {hint}" if hint else ""))
    billed = outcome.usage.input_audio_tokens / 12.5 if outcome.usage is not None else 0.0
    return Result(
        "service",
        PASS,
        f"{api.base_url}: key accepted, {TEST_CLIP_S:g} s test clip translated in "
        f"{elapsed:.1f} s (billed {billed:.1f} s)",
    )


async def _run_checks(
    settings: Settings, api_key: str | None, service: bool, show: Callable[[Result], None]
) -> list[Result]:
    results: list[Result] = []

    def add(found: list[Result]) -> None:
        for result in found:
            results.append(result)
            show(result)

    add([check_state_dir(settings)])
    add(await check_devices(settings))
    add(await check_broker(settings))
    if not service:
        add([Result("service", SKIP, "skipped (--no-service)")])
    elif api_key is None:
        add([Result("service", FAIL, "no API key: set DASHSCOPE_API_KEY or api.key_file")])
    else:
        add([await check_service(settings, api_key)])
    return results


def run_check(cli_path: str | None, *, service: bool = True, out: IO[str] = sys.stdout) -> int:
    """Every check, one line each; 0 all passed, 78 bad configuration, 1 otherwise."""

    def show(result: Result) -> None:
        out.write(result.line + "\n")
        out.flush()

    try:
        settings = load_settings(cli_path)
        api_key = resolve_api_key(settings)
    except ConfigError as exc:
        show(Result("config", FAIL, f"{len(exc.lines)} problem(s)"))
        for line in exc.lines:
            out.write(f"    {line}\n")
        return EX_CONFIG
    path = config_path(cli_path, os.environ)
    where = str(path) if path is not None else "defaults"
    room = settings.room
    key_note = "API key present" if api_key is not None else "no API key"
    show(
        Result(
            "config",
            PASS,
            f"{where}: room {settings.mqtt.room_id!r}, {room.source_lang} → "
            f"{room.target_lang}, {key_note}",
        )
    )
    root = logging.getLogger()
    root.setLevel(logging.WARNING)  # the stages' warnings become the reasons, not output
    root.addHandler(logging.NullHandler())
    results = asyncio.run(_run_checks(settings, api_key, service, show))
    return 1 if any(r.mark == FAIL for r in results) else 0
