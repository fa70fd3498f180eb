"""The service's wire protocol, response side: the SSE events of a streamed reply, each
with the delay before it, and how a streaming fault reshapes them."""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from daemon.simulator.faults import Settings
from daemon.simulator.protocol import ClipRequest
from daemon.simulator.speech import (
    OUT_RATE,
    audio_tokens,
    speech_library,
    speech_samples,
    text_pieces,
    tone_samples,
)

AUDIO_EXPIRY_S = 3600

Ending = Literal["complete", "abort", "stall"]


@dataclass(frozen=True)
class Event:
    """One SSE event, sent after waiting ``delay_s``."""

    kind: Literal["text", "transcript", "audio", "finish", "usage", "done", "error", "garbage"]
    delay_s: float
    payload: str

    def frame(self) -> bytes:
        return f"data: {self.payload}\n\n".encode()


class ChunkFactory:
    """Builds ``chat.completion.chunk`` payloads sharing one id, model and timestamp."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4()}"
        self.model = model
        self.created = int(time.time())

    def _wrap(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return self._wrap([choice])

    def usage(self, usage: dict[str, Any]) -> str:
        return self._wrap([], usage=usage)


def usage_for(clip: ClipRequest) -> dict[str, Any]:
    """Usage block: audio at 12.5 tokens/s (min 1 s), text tokens = caption words."""
    prompt_audio = audio_tokens(clip.duration_s)
    out_audio = audio_tokens(clip.duration_s) if clip.want_audio else 0
    out_text = len(clip.caption.split())
    return {
        "prompt_tokens": prompt_audio,
        "completion_tokens": out_audio + out_text,
        "total_tokens": prompt_audio + out_audio + out_text,
        "prompt_tokens_details": {"audio_tokens": prompt_audio, "text_tokens": 0},
        "completion_tokens_details": {"audio_tokens": out_audio, "text_tokens": out_text},
    }


def split_audio(pcm_bytes: bytes, chunk_bytes: int) -> list[bytes]:
    """Split at odd byte offsets (first piece is one byte short) so samples straddle."""
    even = max(2, chunk_bytes - chunk_bytes % 2)
    first = min(even - 1, max(len(pcm_bytes) - 1, 1))
    pieces = [pcm_bytes[:first]]
    pieces += [pcm_bytes[i : i + even] for i in range(first, len(pcm_bytes), even)]
    return [p for p in pieces if p]


def build_plan(clip: ClipRequest, settings: Settings, jitter_s: float) -> list[Event]:
    """Every event of a complete, fault-free response, with its delay."""
    factory = ChunkFactory(clip.model)
    gap = settings.chunk_ms / 1000.0
    plan: list[Event] = []
    for i, piece in enumerate(text_pieces(clip.caption)):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        delay = settings.first_text_ms / 1000.0 + jitter_s if i == 0 else gap
        plan.append(Event("text", delay, factory.delta(delta)))
    if clip.want_audio:
        plan += _audio_events(clip, settings, factory)
    plan.append(Event("finish", gap, factory.delta({}, "stop")))
    if clip.include_usage:
        plan.append(Event("usage", 0.0, factory.usage(usage_for(clip))))
    plan.append(Event("done", 0.0, "[DONE]"))
    return plan


def _audio_events(clip: ClipRequest, settings: Settings, factory: ChunkFactory) -> list[Event]:
    gap = settings.chunk_ms / 1000.0
    meta = {"id": f"audio_{uuid.uuid4()}", "expires_at": int(time.time()) + AUDIO_EXPIRY_S}
    first = {"audio": {**meta, "transcript": clip.caption}}
    events = [Event("transcript", settings.first_audio_ms / 1000.0, factory.delta(first))]
    if settings.speech_dir:
        speech = speech_samples(clip.digest, clip.duration_s, speech_library(settings.speech_dir))
    else:
        speech = tone_samples(clip.digest, clip.duration_s)
    pcm = speech.astype("<i2").tobytes()
    chunk_bytes = round(settings.audio_chunk_ms / 1000.0 * OUT_RATE) * 2
    for piece in split_audio(pcm, chunk_bytes):
        data = base64.b64encode(piece).decode("ascii")
        events.append(Event("audio", gap, factory.delta({"audio": {**meta, "data": data}})))
    return events


def stream_error_payload() -> str:
    error = {"message": "An internal error has occured.", "type": "internal_error"}
    return json.dumps({"error": {**error, "code": "InternalError"}})


def apply_fault(plan: list[Event], fault: str) -> tuple[list[Event], Ending]:
    """Reshape a complete plan for a streaming fault; say how the stream ends."""
    texts = [e for e in plan if e.kind == "text"]
    if fault == "cut0":
        return [], "abort"
    if fault == "cut":
        audio = [e for e in plan if e.kind == "audio"][:1]
        return texts[: max(1, len(texts) // 2)] + audio, "abort"
    if fault == "stall":
        return texts[:1], "stall"
    if fault == "stream_error":
        error = Event("error", 0.0, stream_error_payload())
        return [texts[0], error, Event("done", 0.0, "[DONE]")], "complete"
    if fault == "garbage":
        garbage = Event("garbage", 0.0, '{"choices": [{"delta": {"content": "unterminated')
        return [garbage, *plan], "complete"
    return plan, "complete"
