"""Caption events: one JSON event per text update of an utterance, for the displays.

Partial events carry the full text so far (`final: false`); every utterance ends with
exactly one final event (`final: true`) whatever its outcome, so a display can close
the line it was showing. `seq` counts all caption events of the daemon, so a display can
spot a gap or a duplicate (finals are delivered at least once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from daemon.config import RoomSettings
from daemon.values import Outcome, Utterance

Publish = Callable[[str, Mapping[str, Any], bool], None]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class Captions:
    """Builds caption events in utterance order and hands them to `publish`."""

    def __init__(self, publish: Publish, room: Callable[[], RoomSettings]) -> None:
        self._publish = publish
        self._room = room
        self._seq = 0
        self._text: dict[int, str] = {}
        self._langs: dict[int, tuple[str, str]] = {}

    def partial(self, utt: Utterance, delta: str) -> None:
        text = self._text.get(utt.id, "") + delta
        self._text[utt.id] = text
        self._send(utt, text, final=False, extra={})

    def final(self, utt: Utterance, outcome: Outcome) -> dict[str, Any]:
        text = outcome.text or self._text.get(utt.id, "")
        extra = {
            "outcome": outcome.kind,
            "complete": outcome.kind == "translated",
            "reason": outcome.reason,
        }
        event = self._send(utt, text, final=True, extra=extra)
        self._text.pop(utt.id, None)
        self._langs.pop(utt.id, None)
        return event

    def _send(
        self, utt: Utterance, text: str, *, final: bool, extra: dict[str, Any]
    ) -> dict[str, Any]:
        if utt.id not in self._langs:
            room = self._room()
            self._langs[utt.id] = (room.source_lang, room.target_lang)
        source, target = self._langs[utt.id]
        self._seq += 1
        latency = time.monotonic() - utt.timeline.speech_end_detected
        event: dict[str, Any] = {
            "utterance_id": utt.id,
            "seq": self._seq,
            "final": final,
            "text": text,
            "source_lang": source,
            "target_lang": target,
            "speech_start": iso(utt.wall_start),
            "speech_end": iso(utt.wall_end),
            "latency_ms": round(latency * 1000),
            **extra,
        }
        self._publish(target, event, final)
        return event
