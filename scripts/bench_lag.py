#!/usr/bin/env python3
"""Benchmark: how far behind the meeting the captions and the translated speech are.

    .venv/bin/python scripts/bench_lag.py [--audio-dir ../shared/audio] [--baseline REF]

Scenarios composed from the real recordings of `--audio-dir` (the truth is what was
placed): `--meetings` dense meetings (turns of different speakers 0.2–1.0 s apart, each
turn one clean recording, its sentences found at its pauses of ≥ 0.35 s), and monologues
of 30 and 60 s. The daemon's own stages run in process on a virtual clock (an asyncio
loop whose time jumps to the next timer: minutes of meeting in seconds): the frames are
pushed to the Segmenter at their real-time pace, its clips go through the Sequencer to a
stand-in for the service (first text after `--first-text-s`, then speech `--ratio-min`–
`--ratio-max` times as long as the clip, streamed `--audio-pace` times faster than real
time), and the ordered results go, as the daemon routes them, to captions (the first text
delta) and to `Playback` (its queue rendered by a virtual PortAudio callback every
10 ms).

Per source sentence (the clip holding its end): sentence end → first caption text, and
sentence end → the first sample of its translation audible on the speaker, split where
its first audio is handed to Playback (after it: the wait behind earlier translations,
one callback block and the DAC lead); p50/p95/max over all meetings, and the sentences
whose first caption came more than 3.5 s after their end counted by what their clip
waited for (the service, or the speech after a pause the segmenter did not end the clip
in, and why) and by whether the sentence ends its speaker's turn or the same speaker goes
on after it (the caption figure is split so too: a cut at a change of speaker helps only
the first); and each monologue's first caption from its start. `--seed` draws the
meetings (1: the reported ones; set thresholds on others). `--segmenter KEY=VALUE`
changes a segmenter setting (repeatable). With `--baseline REF` the same scenarios also
run against REF's daemon (a temporary git worktree, in a subprocess; with the same
settings) and both are printed side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon.config import LiveRoom, PipelineSettings, RoomSettings, SegmenterSettings
from daemon.counters import Counters
from daemon.playback import Playback, PlaybackEvent, PlaybackSkipped, PlaybackStarted
from daemon.segmenter import Segmenter
from daemon.sequencer import Sequencer
from daemon.simulator.speech import speech_library, speech_samples
from daemon.values import (
    OUTPUT_RATE,
    SAMPLE_RATE,
    AudioChunk,
    Frame,
    Outcome,
    Pcm,
    TextDelta,
    TranslationEvent,
    Utterance,
)
from scripts import segmenter_arg
from scripts.lag_scenes import Scene, scenes

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AUDIO_DIR = Path(
    os.environ.get("ROOMTRANSLATE_AUDIO_DIR", ROOT.parent / "shared" / "audio")
)
BLOCK_S = 0.010  # the virtual output callback's block
DAC_LEAD_S = 0.040  # callback → DAC
TEXT_PIECES = 4
SLOW_CAPTION_S = 3.5  # the p95 target for sentence end → first caption text


# ----------------------------------------------------------------------------- clock


class _JumpSelector(selectors.DefaultSelector):
    """A selector that never sleeps: a wait advances the virtual clock instead."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if not ready and timeout is not None and timeout > 0:
            self._clock[0] += timeout
        return ready


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock: idle time costs nothing."""

    def __init__(self) -> None:
        self._clock = [0.0]
        super().__init__(_JumpSelector(self._clock))

    def time(self) -> float:
        return self._clock[0]


# ----------------------------------------------------------------------------- service


@dataclass(frozen=True)
class Service:
    first_text_s: float
    first_audio_s: float
    audio_pace: float  # speech streamed this many times faster than real time
    ratio_min: float
    ratio_max: float
    library: tuple[Pcm, ...]

    def ratio(self, utt: Utterance) -> float:
        """The translation's length over the clip's, fixed per clip (its first sample)."""
        unit = (zlib.crc32(str(utt.start).encode()) % 10_000) / 10_000
        return self.ratio_min + (self.ratio_max - self.ratio_min) * unit

    async def translate(
        self, utt: Utterance, room: RoomSettings
    ) -> AsyncGenerator[TranslationEvent, None]:
        await asyncio.sleep(self.first_text_s)
        for i in range(TEXT_PIECES):
            yield TextDelta(f"piece {i} of clip {utt.id} ")
            await asyncio.sleep(0.01)
        await asyncio.sleep(self.first_audio_s)
        digest = f"{zlib.crc32(utt.pcm.tobytes()):08x}"
        speech = speech_samples(digest, utt.duration_s * self.ratio(utt), self.library)
        step = OUTPUT_RATE // 10
        for offset in range(0, len(speech), step):
            yield AudioChunk(speech[offset : offset + step])
            await asyncio.sleep(0.1 / self.audio_pace)
        yield Outcome("translated")


# ----------------------------------------------------------------------------- one run


@dataclass
class Clip:
    start_s: float
    end_s: float
    cut_at: float = 0.0
    first_text: float | None = None
    first_audio: float | None = None  # its first audio handed to Playback
    audible_at: float | None = None
    skipped_s: float = 0.0


@dataclass
class SceneResult:
    name: str
    kind: str
    sentences: list[tuple[float, float]]
    turn_ends: set[int]  # sentences a speaker's turn ends with
    clips: list[Clip]
    speech_start: float
    max_backlog_s: float
    skipped_s: float
    feed_cpu_s: float
    duration_s: float


class Run:
    """One scene through Segmenter → Sequencer → (captions, Playback) on the virtual clock."""

    def __init__(self, scene: Scene, service: Service, settings: SegmenterSettings) -> None:
        self.scene = scene
        self.counters = Counters()
        self.room = LiveRoom(RoomSettings())
        self.settings = settings
        self.sequencer = Sequencer(PipelineSettings(), service.translate, self.room, self.counters)
        self.playback = Playback(
            None,
            self.counters,
            on_event=self._on_playback,
            **more_coming(lambda: self.hearing or self.sequencer.unreleased > 1),
        )
        self.clips: dict[int, Clip] = {}
        self.max_backlog_s = 0.0
        self.hearing = False  # the segmenter is in speech (the daemon's health.hearing)
        self.feed_cpu_s = 0.0  # process time in Playback's feeding side (stretch, resample)
        self._done = False

    async def main(self) -> SceneResult:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._feed())
            group.create_task(self.sequencer.run())
            group.create_task(self._route())
            group.create_task(self._render())
        skipped = sum(c.skipped_s for c in self.clips.values())
        return SceneResult(
            self.scene.name,
            self.scene.kind,
            self.scene.sentences,
            self.scene.turn_ends,
            list(self.clips.values()),
            self.scene.sentences[0][0],
            self.max_backlog_s,
            skipped,
            self.feed_cpu_s,
            len(self.scene.audio) / SAMPLE_RATE,
        )

    async def _feed(self) -> None:
        loop = asyncio.get_running_loop()
        frame_n = SAMPLE_RATE * self.settings.frame_ms // 1000
        segmenter = Segmenter(self.settings, self.room, self.counters, lambda s: s / SAMPLE_RATE)
        audio = self.scene.audio
        for start in range(0, len(audio) - frame_n + 1, frame_n):
            due = (start + frame_n) / SAMPLE_RATE
            await asyncio.sleep(max(0.0, due - loop.time()))
            for event in segmenter.push(Frame(start, audio[start : start + frame_n].copy())):
                if isinstance(event, Utterance):
                    self._submit(event, loop.time())
            self.hearing = segmenter.speaking
        for event in segmenter.flush():
            if isinstance(event, Utterance):
                self._submit(event, loop.time())
        self.sequencer.close()

    def _submit(self, utt: Utterance, now: float) -> None:
        self.clips[utt.id] = Clip(utt.start / SAMPLE_RATE, utt.end / SAMPLE_RATE, now)
        self.sequencer.submit(utt)

    async def _route(self) -> None:
        """As the daemon routes the ordered results (Daemon._on_result)."""
        loop = asyncio.get_running_loop()
        playback = self.playback
        async for utt, event in self.sequencer.results():
            clip = self.clips[utt.id]
            if isinstance(event, TextDelta):
                if clip.first_text is None:
                    clip.first_text = loop.time()
            elif isinstance(event, AudioChunk):
                began = time.perf_counter()
                if not playback.is_open(utt.id):
                    clip.first_audio = loop.time()
                    playback.start_utterance(utt.id, utt.timeline)
                playback.feed(utt.id, event.pcm)
                self.feed_cpu_s += time.perf_counter() - began
                self.max_backlog_s = max(self.max_backlog_s, playback.backlog_s())
            elif isinstance(event, Outcome) and playback.is_open(utt.id):
                began = time.perf_counter()
                playback.end_utterance(utt.id)
                self.feed_cpu_s += time.perf_counter() - began
        self._done = True

    async def _render(self) -> None:
        """The PortAudio callback, every BLOCK_S of virtual time, until all has played."""
        loop = asyncio.get_running_loop()
        queue = self.playback._queue
        block = np.zeros(round(BLOCK_S * queue.rate), dtype=np.int16)
        while not self._done or queue.busy():
            now = loop.time()
            queue.render(block, now, now + DAC_LEAD_S)
            self.playback._emit(queue.poll(now))
            await asyncio.sleep(BLOCK_S)

    def _on_playback(self, event: PlaybackEvent) -> None:
        clip = self.clips.get(event.utt_id)
        if clip is None:
            return
        if isinstance(event, PlaybackStarted):
            clip.audible_at = event.audible_at
        elif isinstance(event, PlaybackSkipped):
            clip.skipped_s += event.seconds


def more_coming(check: Callable[[], bool]) -> dict[str, Any]:
    """Playback's `more_coming` argument as the daemon passes it, where Playback has it."""
    if "more_coming" in inspect.signature(Playback).parameters:
        return {"more_coming": check}
    return {}


def run_scene(scene: Scene, service: Service, settings: SegmenterSettings) -> SceneResult:
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(Run(scene, service, settings).main())
    finally:
        loop.close()


# ----------------------------------------------------------------------------- figures


def clip_of(clips: list[Clip], end_s: float) -> Clip | None:
    """The clip holding the sentence's end (its last 0.2 s overlapping most)."""
    best, overlap = None, 0.0
    for clip in clips:
        o = min(clip.end_s, end_s) - max(clip.start_s, end_s - 0.2)
        if o > overlap:
            best, overlap = clip, o
    return best


def slow_cause(
    clip: Clip, end: float, gap: float, first_text_s: float, settings: SegmenterSettings
) -> str:
    """Why a sentence's first caption came late: what its clip waited for."""
    if clip.first_text is not None and clip.first_text - clip.cut_at > first_text_s + 0.05:
        return "waited for the service"
    if clip.end_s - end < 0.5:
        return "clip ended late"
    hangover = settings.hangover_ms / 1000
    split_after = float(getattr(settings, "split_after_s", float("inf")))
    if gap >= hangover:
        return "pause ≥ hangover heard shorter"
    if end - clip.start_s < split_after:
        return "pause<hangover, clip<split_after"
    return "pause<hangover, clip≥split_after"


def figures(
    results: list[SceneResult], first_text_s: float, settings: SegmenterSettings
) -> dict[str, Any]:
    """p50/p95/max per source sentence; the sentences over SLOW_CAPTION_S by cause."""
    caption: list[float] = []
    turn_end: list[float] = []  # caption lag of the sentences a speaker's turn ends with
    in_turn: list[float] = []  # ... and of those another sentence of the turn follows
    speech: list[float] = []
    to_playback: list[float] = []  # sentence end → its first audio handed to Playback
    in_playback: list[float] = []  # → first heard: waiting behind earlier translations
    slow: dict[str, int] = {}
    missed = unheard = sentences = 0
    for r in results:
        if r.kind != "meeting":
            continue
        for k, (_, end) in enumerate(r.sentences):
            sentences += 1
            clip = clip_of(r.clips, end)
            if clip is None or clip.first_text is None:
                missed += 1
                continue
            caption.append(clip.first_text - end)
            ends_turn = k in r.turn_ends
            (turn_end if ends_turn else in_turn).append(clip.first_text - end)
            if clip.first_text - end > SLOW_CAPTION_S:
                after = r.sentences[k + 1][0] - end if k + 1 < len(r.sentences) else 9.9
                cause = slow_cause(clip, end, after, first_text_s, settings)
                cause += ", turn's end" if ends_turn else ", inside a turn"
                slow[cause] = slow.get(cause, 0) + 1
            if clip.audible_at is None:
                unheard += 1
            else:
                speech.append(clip.audible_at - end)
                if clip.first_audio is not None:
                    to_playback.append(clip.first_audio - end)
                    in_playback.append(clip.audible_at - clip.first_audio)
    meetings = [r for r in results if r.kind == "meeting"]
    out: dict[str, Any] = {
        "sentences": sentences,
        "clips": sum(len(r.clips) for r in meetings),
        "missed": missed,
        "unheard": unheard,
        "caption": stats(caption),
        "caption_turn_end": stats(turn_end),
        "caption_in_turn": stats(in_turn),
        "speech": stats(speech),
        "to_playback": stats(to_playback),
        "in_playback": stats(in_playback),
        "max_backlog_s": max((r.max_backlog_s for r in meetings), default=0.0),
        "skipped_s": sum(r.skipped_s for r in meetings),
        "feed_core_pct": 100
        * sum(r.feed_cpu_s for r in meetings)
        / max(sum(r.duration_s for r in meetings), 1e-9),
        "monologues": {},
        "slow": slow,
    }
    for r in results:
        if r.kind == "monologue":
            texts = [c.first_text for c in r.clips if c.first_text is not None]
            first = min(texts) - r.speech_start if texts else float("nan")
            heard = [c.audible_at for c in r.clips if c.audible_at is not None]
            out["monologues"][r.name] = {
                "first_caption_s": first,
                "first_heard_s": (min(heard) - r.speech_start) if heard else float("nan"),
                "clips": len(r.clips),
            }
    return out


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "max": float("nan")}
    arr = np.asarray(values)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "max": float(arr.max()),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    service = Service(
        args.first_text_s,
        0.05,
        args.audio_pace,
        args.ratio_min,
        args.ratio_max,
        speech_library(str(args.audio_dir)),
    )
    chosen = scenes(args.audio_dir, args.meetings, args.turns, args.seed)
    results = [run_scene(s, service, args.settings) for s in chosen]
    return figures(results, args.first_text_s, args.settings)


def print_table(columns: dict[str, dict[str, Any]]) -> None:
    names = list(columns)
    head = f"{'':<62}" + "".join(f"{n:>14}" for n in names)
    print(head)

    def row(label: str, pick: Any, fmt: str = "{:>14.2f}") -> None:
        cells = []
        for n in names:
            try:
                cells.append(fmt.format(pick(columns[n])))
            except (KeyError, TypeError):
                cells.append(f"{'-':>14}")
        print(f"{label:<62}" + "".join(cells))

    first = columns[names[0]]
    print(f"dense meetings: {first['sentences']} sentences")
    row("clips cut", lambda c: c["clips"], "{:>14d}")
    row("sentences never captioned", lambda c: c["missed"], "{:>14d}")
    row("sentences never heard (skipped)", lambda c: c["unheard"], "{:>14d}")
    for key, label in (
        ("caption", "end → first caption text"),
        ("caption_turn_end", "  a turn's last sentence → caption"),
        ("caption_in_turn", "  a sentence inside a turn → caption"),
        ("speech", "end → translation heard"),
        ("to_playback", "  end → its first audio at playback"),
        ("in_playback", "  first audio at playback → heard"),
    ):
        for q in ("p50", "p95", "max"):
            row(f"{label} {q} (s)", lambda c, k=key, q=q: c[k][q])
    causes = sorted({cause for c in columns.values() for cause in c.get("slow", {})})
    for cause in causes:
        row(f"over {SLOW_CAPTION_S} s: {cause}", lambda c, k=cause: c["slow"].get(k, 0), "{:>14d}")
    row("largest playback backlog (s)", lambda c: c["max_backlog_s"])
    row("speech skipped (s)", lambda c: c["skipped_s"])
    row("playback feeding, % of a core", lambda c: c["feed_core_pct"])
    for mono in first["monologues"]:
        row(f"{mono}: first caption (s)", lambda c, m=mono: c["monologues"][m]["first_caption_s"])
        row(f"{mono}: first heard (s)", lambda c, m=mono: c["monologues"][m]["first_heard_s"])
        row(f"{mono}: clips", lambda c, m=mono: c["monologues"][m]["clips"], "{:>14d}")


def run_baseline(ref: str, argv: list[str]) -> dict[str, Any]:
    """This bench against REF's daemon package, in a temporary worktree and a subprocess."""
    with tempfile.TemporaryDirectory(prefix="bench_lag_") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), ref],
            check=True,
        )
        try:
            shim = Path(tmp) / "shim"  # REF's daemon package, this tree's scripts
            shim.mkdir()
            (shim / "daemon").symlink_to(tree / "daemon")
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), *argv, "--json"],
                env=env,
                cwd=str(tree),
                check=False,
                stdout=subprocess.PIPE,
                text=True,
            )
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
            )
    if done.returncode != 0:
        raise SystemExit(f"the baseline run ({ref}) failed with status {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def without_baseline(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--baseline":
            skip = True
        elif not arg.startswith("--baseline="):
            out.append(arg)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--audio-dir", type=Path, default=DEFAULT_AUDIO_DIR)
    parser.add_argument("--meetings", type=int, default=5)
    parser.add_argument("--turns", type=int, default=8, help="turns per meeting")
    parser.add_argument("--seed", type=int, default=1, help="the meetings drawn (1: reported)")
    parser.add_argument("--first-text-s", type=float, default=1.5)
    parser.add_argument("--audio-pace", type=float, default=10.0)
    parser.add_argument("--ratio-min", type=float, default=1.0)
    parser.add_argument("--ratio-max", type=float, default=1.3)
    parser.add_argument("--baseline", metavar="REF", help="also run REF's daemon (git ref)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    segmenter_arg.add_argument(parser, "the daemon")
    args = parser.parse_args(argv)
    args.settings = segmenter_arg.settings(parser, args.segmenter)
    return args


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    args.audio_dir = args.audio_dir.resolve()
    if args.json:
        print(json.dumps(measure(args)))
        return 0
    columns: dict[str, dict[str, Any]] = {}
    if args.baseline:
        forward = without_baseline(raw)
        forward += ["--audio-dir", str(args.audio_dir)]
        columns[args.baseline] = run_baseline(args.baseline, forward)
    columns["this tree"] = measure(args)
    print(
        f"service: first text {args.first_text_s:.1f} s, speech {args.ratio_min:.1f}–"
        f"{args.ratio_max:.1f}× the clip, streamed {args.audio_pace:.0f}× real time"
    )
    if args.segmenter:
        print(f"segmenter: {segmenter_arg.label(args.segmenter)}")
    print_table(columns)
    print_stretch_cost(speech_library(str(args.audio_dir)))
    return 0


def print_stretch_cost(library: tuple[Pcm, ...]) -> None:
    """This tree's time-stretch alone: 30 s of speech far behind (at the full rate), fed
    in pieces of 10 ms and of 100 ms (what the service streams)."""
    from daemon.playback.pace import Pace

    speech = np.concatenate(library)[: 30 * OUTPUT_RATE]
    seconds = len(speech) / OUTPUT_RATE
    for piece_ms in (10, 100):
        pace = Pace(OUTPUT_RATE, 1.4, rate=1.4)
        step = OUTPUT_RATE * piece_ms // 1000
        began = time.process_time()
        for offset in range(0, len(speech), step):
            pace.feed(speech[offset : offset + step], 10.0)
        pace.finish()
        share = (time.process_time() - began) / seconds
        print(
            f"time-stretch at 1.4×, fed {piece_ms} ms at a time: {share * 0.01 * 1e6:.0f} µs"
            f" per 10 ms of speech, {share:.2%} of a core (CPU time)"
        )


if __name__ == "__main__":
    sys.exit(main())
