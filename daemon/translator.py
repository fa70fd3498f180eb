"""Service client: one utterance → qwen3-livetranslate-flash → typed translation events.

The request is exactly the one in CONTRACT.md, sent through the real `openai` SDK. The
SSE stream becomes `TextDelta`, `AudioChunk` (24 kHz int16, odd bytes carried across
chunks), `Usage`, and exactly one final `Outcome`. Retries are ours (the SDK's are off),
so every attempt is counted: 429 waits for Retry-After, 5xx / timeouts / dropped
connections back off exponentially with jitter, all bounded by `api.max_attempts`.
400/401/403/404 are never retried; 401/403/404 and account errors also pause the service
for `api.fatal_pause_s`, so a wrong key costs one request, not a storm, and `refusal`
keeps saying why until a request succeeds again. Once any output of
an attempt has been handed on, that attempt is never repeated: a stream cut after partial
output ends as failed("incomplete") with the text that did arrive.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import math
import random
import time
import wave
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import numpy as np
import openai
import soundfile as sf

from daemon.config import ApiSettings, RoomSettings
from daemon.counters import Counters
from daemon.languages import speaks
from daemon.ratelimit import ServiceLoad
from daemon.values import (
    SAMPLE_RATE,
    AudioChunk,
    Outcome,
    Retrying,
    TextDelta,
    TranslationEvent,
    Usage,
    Utterance,
    UtteranceStats,
)

log = logging.getLogger(__name__)
AUDIO_TOKENS_PER_S = 12.5
TEXT_TOKENS_PER_S = 4.0  # the translated text, roughly, per second of speech

# Failure kinds (the `reason` of a failed Outcome and the key of service_errors.*).
FATAL_KINDS = frozenset({"auth", "access_denied", "model_not_found", "account"})
_STATUS_KINDS = {401: "auth", 403: "access_denied", 404: "model_not_found", 429: "rate_limited"}
_ACCOUNT_CODES = frozenset({"Arrearage", "insufficient_quota"})


class AttemptError(Exception):
    """One failed attempt: `kind` names it, `retry` says whether another may follow."""

    def __init__(
        self, kind: str, detail: str, retry: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.retry = retry
        self.retry_after = retry_after


def encode_wav(pcm: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def encode_flac(pcm: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def audio_data_uri(pcm: np.ndarray, fmt: str) -> str:
    data = encode_flac(pcm) if fmt == "flac" else encode_wav(pcm)
    return f"data:audio/{fmt};base64,{base64.b64encode(data).decode('ascii')}"


def build_request(utt: Utterance, room: RoomSettings, api: ApiSettings) -> dict[str, Any]:
    """The keyword arguments of `chat.completions.create` for one clip."""
    with_speech = room.speech and speaks(room.target_lang)
    options: dict[str, str] = {"target_lang": room.target_lang}
    if room.source is not None:
        options["source_lang"] = room.source
    extra: dict[str, Any] = {"translation_options": options}
    if with_speech and api.speech_rate is not None:
        extra["speech_rate"] = api.speech_rate
    fmt = api.upload_format
    request: dict[str, Any] = {
        "model": api.model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "input_audio",
                        "input_audio": {"data": audio_data_uri(utt.pcm, fmt), "format": fmt},
                    }
                ],
            }
        ],
        "modalities": ["text", "audio"] if with_speech else ["text"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "extra_body": extra,
    }
    if with_speech:
        request["audio"] = {"voice": room.voice, "format": "wav"}
    return request


def estimate_tokens(duration_s: float, speech: bool) -> float:
    """The tokens a request for a clip will likely use: its audio in, as much audio out
    with speech, and `TEXT_TOKENS_PER_S` of text."""
    billed_s = max(1.0, duration_s)
    audio = math.ceil(AUDIO_TOKENS_PER_S * billed_s)
    return audio * (2 if speech else 1) + TEXT_TOKENS_PER_S * billed_s


def probe_utterance() -> Utterance:
    """The key check's clip: 1 s of silence (billed as the minimum, 1 s)."""
    pcm = np.zeros(SAMPLE_RATE, dtype=np.int16)
    now = time.time()
    stats = UtteranceStats(
        voiced_frames=0, frames=0, mean_dbfs=-120.0, peak_dbfs=-120.0, split=False
    )
    return Utterance(0, 0, len(pcm), pcm, stats, now, now + 1.0)


def _field(obj: object, name: str) -> Any:
    """`obj.name` or `obj[name]`, None when absent: tolerate either shape of a delta."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _usage(raw: object) -> Usage:
    prompt_details = _field(raw, "prompt_tokens_details")
    completion_details = _field(raw, "completion_tokens_details")
    return Usage(
        prompt_tokens=int(_field(raw, "prompt_tokens") or 0),
        completion_tokens=int(_field(raw, "completion_tokens") or 0),
        input_audio_tokens=int(_field(prompt_details, "audio_tokens") or 0),
        output_audio_tokens=int(_field(completion_details, "audio_tokens") or 0),
    )


class StreamParser:
    """Turns chunks into events; carries an odd audio byte to the next chunk."""

    def __init__(self) -> None:
        self._leftover = b""
        self.produced = False  # text or audio was handed on
        self.finish_reason: str | None = None
        self.text = ""
        self.usage: Usage | None = None

    def feed(self, chunk: object) -> list[TranslationEvent]:
        events: list[TranslationEvent] = []
        raw_usage = _field(chunk, "usage")
        if raw_usage is not None:
            self.usage = _usage(raw_usage)
            events.append(self.usage)
        for choice in _field(chunk, "choices") or ():
            events.extend(self._delta(_field(choice, "delta")))
            reason = _field(choice, "finish_reason")
            if reason:
                self.finish_reason = str(reason)
        return events

    def _delta(self, delta: object) -> list[TranslationEvent]:
        if delta is None:
            return []
        events: list[TranslationEvent] = []
        content = _field(delta, "content")
        if isinstance(content, str) and content:
            self.text += content
            events.append(TextDelta(content))
        audio = _field(delta, "audio")
        data = _field(audio, "data") if audio is not None else None
        if isinstance(data, str) and data:
            pcm = self._pcm(base64.b64decode(data, validate=True))
            if len(pcm):
                events.append(AudioChunk(pcm))
        self.produced = self.produced or bool(events)
        return events

    def _pcm(self, raw: bytes) -> np.ndarray:
        raw = self._leftover + raw
        whole = len(raw) - len(raw) % 2
        self._leftover = raw[whole:]
        return np.frombuffer(raw[:whole], dtype="<i2").astype(np.int16)


def _body_code(body: object) -> str:
    code = _field(body, "code")
    if code is None:
        code = _field(_field(body, "error"), "code")
    return str(code) if code else ""


def _retry_after(response: object) -> float | None:
    headers = _field(response, "headers")
    value = headers.get("retry-after") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def classify(exc: Exception) -> AttemptError:
    """Map an SDK exception to a failure kind and whether to retry."""
    if isinstance(exc, AttemptError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        status, code = exc.status_code, _body_code(exc.body)
        detail = f"HTTP {status} {code}".strip()
        if status == 429:
            if code in _ACCOUNT_CODES:
                return AttemptError("account", detail, retry=False)
            return AttemptError("rate_limited", detail, True, _retry_after(exc.response))
        if status >= 500:
            return AttemptError("server_error", detail, retry=True)
        if status == 400 and code in _ACCOUNT_CODES:
            return AttemptError("account", detail, retry=False)
        if status == 400 and code == "DataInspectionFailed":
            return AttemptError("content_rejected", detail, retry=False)
        return AttemptError(_STATUS_KINDS.get(status, "bad_request"), detail, retry=False)
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return AttemptError("timeout", "no answer in time", retry=True)
    if isinstance(exc, openai.APIConnectionError):
        return AttemptError("connection", "connection failed or dropped", retry=True)
    if isinstance(exc, openai.APIError):  # an error inside an HTTP-200 stream
        return AttemptError("stream_error", f"error in stream {_body_code(exc.body)}", True)
    if isinstance(exc, ValueError):  # undecodable JSON or base64 in the stream
        return AttemptError("bad_reply", f"unreadable reply: {type(exc).__name__}", True)
    raise exc


class Translator:
    """Translates utterances; one instance per daemon, shared by all in-flight requests."""

    def __init__(
        self,
        api: ApiSettings,
        api_key: str,
        counters: Counters,
        *,
        rng: random.Random | None = None,
        load: ServiceLoad | None = None,
    ) -> None:
        self.api = api
        self._counters = counters
        self.load = load or ServiceLoad(counters, api.requests_per_minute)
        self._rng = rng or random.Random()
        self._paused_until = 0.0
        self._pause_reason = ""
        self._pause_kind = ""
        self._refused = False  # the last answer was a refusal; cleared by a success
        timeout = openai.Timeout(
            api.read_timeout_s, connect=api.connect_timeout_s, write=api.read_timeout_s
        )
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=api.base_url, max_retries=0, timeout=timeout
        )

    async def aclose(self) -> None:
        await self._client.close()

    @property
    def paused(self) -> bool:
        return time.monotonic() < self._paused_until

    @property
    def refusal(self) -> str:
        """Why the service refuses us (a wrong key, no access, ...), "" once a request
        succeeded since (or none was ever refused)."""
        if not self._refused:
            return ""
        if self.paused:
            return f"requests paused after {self._pause_reason}"
        return f"refused: {self._pause_reason}; the next clip tries again"

    async def translate(
        self, utt: Utterance, room: RoomSettings, *, extra: bool = False
    ) -> AsyncGenerator[TranslationEvent, None]:
        """Events of one utterance; the last is always its Outcome.

        Each attempt waits for the service load's `admit()` (paced, or shed: dropped
        "shed"). `extra` (an extra caption language): it is paced as one, and a 429 is not
        retried, so the request that carries the speech gets the quota."""
        if self.paused:
            left = self._paused_until - time.monotonic()
            detail = f"not sent: service paused {left:.0f} s more after {self._pause_reason}"
            yield Outcome("failed", self._pause_kind, detail)
            return
        request = build_request(utt, room, self.api)
        tokens = estimate_tokens(utt.duration_s, len(request["modalities"]) > 1)
        for attempt in range(1, self.api.max_attempts + 1):
            if why := await self.load.admit(extra, tokens):
                if not extra:
                    self._counters.add("dropped.shed")
                yield Outcome("dropped", "shed", why)
                return
            parser = StreamParser()
            try:
                async for event in self._attempt(utt, request, parser):
                    yield event
                self._settle(extra, tokens, parser.usage)
                yield self._finished(parser, attempt)
                return
            except Exception as exc:
                error = classify(exc)
            self._counters.add(f"service_errors.{error.kind}")
            produced = parser.produced
            delay = self._retry_delay(error, attempt)
            if error.kind == "rate_limited":
                self.load.throttled(error.retry_after)
                delay = None if extra else delay
                self.load.settle(extra, tokens, 0.0)  # refused: nothing used
            else:
                self._settle(extra, tokens, parser.usage)
            if produced or delay is None:
                yield self._failed(error, attempt, parser, produced)
                return
            log.warning(
                "utterance %d: %s (%s), retry in %.1f s", utt.id, error.kind, error.detail, delay
            )
            yield Retrying(error.kind, delay, attempt)
            await asyncio.sleep(delay)

    def _settle(self, extra: bool, estimated: float, usage: Usage | None) -> None:
        if usage is not None:
            self.load.settle(extra, estimated, usage.prompt_tokens + usage.completion_tokens)

    async def _attempt(
        self, utt: Utterance, request: dict[str, Any], parser: StreamParser
    ) -> AsyncIterator[TranslationEvent]:
        async with asyncio.timeout(self.api.request_timeout_s):
            utt.timeline.request_sent = time.monotonic()
            self.load.sent(request["extra_body"]["translation_options"]["target_lang"])
            stream = await self._client.chat.completions.create(**request)
            async with stream:
                async for chunk in stream:
                    for event in parser.feed(chunk):
                        self._stamp(utt, event)
                        yield event
        if parser.finish_reason is None:
            raise AttemptError("incomplete", "stream ended without finish_reason", retry=True)

    @staticmethod
    def _stamp(utt: Utterance, event: TranslationEvent) -> None:
        now = time.monotonic()
        if isinstance(event, TextDelta) and not utt.timeline.first_text:
            utt.timeline.first_text = now
        elif isinstance(event, AudioChunk) and not utt.timeline.first_audio:
            utt.timeline.first_audio = now

    def _retry_delay(self, error: AttemptError, attempt: int) -> float | None:
        if error.kind in FATAL_KINDS:
            self._pause(error)
        if not error.retry or attempt >= self.api.max_attempts:
            return None
        if error.retry_after is not None:
            if error.retry_after > self.api.retry_after_max_s:
                return None
            return error.retry_after + self._rng.uniform(0, 0.1)
        ceiling = min(self.api.backoff_max_s, self.api.backoff_base_s * 2.0 ** (attempt - 1))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def _pause(self, error: AttemptError) -> None:
        self._paused_until = time.monotonic() + self.api.fatal_pause_s
        self._pause_kind = error.kind
        self._pause_reason = f"{error.kind} ({error.detail})"
        self._refused = True
        log.error(
            "service refused the request: %s; not sending for %.0f s",
            self._pause_reason,
            self.api.fatal_pause_s,
        )

    def _finished(self, parser: StreamParser, attempts: int) -> Outcome:
        self._refused = False
        usage = parser.usage
        if usage is not None:
            self._count_usage(usage)
        detail = "" if parser.finish_reason == "stop" else f"finish_reason={parser.finish_reason}"
        return Outcome("translated", "", detail, attempts, parser.text, usage)

    def _failed(
        self, error: AttemptError, attempts: int, parser: StreamParser, produced: bool
    ) -> Outcome:
        if parser.usage is not None:
            self._count_usage(parser.usage)
        reason = "incomplete" if produced else error.kind
        detail = f"{error.kind}: {error.detail}" if produced else error.detail
        return Outcome("failed", reason, detail, attempts, parser.text, parser.usage)

    def _count_usage(self, usage: Usage) -> None:
        self._counters.add("tokens.prompt", usage.prompt_tokens)
        self._counters.add("tokens.completion", usage.completion_tokens)
        self._counters.add("billed_audio_s.input", usage.input_audio_tokens / AUDIO_TOKENS_PER_S)
        self._counters.add("billed_audio_s.output", usage.output_audio_tokens / AUDIO_TOKENS_PER_S)
