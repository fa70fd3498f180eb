#!/usr/bin/env python3
"""The rooms of scripts/bench_fleet.py: the figures kept of each, a room run in the
benchmark's process (the daemon's sequencer, caption lanes, translator and shared budget,
fed clips of real speech on a seeded schedule) and a real daemon in its own process.

Run as a script it is one real daemon (`daemon.app.Daemon`, its API key the room's name)
on a file source of the shared recordings in real time (`--seconds` of them, then
silence), until SIGTERM; the benchmark and tests/test_fleet_rig.py start these.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daemon.app import Daemon
from daemon.captions import Captions
from daemon.captions.lanes import CaptionLane, CaptionLanes
from daemon.config import (
    ApiSettings,
    LiveRoom,
    MqttSettings,
    PipelineSettings,
    RoomSettings,
    SegmenterSettings,
    Settings,
    apply_overrides,
)
from daemon.counters import Counters
from daemon.fleet.account import SharedBudget
from daemon.ratelimit import ServiceLoad
from daemon.sequencer import Sequencer
from daemon.translator import Translator
from daemon.values import SAMPLE_RATE, Pcm, Utterance, UtteranceStats
from scripts.simproc import Simulator
from scripts.soak import PacedSource, load_room_audio, recordings

TARGET = "zh"
CAPTION_LANGS = ("de", "fr", "es", "it")
SIM_ARGS = (
    "--first-text-ms", "500", "--first-audio-ms", "300", "--chunk-ms", "30",
    "--jitter-ms", "500", "--audio-chunk-ms", "500", "--account-tpm", "100000",
)  # fmt: skip


# ------------------------------------------------------------------------------ figures


@dataclass(frozen=True)
class Sample:
    """One room at one moment: its counts so far, and its share (shared fleet)."""

    t: float
    translated: int
    lost: int  # speech dropped or failed
    extra_sent: int  # extra-language requests sent (each attempt)
    share: float | None = None
    rooms: int | None = None


@dataclass
class RoomFigures:
    name: str
    samples: list[Sample] = field(default_factory=list)
    done: Sample = Sample(0, 0, 0, 0)  # what earlier incarnations of the room did

    def add(self, sample: Sample) -> None:
        d = self.done
        self.samples.append(
            Sample(
                sample.t,
                d.translated + sample.translated,
                d.lost + sample.lost,
                d.extra_sent + sample.extra_sent,
                sample.share,
                sample.rooms,
            )
        )

    def restarted(self) -> None:
        self.done = self.samples[-1] if self.samples else self.done

    @property
    def last(self) -> Sample:
        return self.samples[-1] if self.samples else self.done

    def translated_share(self) -> float:
        last = self.last
        ended = last.translated + last.lost
        return last.translated / ended if ended else 0.0


# ------------------------------------------------------------------ an in-process room


def meeting(seed: int, seconds: float, per_minute: float) -> list[tuple[float, float]]:
    """(at, duration) of each clip: talk of 1.5-8 s, pauses making `per_minute` clips."""
    rng = random.Random(seed)
    pause = max(0.3, 60.0 / per_minute - 4.75)
    clips, t = [], rng.uniform(0.0, 5.0)
    while t < seconds:
        duration = rng.uniform(1.5, 8.0)
        t += duration
        clips.append((t, duration))
        t += max(0.3, rng.expovariate(1.0 / pause))
    return clips


class InProcessRoom:
    """The daemon's translation path for one room, fed clips on a schedule."""

    def __init__(self, fleet: Fleet, name: str, schedule: list[tuple[float, float]]) -> None:
        self.name = name
        self.counters = Counters()
        api = ApiSettings(
            base_url=fleet.sim.base_url, upload_format="flac", requests_per_minute=fleet.limit
        )
        self.load = ServiceLoad(self.counters, api.requests_per_minute)
        self.translator = Translator(api, name, self.counters, load=self.load)
        room = RoomSettings(target_lang=TARGET, caption_langs=fleet.langs, account=fleet.account)
        self.room = LiveRoom(room)
        self.pipeline = PipelineSettings()
        self.sequencer = Sequencer(
            self.pipeline, self.translator.translate, self.room, self.counters
        )
        self.lanes = CaptionLanes(self._lane, self.room)
        self.budget: SharedBudget | None = None
        if fleet.account:
            mqtt = fleet.mqtt(name)
            self.budget = SharedBudget(
                mqtt, api, self.load, lambda: self.room.current.account, self.counters,
                device_id=f"{fleet.prefix}-{name}",
            )  # fmt: skip
        self._fleet = fleet
        self._schedule = schedule
        self._ids = iter(range(1, 1 << 30))
        self._tasks: list[asyncio.Task[Any]] = []

    def _lane(self, lang: str) -> CaptionLane:
        captions = Captions(lambda *_: None, lambda: self.room.current, lang=lang)
        return CaptionLane(
            lang,
            translate=self.translator.translate,
            pipeline=self.pipeline,
            room=self.room,
            captions=captions,
        )

    def start(self, began: float) -> None:
        coros = [self.sequencer.run(), self._results(), self.lanes.run(), self._talk(began)]
        if self.budget is not None:
            coros.append(self.budget.run())
        self._tasks = [asyncio.create_task(c, name=f"{self.name}") for c in coros]

    async def stop(self) -> None:
        """Gone without a word (the budget's record stays behind)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.translator.aclose()

    async def _results(self) -> None:
        async for _ in self.sequencer.results():
            pass

    async def _talk(self, began: float) -> None:
        for at, duration in self._schedule:
            delay = began + at - time.monotonic()
            if delay < -1.0:
                continue  # before this incarnation started
            await asyncio.sleep(max(0.0, delay))
            utt = self._fleet.clip(next(self._ids), duration, at)
            self.sequencer.submit(utt)
            self.lanes.submit(utt)

    def sample(self, t: float) -> Sample:
        c = self.counters
        extra = sum(c.get(f"requests_by_lang.{lang}") for lang in self._fleet.langs)
        share = rooms = None
        if self.budget is not None:
            share, rooms = self.budget.pacer.share.total.requests, self.budget.pacer.share.rooms
        lost = c.get("outcomes.dropped") + c.get("outcomes.failed")
        return Sample(
            t, round(c.get("outcomes.translated")), round(lost), round(extra), share, rooms
        )


# ------------------------------------------------------------------- a real daemon room


def daemon_settings(args: argparse.Namespace) -> Settings:
    return apply_overrides(
        Settings(),
        {
            "room": {
                "target_lang": TARGET,
                "caption_langs": args.caption_langs,
                "account": args.account,
            },
            "segmenter": {"confirm": args.confirm, "max_utterance_s": args.max_utterance_s},
            "api": {
                "base_url": args.sim,
                "upload_format": "flac",
                "check_key_at_start": False,
                "requests_per_minute": args.limit,
            },
            "audio": {"echo_guard": "off", "output_device": "bench-no-such-speaker"},
            "mqtt": {
                "host": "127.0.0.1",
                "port": args.port,
                "prefix": args.prefix,
                "room_id": args.room,
                "device_id": f"{args.prefix}-{args.room}",  # one client id per fleet
                "status_interval_s": args.status_s,
            },
            "homeassistant": {"discovery": False},
            "log": {"level": "WARNING"},
        },
    ).model_copy(update={"state_dir": Path(args.state)})


async def daemon_child(args: argparse.Namespace) -> int:
    """One real daemon on the recordings (from the `--offset`th on), until SIGTERM."""
    pieces = await load_room_audio(recordings())
    k = args.offset % len(pieces)
    source = PacedSource(pieces[k:] + pieces[:k], args.seconds, 1.0)
    settings = daemon_settings(args)
    daemon = Daemon(settings, args.room, None, settings.audio.output_device, source=source)
    return await daemon.run()


class DaemonRoom:
    """A real daemon process; its figures are read from its retained status."""

    def __init__(self, fleet: Fleet, name: str, offset: int) -> None:
        self.name = name
        self._fleet = fleet
        self._offset = offset
        self._proc: asyncio.subprocess.Process | None = None

    async def start_process(self, workdir: Path) -> None:
        fleet = self._fleet
        state = workdir / fleet.prefix / self.name
        state.mkdir(parents=True)
        argv = [
            sys.executable, __file__, "--room", self.name,
            "--prefix", fleet.prefix, "--account", fleet.account, "--port", str(fleet.port),
            "--sim", fleet.sim.base_url, "--state", str(state), "--offset", str(self._offset),
            "--confirm", fleet.confirm, "--limit", str(fleet.limit),
            "--caption-langs", *fleet.langs,
        ]  # fmt: skip
        log = (workdir / f"{fleet.prefix}-{self.name}.log").open("wb")
        self._proc = await asyncio.create_subprocess_exec(
            *argv, stdout=log, stderr=log, start_new_session=True
        )

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), 15)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()

    def sample(self, t: float) -> Sample | None:
        status = self._fleet.statuses.get(self.name)
        if status is None:
            return None
        counters = status["counters"]
        lost = sum(counters["dropped"].values()) + sum(counters["failed"].values())
        requests = status["service"]["requests"]
        extra = sum(requests.get(lang, 0) for lang in self._fleet.langs)
        fleet = status.get("fleet", {})
        share = fleet["share"]["requests"] if fleet.get("account") else None
        return Sample(t, counters["translated"], lost, extra, share, fleet.get("rooms"))


# ---------------------------------------------------------------------------- a fleet


class Fleet:
    """The rooms of one fleet, its simulator and its figures."""

    def __init__(self, args: argparse.Namespace, title: str, prefix: str, account: str) -> None:
        self.title = title
        self.prefix = prefix
        self.account = account
        self.langs = list(CAPTION_LANGS[: args.langs])
        self.confirm = args.confirm
        self.port = 0
        self.limit = args.limit
        self.sim = Simulator(*SIM_ARGS, "--account-rpm", str(args.limit))
        self.speech: Pcm = np.zeros(0, dtype=np.int16)
        self.statuses: dict[str, dict[str, Any]] = {}
        self.figures: dict[str, RoomFigures] = {}
        self.daemons: list[DaemonRoom] = []
        self.rooms: dict[str, InProcessRoom] = {}
        self.sim_stats: dict[str, Any] = {}

    def mqtt(self, room_id: str) -> MqttSettings:
        return MqttSettings(
            host="127.0.0.1", port=self.port, prefix=self.prefix, room_id=room_id,
            reconnect_min_s=0.2, reconnect_max_s=2.0,
        )  # fmt: skip

    def clip(self, uid: int, duration: float, at: float) -> Utterance:
        """`duration` s of real speech, from a place the clip's time chooses."""
        samples = round(duration * SAMPLE_RATE)
        first = round(at * 997 * SAMPLE_RATE) % (len(self.speech) - samples)
        pcm = np.ascontiguousarray(self.speech[first : first + samples])
        frames = samples // 480
        now = time.time()
        return Utterance(
            uid,
            0,
            samples,
            pcm,
            UtteranceStats(frames, frames, -20.0, -6.0, False),
            now - duration,
            now,
        )

    def on_status(self, topic: str, payload: bytes) -> None:
        with contextlib.suppress(ValueError):
            self.statuses[topic.split("/")[1]] = json.loads(payload)

    def sample(self, t: float) -> None:
        for name, room in self.rooms.items():
            self.figures[name].add(room.sample(t))
        for daemon in self.daemons:
            if (sample := daemon.sample(t)) is not None:
                self.figures[daemon.name].add(sample)


def room_names(count: int) -> Iterator[str]:
    return (f"room-{i:02d}" for i in range(1, count + 1))


def main(argv: list[str] | None = None) -> int:
    """One real daemon (the benchmark's arguments for it)."""
    parser = argparse.ArgumentParser(description="one real daemon of scripts/bench_fleet.py")
    for name in ("--room", "--prefix", "--account", "--sim", "--state", "--confirm"):
        parser.add_argument(name, required=name != "--account", default="")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--limit", type=int, required=True)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=24 * 3600, help="of speech")
    parser.add_argument("--status-s", type=float, default=5.0, help="status interval")
    parser.add_argument(
        "--max-utterance-s", type=float, default=SegmenterSettings().max_utterance_s
    )
    parser.add_argument("--caption-langs", nargs="*", default=[])
    return asyncio.run(daemon_child(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
