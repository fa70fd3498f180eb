"""Status: the daemon's state and figures, derived from the counters and the stages.

Nothing here is kept in parallel with the stages: `snapshot()` reads the counters and
asks each stage for its state. `StatusPublisher` sends it on change (at most twice a
second) and at least every `status_interval_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from daemon import __version__
from daemon.config import LiveRoom
from daemon.counters import Counters


class DaemonState(StrEnum):
    """The room's state in the status, derived from `Health` (first match wins)."""

    ERROR = "error"  # the service refused the key: nothing can be translated
    STOPPING = "stopping"
    STARTING = "starting"
    PAUSED = "paused"  # the daily budget is used up
    DEGRADED = "degraded"  # a problem is reported
    SPEAKING = "speaking"  # our translation plays
    TRANSLATING = "translating"
    HEARING = "hearing"  # someone speaks
    LISTENING = "listening"


MIN_INTERVAL_S = 0.5


@dataclass(slots=True)
class Health:
    """Conditions the stages report; any problem makes the state `degraded`."""

    started: bool = False
    hearing: bool = False
    translating: bool = False
    speaking: bool = False
    problems: dict[str, str] = field(default_factory=dict)  # what -> why
    fatal: str = ""
    stopping: bool = False
    paused: bool = False  # the daily budget is used up: nothing is sent
    last_error: str = ""
    last_error_at: float = 0.0

    def problem(self, what: str, why: str | None) -> None:
        """Set (why) or clear (None) a degraded condition."""
        if why is None:
            self.problems.pop(what, None)
        elif self.problems.get(what) != why:
            self.problems[what] = why
            self.error(f"{what}: {why}")

    def error(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = time.time()

    def state(self) -> DaemonState:
        if self.fatal:
            return DaemonState.ERROR
        if self.stopping:
            return DaemonState.STOPPING
        if not self.started:
            return DaemonState.STARTING
        if self.paused:
            return DaemonState.PAUSED
        if self.problems:
            return DaemonState.DEGRADED
        if self.speaking:
            return DaemonState.SPEAKING
        if self.translating:
            return DaemonState.TRANSLATING
        return DaemonState.HEARING if self.hearing else DaemonState.LISTENING


def _figures(counters: Counters) -> dict[str, Any]:
    c = counters.snapshot()

    def n(name: str) -> int:
        return round(c.get(name, 0))

    return {
        "utterances": n("utterances"),
        "translated": n("outcomes.translated"),
        "failed": {k: round(v) for k, v in counters.group("failed").items()},
        "dropped": {k: round(v) for k, v in counters.group("dropped").items()},
        "noise_dropped": n("noise_dropped"),
        "input_overflows": n("input_overflows"),
        "output_underflows": n("output_underflows"),
        "ring_overruns": n("ring_overruns"),
        "ring_overrun_samples": n("ring_overrun_samples"),
        "echo_gated_frames": n("echo_gated_frames"),
        "echo_dropped": n("echo_dropped"),
        "echo_residual_clips": n("echo_residual_clips"),
        "screen_errors": n("screen_errors"),
        "echo_reference_slips": n("echo_reference_slips"),
        "echo_fallbacks": n("echo_fallbacks"),
        "echo_gates_reopened": n("echo_gates_reopened"),
        "echo_delay_moves": n("echo_delay_moves"),
        "echo_canceller_resets": n("echo_canceller_resets"),
        "playback_ducks": n("playback_ducks"),
        "playback_skipped": n("playback_skipped_utterances"),
        "service_errors": {k: round(v) for k, v in counters.group("service_errors").items()},
        "mqtt": {
            "disconnects": n("mqtt_disconnects"),
            "outbox_dropped": n("mqtt_outbox_dropped"),
            "partials_dropped": n("mqtt_partials_dropped"),
            "replies_dropped": n("mqtt_replies_dropped"),
            "handler_errors": n("mqtt_handler_errors"),
            "bad_claims": n("mqtt_bad_claims"),
        },
        "device_reopens": {"input": n("capture_reopens"), "output": n("playback_reopens")},
        "device_rescans": n("device_rescans"),
        "tokens": {"prompt": n("tokens.prompt"), "completion": n("tokens.completion")},
        "config": {k: round(v) for k, v in counters.group("config").items()},
        "billed_audio_s": {
            "input": round(c.get("billed_audio_s.input", 0.0), 1),
            "output": round(c.get("billed_audio_s.output", 0.0), 1),
        },
    }


@dataclass(slots=True)
class StatusSource:
    """Everything a status is derived from."""

    counters: Counters
    room: LiveRoom
    health: Health
    devices: Callable[[], Mapping[str, str]]
    queue: Callable[[], Mapping[str, int]]
    refresh: Callable[[], None] = lambda: None  # bring `health` up to date first
    # More sections from other stages (service load, caption languages): {name: value}.
    extra: Callable[[], Mapping[str, Any]] = dict
    started_at: float = field(default_factory=time.monotonic)

    def snapshot(self) -> dict[str, Any]:
        self.refresh()
        room = self.room.current
        return {
            "state": self.health.state().value,
            "problems": dict(self.health.problems),
            "source_lang": room.source_lang,
            "target_lang": room.target_lang,
            "caption_langs": list(room.caption_langs),
            "voice": room.voice,
            "speech": room.speech,
            "volume": room.volume,
            "mute": room.mute,
            "devices": dict(self.devices()),
            "queue": dict(self.queue()),
            "counters": _figures(self.counters),
            "last_error": self.health.last_error,
            "uptime_s": round(time.monotonic() - self.started_at),
            "version": __version__,
            **self.extra(),
        }


class StatusPublisher:
    """Publishes the status on change (at most every 0.5 s) and every `interval_s` anyway."""

    def __init__(
        self,
        source: StatusSource,
        publish: Callable[[Mapping[str, Any]], None],
        interval_s: float,
    ) -> None:
        self._source = source
        self._publish = publish
        self._interval = interval_s

    async def run(self) -> None:
        last: dict[str, Any] | None = None
        last_sent = 0.0
        while True:
            status = self._source.snapshot()
            compare = {k: v for k, v in status.items() if k != "uptime_s"}
            now = time.monotonic()
            if compare != last or now - last_sent >= self._interval:
                self._publish(status)
                last, last_sent = compare, now
            await asyncio.sleep(MIN_INTERVAL_S)
