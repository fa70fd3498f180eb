"""Caption events: one JSON event per text update of an utterance, for the displays.

Partial events carry the full text so far (`final: false`); every utterance ends with
exactly one final event (`final: true`) whatever its outcome, so a display can close
the line it was showing. `seq` counts all caption events of the daemon, every language
together (one shared counter), so a display can spot a gap or a duplicate (finals are
delivered at least once). Each final also counts its language's usage and goes to the
language's recent-captions document.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from daemon.config import RoomSettings
from daemon.counters import Counters
from daemon.translator import AUDIO_TOKENS_PER_S
from daemon.values import Outcome, Usage, Utterance

Publish = Callable[[str, Mapping[str, Any], bool], None]
OnFinal = Callable[[str, Mapping[str, Any]], None]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def count_usage(counters: Counters, lang: str, usage: Usage) -> None:
    """Usage of one request, under `usage.<lang>.*`."""
    head = f"usage.{lang}."
    counters.add(head + "prompt_tokens", usage.prompt_tokens)
    counters.add(head + "completion_tokens", usage.completion_tokens)
    counters.add(head + "billed_audio_s_input", usage.input_audio_tokens / AUDIO_TOKENS_PER_S)
    counters.add(head + "billed_audio_s_output", usage.output_audio_tokens / AUDIO_TOKENS_PER_S)


def usage_figures(counters: Counters) -> dict[str, dict[str, float]]:
    """{lang: {prompt_tokens, completion_tokens, billed_audio_s_input, ...}}."""
    figures: dict[str, dict[str, float]] = {}
    for name, value in counters.group("usage").items():
        lang, _, field = name.partition(".")
        rounded = round(value, 1) if field.startswith("billed") else round(value)
        figures.setdefault(lang, {})[field] = rounded
    return figures


class Captions:
    """Builds caption events of one language in utterance order and hands them on.

    `lang` fixes the language (an extra caption language); without it the room's
    `target_lang` at the utterance's first event is used."""

    def __init__(
        self,
        publish: Publish,
        room: Callable[[], RoomSettings],
        *,
        lang: str | None = None,
        seq: Iterator[int] | None = None,
        counters: Counters | None = None,
        on_final: OnFinal | None = None,
    ) -> None:
        self._publish = publish
        self._room = room
        self._lang = lang
        self._seq = seq if seq is not None else itertools.count(1)
        self._counters = counters
        self._on_final = on_final
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
        target = str(event["target_lang"])
        if self._counters is not None and outcome.usage is not None:
            count_usage(self._counters, target, outcome.usage)
        if self._on_final is not None:
            self._on_final(target, event)
        return event

    def _send(
        self, utt: Utterance, text: str, *, final: bool, extra: dict[str, Any]
    ) -> dict[str, Any]:
        if utt.id not in self._langs:
            room = self._room()
            self._langs[utt.id] = (room.source_lang, self._lang or room.target_lang)
        source, target = self._langs[utt.id]
        latency = time.monotonic() - utt.timeline.speech_end_detected
        event: dict[str, Any] = {
            "utterance_id": utt.id,
            "seq": next(self._seq),
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
