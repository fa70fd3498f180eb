"""Local stand-in for Alibaba's `qwen3-livetranslate-flash` (OpenAI-compatible, SSE).

Run with ``python -m daemon.simulator`` (or ``roomtranslate simulator``). It validates
requests the way the real service does (see ``../shared/api/CONTRACT.md``), streams a
deterministic "translation" derived from the clip's PCM, and can inject latency and
faults. Control endpoints under ``/_sim/`` expose stats and change settings at runtime.

The caption for a clip is ``caption_text(target, duration, clip_digest(pcm))``; the
synthesized speech is a sine tone at ``tone_hz(digest)``, so a recording of the speaker
tells which clip played; with ``--speech-dir DIR`` it is real speech instead (a stretch
of one of DIR's recordings, chosen by the digest), for echo tests that need our own
translation to sound like speech in the room.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import hashlib
import io
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import soundfile as sf

API_PREFIX = "/compatible-mode/v1"
CHAT_PATH = f"{API_PREFIX}/chat/completions"
MODELS = frozenset({"qwen3-livetranslate-flash", "qwen3-livetranslate-flash-2025-12-01"})
# The service's own tables, copied from CONTRACT.md on purpose rather than imported from
# daemon.languages: the simulator stands in for the service, so a mistake in the
# daemon's tables shows up as a rejected request instead of being shared by both sides.
AUDIO_LANGS = ("en", "zh", "ru", "fr", "de", "pt", "es", "it", "ko", "ja", "yue")
TEXT_ONLY_LANGS = ("id", "vi", "th", "ar", "hi", "el", "tr")
LANGS = frozenset(AUDIO_LANGS + TEXT_ONLY_LANGS)
_MULTI = frozenset({"zh", "en", "fr", "de", "ru", "it", "es", "pt", "ja", "ko"})
VOICES: Mapping[str, frozenset[str]] = {
    **dict.fromkeys(("Cherry", "Ethan", "Nofish"), _MULTI),
    **dict.fromkeys(("Jada", "Dylan", "Sunny", "Peter", "Eric"), frozenset({"zh"})),
    "Kiki": frozenset({"yue"}),
}
DECODABLE_FORMATS = frozenset({"wav", "flac", "ogg"})
INPUT_FORMATS = frozenset({"wav", "mp3", "flac", "aac", "ogg", "opus", "m4a", "wma", "amr"})
MIME_ALIASES: Mapping[str, str] = {
    "x-wav": "wav",
    "wave": "wav",
    "vnd.wave": "wav",
    "x-flac": "flac",
    "mpeg": "mp3",
}
MAX_B64_CHARS = 10 * 1024 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
MIN_RATE, MAX_RATE = 8000, 48000
OUT_RATE = 24000
TONE_AMPLITUDE = 0.25
FADE_S = 0.010
TOKENS_PER_AUDIO_S = 12.5
AUDIO_EXPIRY_S = 3600

FAULTS = ("ok", "429", "500", "401", "403", "cut", "cut0", "stream_error", "stall", "garbage")
_DATA_URI = re.compile(r"data:audio/([A-Za-z0-9.+-]+);base64,(.*)", re.DOTALL)
_NUMERIC_SETTINGS = (
    "first_text_ms",
    "first_audio_ms",
    "chunk_ms",
    "jitter_ms",
    "retry_after",
    "stall_s",
    "audio_chunk_ms",
)

Pcm = npt.NDArray[np.int16]
Ending = Literal["complete", "abort", "stall"]


# --------------------------------------------------------------------------- clip maths


def clip_digest(pcm: Pcm) -> str:
    """First 8 hex digits of sha256 over the clip's mono int16 little-endian PCM."""
    data = np.ascontiguousarray(pcm, dtype="<i2").tobytes()
    return hashlib.sha256(data).hexdigest()[:8]


def caption_text(target: str, duration_s: float, digest: str) -> str:
    """The simulated translation of a clip."""
    return f"[{target}] clip {duration_s:.2f}s #{digest}"


def tone_hz(digest: str) -> int:
    """Frequency of the simulated speech for a clip: 300..1050 Hz in 50 Hz steps."""
    return 300 + (int(digest, 16) % 16) * 50


def tone_samples(digest: str, duration_s: float) -> Pcm:
    """Simulated speech: 24 kHz mono int16 sine, 0.25 full scale, 10 ms linear fades."""
    n = round(duration_s * OUT_RATE)
    t = np.arange(n, dtype=np.float64) / OUT_RATE
    wave = TONE_AMPLITUDE * np.sin(2.0 * np.pi * tone_hz(digest) * t)
    fade_n = min(round(FADE_S * OUT_RATE), n // 2)
    if fade_n > 0:
        ramp = np.arange(fade_n, dtype=np.float64) / fade_n
        wave[:fade_n] *= ramp
        wave[n - fade_n :] *= ramp[::-1]
    return np.round(wave * 32767.0).astype(np.int16)


SPEECH_RMS = 0.1  # recordings used as speech are levelled to this RMS (-20 dBFS)


@functools.lru_cache(maxsize=4)
def speech_library(directory: str) -> tuple[Pcm, ...]:
    """The WAV recordings of `directory` (not `noise_*`), 24 kHz mono int16, levelled."""
    import soxr

    voices: list[Pcm] = []
    for path in sorted(Path(directory).glob("*.wav")):
        if path.name.startswith("noise_"):
            continue
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        mono = data.mean(axis=1)
        if rate != OUT_RATE:
            mono = soxr.resample(mono, rate, OUT_RATE)
        rms = float(np.sqrt(np.mean(mono * mono))) if len(mono) else 0.0
        if rms > 1e-4:
            voices.append(
                np.clip(np.round(mono / rms * SPEECH_RMS * 32767), -32768, 32767).astype(np.int16)
            )
    if not voices:
        raise ValueError(f"no speech recordings (*.wav) in {directory}")
    return tuple(voices)


def speech_samples(digest: str, duration_s: float, library: tuple[Pcm, ...]) -> Pcm:
    """Simulated speech from real recordings: as long as the clip, chosen by its digest."""
    n = round(duration_s * OUT_RATE)
    value = int(digest, 16)
    voice = library[value % len(library)]
    reps = -(-n // len(voice)) + 1
    looped = np.tile(voice, reps)
    start = (value // len(library)) % len(voice)
    return looped[start : start + n].copy()


def audio_tokens(duration_s: float) -> int:
    """Billed tokens for audio: 12.5 per second, at least one second."""
    return round(TOKENS_PER_AUDIO_S * max(1.0, duration_s))


def text_pieces(text: str) -> list[str]:
    """Split on spaces, keeping each space at the end of its piece."""
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


def decode_clip(raw: bytes) -> tuple[Pcm, int]:
    """Decode WAV/FLAC/OGG bytes to mono int16 PCM and its sample rate.

    Samples are read with soundfile's own ``dtype='int16'`` conversion; several channels
    are averaged and rounded to the nearest integer.
    """
    data, rate = sf.read(io.BytesIO(raw), dtype="int16", always_2d=True)
    frames = np.asarray(data, dtype=np.int16)
    if frames.shape[1] == 1:
        return np.ascontiguousarray(frames[:, 0]), int(rate)
    mixed = np.round(frames.astype(np.float64).mean(axis=1))
    return mixed.astype(np.int16), int(rate)


# ------------------------------------------------------------------------------ errors


class ApiError(Exception):
    """An error answered with the real service's status and JSON error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type_
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def body(self, request_id: str) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": {**error, "code": self.code}, "request_id": request_id}


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, "invalid_parameter_error", message, param=param)


def fault_error(fault: str, retry_after: float) -> ApiError:
    """The HTTP error a status fault answers with."""
    if fault == "429":
        return ApiError(
            429,
            "Throttling.RateQuota",
            "Requests rate limit exceeded, please try again later.",
            type_="rate_limit_error",
            headers={"Retry-After": _fmt_seconds(retry_after)},
        )
    if fault == "500":
        return ApiError(
            500, "InternalError", "An internal error has occured.", type_="internal_error"
        )
    if fault == "401":
        return ApiError(401, "invalid_api_key", "Incorrect API key provided.")
    return ApiError(403, "access_denied", "Access denied: no access to this model.")


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# -------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ClipRequest:
    """A request that passed validation, with its decoded clip."""

    model: str
    target: str
    source: str | None
    modalities: tuple[str, ...]
    voice: str | None
    include_usage: bool
    pcm: Pcm = field(repr=False)
    rate: int

    @property
    def want_audio(self) -> bool:
        return "audio" in self.modalities

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / self.rate

    @property
    def digest(self) -> str:
        return clip_digest(self.pcm)

    @property
    def caption(self) -> str:
        return caption_text(self.target, self.duration_s, self.digest)


def check_auth(header: str | None, api_key: str | None) -> None:
    """401 unless the request carries a bearer key (the configured one, if any)."""
    scheme, _, key = (header or "").strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or (api_key is not None and key != api_key):
        raise ApiError(401, "invalid_api_key", "Incorrect API key provided.")


def parse_request(body: bytes) -> ClipRequest:
    """Validate a chat-completions body as the real service would; raise ApiError."""
    try:
        req = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad_request("The request body is not valid JSON.") from None
    if not isinstance(req, dict):
        raise bad_request("The request body must be a JSON object.")
    model = _check_model(req.get("model"))
    fmt, b64 = _check_messages(req.get("messages"))
    target, source = _check_translation(req.get("translation_options"))
    modalities = _check_modalities(req.get("modalities", ["text"]))
    voice = _check_audio(req.get("audio"), target) if "audio" in modalities else None
    _check_stream(req.get("stream"), req.get("speech_rate"))
    include_usage = _check_stream_options(req.get("stream_options"))
    pcm, rate = _decode_payload(fmt, b64)
    return ClipRequest(model, target, source, modalities, voice, include_usage, pcm, rate)


def _check_model(model: object) -> str:
    if not isinstance(model, str) or not model:
        raise bad_request("Required parameter 'model' missing.", "model")
    if model not in MODELS:
        raise ApiError(
            404, "ModelNotFound", f"The model `{model}` does not exist or you do not have access."
        )
    return model


def _check_messages(messages: object) -> tuple[str, str]:
    if not isinstance(messages, list) or len(messages) != 1:
        raise bad_request("messages must hold exactly one user message.", "messages")
    message = messages[0]
    if not isinstance(message, dict) or message.get("role") != "user":
        raise bad_request("Only a single message with role 'user' is supported.", "messages")
    content = message.get("content")
    if not isinstance(content, list) or len(content) != 1:
        raise bad_request("content must be a list with one input_audio part.", "content")
    part = content[0]
    if not isinstance(part, dict) or part.get("type") != "input_audio":
        raise bad_request("The content part must be of type 'input_audio'.", "content")
    audio = part.get("input_audio")
    if not isinstance(audio, dict):
        raise bad_request("input_audio must be an object.", "input_audio")
    return _check_data_uri(audio.get("data"), audio.get("format"))


def _check_data_uri(data: object, fmt: object) -> tuple[str, str]:
    if not isinstance(fmt, str) or fmt.lower() not in INPUT_FORMATS:
        raise bad_request(f"Unsupported input_audio.format: {fmt!r}.", "input_audio.format")
    match = _DATA_URI.fullmatch(data) if isinstance(data, str) else None
    if match is None:
        raise bad_request(
            "input_audio.data must be a data URI 'data:audio/<format>;base64,<data>'.",
            "input_audio.data",
        )
    subtype = match.group(1).lower()
    if MIME_ALIASES.get(subtype, subtype) != fmt.lower():
        raise bad_request(
            f"The data URI type audio/{subtype} does not match format '{fmt}'.",
            "input_audio.format",
        )
    return fmt.lower(), match.group(2)


def _check_translation(options: object) -> tuple[str, str | None]:
    if not isinstance(options, dict):
        raise bad_request("translation_options is required.", "translation_options")
    target = options.get("target_lang")
    if target is None:
        raise bad_request(
            "translation_options.target_lang is required.", "translation_options.target_lang"
        )
    _check_lang(target, "target_lang")
    source = options.get("source_lang")
    if source is not None:
        _check_lang(source, "source_lang")
    return str(target), None if source is None else str(source)


def _check_lang(code: object, name: str) -> None:
    if not isinstance(code, str) or code not in LANGS:
        raise bad_request(f"Unsupported language code {code!r}.", f"translation_options.{name}")


def _check_modalities(modalities: object) -> tuple[str, ...]:
    if modalities not in (["text"], ["text", "audio"]):
        raise bad_request('modalities must be ["text"] or ["text", "audio"].', "modalities")
    assert isinstance(modalities, list)
    return tuple(str(m) for m in modalities)


def _check_audio(audio: object, target: str) -> str:
    if target not in AUDIO_LANGS:
        raise bad_request(f"Audio output is not supported for target language '{target}'.")
    if not isinstance(audio, dict) or not audio.get("voice"):
        raise bad_request("audio.voice is required when audio output is requested.", "audio")
    voice = audio["voice"]
    allowed = [v for v, langs in VOICES.items() if target in langs]
    if voice not in allowed:
        raise bad_request(
            f"Voice {voice!r} does not support '{target}'; use one of: {', '.join(allowed)}.",
            "audio.voice",
        )
    if audio.get("format", "wav") != "wav":
        raise bad_request("audio.format only supports 'wav'.", "audio.format")
    return str(voice)


def _check_stream(stream: object, speech_rate: object) -> None:
    if stream is not True:
        raise bad_request("This model only supports streaming output: set stream=true.", "stream")
    if speech_rate is None:
        return
    if not isinstance(speech_rate, int | float) or not 0.5 <= speech_rate <= 2.0:
        raise bad_request("speech_rate must be between 0.5 and 2.0.", "speech_rate")


def _check_stream_options(options: object) -> bool:
    if options is None:
        return False
    if not isinstance(options, dict):
        raise bad_request("stream_options must be an object.", "stream_options")
    return options.get("include_usage") is True


def _decode_payload(fmt: str, b64: str) -> tuple[Pcm, int]:
    if len(b64) >= MAX_B64_CHARS:
        raise bad_request("The base64 audio payload must be smaller than 10 MB.", "input_audio")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("input_audio.data is not valid base64.", "input_audio.data") from None
    if fmt not in DECODABLE_FORMATS:
        raise bad_request(f"The audio could not be decoded (format '{fmt}').", "input_audio")
    try:
        pcm, rate = decode_clip(raw)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        raise bad_request("The audio could not be decoded.", "input_audio") from None
    if not MIN_RATE <= rate <= MAX_RATE:
        raise bad_request(f"Audio sample rate {rate} Hz is outside 8000-48000 Hz.", "input_audio")
    if len(pcm) == 0:
        raise bad_request("The audio is empty.", "input_audio")
    return pcm, rate


# ------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class Settings:
    """Latency and fault parameters, changeable at runtime."""

    first_text_ms: float = 50.0
    first_audio_ms: float = 50.0
    chunk_ms: float = 10.0
    jitter_ms: float = 0.0
    retry_after: float = 1.0
    stall_s: float = 30.0
    audio_chunk_ms: float = 100.0
    speech_dir: str = ""  # speak with recordings from here instead of tones
    keep_clips: str = ""  # write every clip received to <n>-<digest>.wav here


def check_faults(faults: object) -> list[str]:
    """Validate a fault list; raise ValueError naming a bad entry."""
    if not isinstance(faults, list) or not all(isinstance(f, str) for f in faults):
        raise ValueError("faults must be a list of strings")
    for fault in faults:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    return list(faults)


class SimState:
    """All mutable simulator state, guarded by one lock."""

    def __init__(
        self, settings: Settings, faults: Iterable[str], seed: int, api_key: str | None
    ) -> None:
        self.api_key = api_key
        self._lock = threading.Lock()
        self._settings = settings
        self._faults: deque[str] = deque(faults)
        self._rng = random.Random(seed)
        self._requests = 0
        self._by_status: Counter[str] = Counter()
        self._clips: list[dict[str, Any]] = []

    @property
    def settings(self) -> Settings:
        with self._lock:
            return self._settings

    def admit(self, clip: ClipRequest, header_fault: str | None) -> tuple[str, float]:
        """Pick the fault for a valid request, record its clip; return (fault, jitter_s)."""
        with self._lock:
            if header_fault is not None:
                fault = header_fault
            else:
                fault = self._faults.popleft() if self._faults else "ok"
            jitter_s = self._rng.uniform(0.0, self._settings.jitter_ms) / 1000.0
            self._clips.append(_clip_record(clip, fault))
            if self._settings.keep_clips:
                name = f"{len(self._clips):04d}-{clip.digest}.wav"
                sf.write(str(Path(self._settings.keep_clips) / name), clip.pcm, clip.rate)
            return fault, jitter_s

    def count(self, status: int) -> None:
        with self._lock:
            self._requests += 1
            self._by_status[str(status)] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "by_status": dict(self._by_status),
                "faults_left": list(self._faults),
                "clips": [dict(c) for c in self._clips],
                "settings": asdict(self._settings),
            }

    def control(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a control request; raise ValueError if any part is bad (nothing applied)."""
        unknown = set(changes) - {"faults", *_NUMERIC_SETTINGS}
        if unknown:
            raise ValueError(f"unknown control keys: {', '.join(sorted(unknown))}")
        faults = check_faults(changes["faults"]) if "faults" in changes else None
        numbers = {k: _non_negative(k, v) for k, v in changes.items() if k != "faults"}
        with self._lock:
            self._settings = replace(self._settings, **numbers)  # type: ignore[arg-type]
            if faults is not None:
                self._faults = deque(faults)
        return self.snapshot()

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self._requests = 0
            self._by_status.clear()
            self._clips.clear()


def _non_negative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a non-negative number")
    if name == "audio_chunk_ms" and value <= 0:
        raise ValueError("audio_chunk_ms must be positive")
    return float(value)


def _clip_record(clip: ClipRequest, fault: str) -> dict[str, Any]:
    return {
        "digest": clip.digest,
        "duration_s": clip.duration_s,
        "rate": clip.rate,
        "target": clip.target,
        "source": clip.source,
        "voice": clip.voice,
        "modalities": list(clip.modalities),
        "fault": fault,
    }


# ---------------------------------------------------------------------------- SSE plan


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


# ----------------------------------------------------------------------------- handler


class SimServer(ThreadingHTTPServer):
    """HTTP server carrying the simulator's state and a stop event for its handlers.

    `wait(seconds)` is how a response waits before each event and while it stalls; it
    returns True when the server is stopping. The default waits on the stop event; a test
    passes its own to see the waits without spending them.
    """

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        state: SimState,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        self.state = state
        self.stopping = threading.Event()
        self.wait = wait or self.stopping.wait
        super().__init__(address, SimHandler)


class SimHandler(BaseHTTPRequestHandler):
    """Routes the chat-completions endpoint and the ``/_sim/`` control endpoints."""

    protocol_version = "HTTP/1.1"
    server_version = "qwen-sim/1.0"
    server: SimServer

    def setup(self) -> None:
        super().setup()
        self._status = 0
        self._digest = "-"

    # routing ------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route({"/_sim/stats": self._stats})

    def do_POST(self) -> None:
        routes: dict[str, Callable[[], None]] = {
            CHAT_PATH: self._chat,
            "/_sim/control": self._control,
            "/_sim/reset": self._reset,
        }
        self._route(routes)

    def _route(self, routes: Mapping[str, Callable[[], None]]) -> None:
        self._status, self._digest = 0, "-"
        path = self.path.split("?", 1)[0]
        handler = routes.get(path)
        try:
            if handler is None:
                self._read_body()
                self._send_api_error(ApiError(404, "NotFound", f"No route for {path}."))
            else:
                handler()
        except ApiError as err:
            self._send_api_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self._log_line(path)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silence the default access log; ``_log_line`` writes one line per request."""

    def _log_line(self, path: str) -> None:
        sys.stderr.write(f"{self.command} {path} {self._status or '-'} {self._digest}\n")
        sys.stderr.flush()

    # control endpoints --------------------------------------------------------------

    def _stats(self) -> None:
        self._send_json(200, self.server.state.snapshot())

    def _control(self) -> None:
        try:
            changes = json.loads(self._read_body() or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("control body must be a JSON object")
            snapshot = self.server.state.control(changes)
        except ValueError as exc:
            self._send_api_error(bad_request(str(exc)))
            return
        self._send_json(200, snapshot)

    def _reset(self) -> None:
        self._read_body()
        self.server.state.reset()
        self._send_json(200, self.server.state.snapshot())

    # chat completions ---------------------------------------------------------------

    def _chat(self) -> None:
        state = self.server.state
        try:
            body = self._read_body()
            check_auth(self.headers.get("Authorization"), state.api_key)
            clip = parse_request(body)
            header_fault = self._header_fault()
        except ApiError as err:
            state.count(err.status)
            self._send_api_error(err)
            return
        self._digest = clip.digest
        fault, jitter_s = state.admit(clip, header_fault)
        settings = state.settings
        if fault in ("429", "500", "401", "403"):
            failure = fault_error(fault, settings.retry_after)
            state.count(failure.status)
            self._send_api_error(failure)
            return
        state.count(200)
        plan, ending = apply_fault(build_plan(clip, settings, jitter_s), fault)
        self._stream(plan, ending, settings.stall_s)

    def _header_fault(self) -> str | None:
        fault = self.headers.get("X-Sim-Fault")
        if fault is None or not fault.strip():
            return None
        if fault.strip() not in FAULTS:
            raise bad_request(f"Unknown X-Sim-Fault {fault!r}.")
        return fault.strip()

    def _stream(self, plan: list[Event], ending: Ending, stall_s: float) -> None:
        self._status = 200
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Request-Id", str(uuid.uuid4()))
        self.end_headers()
        for event in plan:
            if self.server.wait(event.delay_s):
                ending = "abort"
                break
            self._write_chunk(event.frame())
        if ending == "stall":
            self.server.wait(stall_s)
        if ending == "complete":
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._abort()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _abort(self) -> None:
        """Close the connection mid-body: no terminating chunk."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # plumbing -----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(413, "RequestTooLarge", "Request body too large or malformed length.")
        return self.rfile.read(length) if length else b""

    def _send_api_error(self, err: ApiError) -> None:
        request_id = str(uuid.uuid4())
        headers = {**err.headers, "X-Request-Id": request_id}
        self._send_json(err.status, err.body(request_id), headers)

    def _send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self._status = status
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


# --------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="roomtranslate simulator",
        description="Local stand-in for qwen3-livetranslate-flash (chat completions, SSE).",
    )
    d = Settings()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 = any free port")
    p.add_argument(
        "--api-key",
        default=os.environ.get("SIM_API_KEY") or None,
        help="accept only this key (default: env SIM_API_KEY; unset = any)",
    )
    p.add_argument("--first-text-ms", type=float, default=d.first_text_ms)
    p.add_argument("--first-audio-ms", type=float, default=d.first_audio_ms)
    p.add_argument("--chunk-ms", type=float, default=d.chunk_ms)
    p.add_argument("--jitter-ms", type=float, default=d.jitter_ms)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--audio-chunk-ms", type=float, default=d.audio_chunk_ms)
    p.add_argument(
        "--faults",
        type=_faults_arg,
        default=[],
        help=f"comma list consumed one per request: {','.join(FAULTS)}",
    )
    p.add_argument("--retry-after", type=float, default=d.retry_after)
    p.add_argument("--stall-s", type=float, default=d.stall_s)
    p.add_argument(
        "--speech-dir",
        default="",
        help="speak real recordings (WAV files in this directory) instead of tones",
    )
    p.add_argument("--keep-clips", default="", help="write every clip received into this directory")
    return p


def _faults_arg(text: str) -> list[str]:
    try:
        return check_faults([f.strip() for f in text.split(",") if f.strip()])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def state_from_args(args: argparse.Namespace) -> SimState:
    values = {name: float(getattr(args, name)) for name in _NUMERIC_SETTINGS}
    for name, value in values.items():
        _non_negative(name, value)
    if args.speech_dir:
        speech_library(args.speech_dir)  # an unusable directory is a usage error now
    settings = Settings(**values, speech_dir=args.speech_dir, keep_clips=args.keep_clips)
    return SimState(settings, args.faults, args.seed, args.api_key)


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGTERM/SIGINT; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        state = state_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    server = SimServer((args.host, args.port), state)
    stop = threading.Event()
    previous = _install_signal_handlers(stop)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.1,), name="sim-http", daemon=True
    )
    thread.start()
    host = "127.0.0.1" if args.host in ("", "0.0.0.0") else args.host
    print(f"READY http://{host}:{server.server_address[1]}{API_PREFIX}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        _restore_signal_handlers(previous)
    return 0


_Handler = Callable[[int, FrameType | None], Any] | int | None


def _install_signal_handlers(stop: threading.Event) -> dict[int, _Handler]:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, _Handler] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, on_signal)
    return previous


def _restore_signal_handlers(previous: Mapping[int, _Handler]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
