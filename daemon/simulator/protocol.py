"""The service's wire protocol, request side: what a chat-completions request must be,
checked the way the real service checks it, and the errors it answers with."""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf

from daemon.simulator.speech import Pcm, caption_text, clip_digest

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
_DATA_URI = re.compile(r"data:audio/([A-Za-z0-9.+-]+);base64,(.*)", re.DOTALL)


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


def check_auth(header: str | None, api_key: str | None) -> str:
    """The request's bearer key; 401 unless it carries one (the configured one, if any)."""
    scheme, _, key = (header or "").strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or (api_key is not None and key != api_key):
        raise ApiError(401, "invalid_api_key", "Incorrect API key provided.")
    return key


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
