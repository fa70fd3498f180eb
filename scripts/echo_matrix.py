#!/usr/bin/env python3
"""The room matrix of `bench_echo.py --matrix`: the rooms of `echo_rooms`, run in closed loop.

Our translation of every sent clip (as long as the clip, 0.3 s after the clip was cut)
plays into the room, so what reaches the microphone depends on what was sent. The room
runs on until the last turn and our last translation have been heard (2 s and RT60 after
them), at most 20 s past the last turn: a room that feeds back stops there.

The daemon's echo stage (built only by `daemon.echo.make_echo_stage`), segmenter (with
the daemon's clip confirmer, `confirmer_for`: double talk confirmed) and guard run frame
by frame (`ClosedLoop`). Per clip the segmenter cut it records the truth
(seconds of a person's speech inside, voiced 10 ms frames of the dry turns) and our
echo's energy share (`echo_share`) in what is sent (widened, our echo taken out), or in
the clip cut when it is dropped; `figures` turns clips into the matrix's rates.

Also runnable (`main`: seeds in, one JSON line per room out), so that `bench_echo.py
--matrix` can run the rooms against the daemon package of another checkout: the
`daemon` imported is the first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scripts.echo_rooms import (
    CHUNK,
    FRAME,
    RATE,
    Composed,
    EchoPath,
    Floats,
    RoomParams,
    compose,
    draw_room,
    impulse_responses,
    to_pcm,
)

LATENCY_S = 0.3  # clip cut → our translation starts playing
LEAD_S = 0.04  # the playback callback writes this far ahead
SETTLE_S = 2.0  # a room runs until this long (plus RT60) after the last turn and our last sound
OWN_SHARE = 0.1  # a request with more of its energy our echo carries our speech
ALONE_S = 0.1  # a clip with less of a person's speech ...
HEARD_ECHO = 0.5  # ... and more of what the microphone heard our echo is our voice alone
PERSON_S = 0.2  # a clip with at least this much of a person's speech has a person


# ------------------------------------------------------------------ the closed loop


def confirmer_for(stage: Any) -> Any:
    """The daemon's clip confirmer behind `stage` (double talk confirmed), also for a
    baseline from before `daemon.echo.confirmer_for` (the daemon wired the same then)."""
    try:
        from daemon.echo import confirmer_for as daemons
    except ImportError:
        from daemon.echo import DoubleTalkConfirmer
        from daemon.segmenter.confirm import make_confirmer

        def daemons(stage: Any) -> Any:
            def confirmer(settings: Any) -> Any:
                confirm = make_confirmer(settings)
                return DoubleTalkConfirmer(confirm, stage.double_talk) if confirm else None

            return confirmer

    return daemons(stage)


def screen(stage: Any, utt: Any) -> Any:
    """The daemon's screening of one clip (`screen_now`: judged, widened, our echo taken
    out), or a baseline's that has no `screen_now` (judged and widened)."""
    try:
        from daemon.echo.screening import screen_now
    except ImportError:
        return stage.screen(utt)
    return screen_now(stage, utt)


def echo_share(clip: Floats, echo: Floats, start: int, max_lag: int = 256, step: int = 1) -> float:
    """The share of `clip`'s energy that is our echo: the best ρ² of the clip against the
    known echo at the microphone (`echo`, the clip starting at sample `start`), over the
    lags 0, `step`, ... `max_lag` samples by which the cleaned clip may lag it."""
    from scipy.signal import correlate

    n = len(clip)
    first = max(0, start - max_lag)
    window = echo[first : start + n]
    if len(window) < n or not np.any(window):
        return 0.0
    dots = correlate(window, clip, mode="valid", method="fft")[::-1]  # lag 0, 1, ...
    power = np.concatenate([[0.0], np.cumsum(window * window)])
    energies = (power[n:] - power[: len(power) - n])[::-1]
    r = dots**2 / (np.maximum(energies, 1e-20) * (float(np.dot(clip, clip)) + 1e-20))
    return float(np.max(r[::step]))


@dataclass(frozen=True)
class Clip:
    """One clip the segmenter cut, and what became of it."""

    start: int
    end: int
    person_s: float  # a person's (voiced) speech inside it
    echo_share: float
    heard_echo_share: float  # of the microphone's energy over the clip, our echo's
    sent: bool
    judgement: Any = None  # the stage's `last_judgement`, where it has one


@dataclass
class RoomRun:
    seed: int
    clips: list[Clip]
    truth_s: float  # the people's voiced speech in the room
    cut_truth_s: float  # of it, inside clips the segmenter cut
    sent_truth_s: float  # of it, inside sent clips
    stage_cpu_s: float  # the echo stage's CPU time (process and screen)
    frames_10ms: int
    daemon: str  # where the daemon package came from


class ClosedLoop:
    """One room: what we play depends on what the segmenter cut and the guard let pass."""

    def __init__(self, room: Composed) -> None:
        from daemon.config import AudioSettings, LiveRoom, RoomSettings, SegmenterSettings
        from daemon.counters import Counters
        from daemon.echo import PlayedAudio, make_echo_stage
        from daemon.segmenter import Segmenter

        self.room = room
        self.n = len(room.people)
        self.ours = np.zeros(round(self.n * 1.01) + 30 * RATE)  # on the speaker's clock
        self.echo = np.zeros(self.n)
        self.path = EchoPath(room.params, room.speaker_h, self.n)
        self.final = 0  # speaker samples below this are already heard: never written
        self.counters = Counters()
        self.played = PlayedAudio(self.counters)
        self.played.open(RATE)
        self.written = 0
        self.busy_until = 0  # speaker sample where our current translation ends
        self.voice_at = 0
        self.stage = make_echo_stage(
            AudioSettings(echo_guard="aec"),
            None,
            self.audible_until,
            self.counters,
            self.played,
        )
        self.segmenter = Segmenter(
            SegmenterSettings(),
            LiveRoom(RoomSettings()),
            self.counters,
            lambda s: s / RATE,
            confirmer=confirmer_for(self.stage),
        )
        self.clips: list[Clip] = []
        self.cpu = 0.0

    def audible_until(self) -> float:
        return self.busy_until / (RATE * self.path.ratio)

    def run(self) -> RoomRun:
        from daemon.values import Frame, Utterance

        mic = self.room.people + self.room.noise
        end = 0
        for start in range(0, self.n - FRAME + 1, FRAME):
            if start >= self._settled_at():
                break
            if start % CHUNK == 0:
                self.final = self.path.speaker_needs(start + CHUNK)
                self.echo[start : start + CHUNK] = self.path.process(self.ours, start)[
                    : self.n - start
                ]
            now = start / RATE
            self._write_reference(now)
            pcm = to_pcm(mic[start : start + FRAME] + self.echo[start : start + FRAME])
            t = time.thread_time()
            frame = self.stage.process(Frame(start, pcm), now)
            self.cpu += time.thread_time() - t
            for event in self.segmenter.push(frame):
                if isinstance(event, Utterance):
                    self._clip(event, (start + FRAME) / RATE)
            end = start + FRAME
        for event in self.segmenter.flush():
            if isinstance(event, Utterance):
                self._clip(event, end / RATE)
        import daemon

        return RoomRun(
            seed=self.room.params.seed,
            clips=self.clips,
            truth_s=float(np.sum(self.room.truth)) / RATE,
            cut_truth_s=truth_in(self.room.truth, self.clips),
            sent_truth_s=truth_in(self.room.truth, [c for c in self.clips if c.sent]),
            stage_cpu_s=self.cpu,
            frames_10ms=end // (RATE // 100),
            daemon=str(Path(daemon.__file__).parent),
        )

    def _settled_at(self) -> int:
        """The sample from which the room is quiet: no turn left, our last sound heard."""
        path = self.path
        last_sound = self.busy_until / path.ratio + path.bulk + max(path.jump, 0)
        rest = round((SETTLE_S + self.room.params.rt60_s) * RATE)
        return max(self.room.meeting_end, round(last_sound)) + rest

    def _write_reference(self, now: float) -> None:
        block = RATE // 100
        clock = RATE * self.path.ratio
        while (self.written + block) / clock <= now + LEAD_S:
            chunk = to_pcm(self.ours[self.written : self.written + block]).reshape(-1, 1)
            self.played.write(chunk, (self.written + block) / clock)
            self.written += block

    def _heard_echo_share(self, start: int, end: int) -> float:
        """Of what the microphone heard over [start, end), the share that was our echo."""
        echo = self.echo[start:end]
        rest = self.room.people[start:end] + self.room.noise[start:end]
        echo_energy = float(np.dot(echo, echo))
        return echo_energy / (echo_energy + float(np.dot(rest, rest)) + 1e-20)

    def _clip(self, utt: Any, now: float) -> None:
        from daemon.values import Utterance

        t = time.thread_time()
        screened = screen(self.stage, utt)
        self.cpu += time.thread_time() - t
        judged = screened if isinstance(screened, Utterance) else utt  # what is sent
        clip = judged.pcm.astype(np.float64) / 32768.0
        self.clips.append(
            Clip(
                start=utt.start,
                end=utt.end,
                person_s=float(np.sum(self.room.truth[utt.start : utt.end])) / RATE,
                echo_share=echo_share(clip, self.echo, judged.start),
                heard_echo_share=self._heard_echo_share(utt.start, utt.end),
                sent=isinstance(screened, Utterance),
                judgement=copy.deepcopy(getattr(self.stage, "last_judgement", None)),
            )
        )
        if not isinstance(screened, Utterance):
            return
        start = max(round((now + LATENCY_S) * RATE * self.path.ratio), self.busy_until)
        if start < self.final:
            raise AssertionError("a translation would start in what was already heard")
        length = len(utt.pcm)  # our translation, as long as the clip cut
        voice = np.tile(self.room.voice, 3)[self.voice_at : self.voice_at + length]
        self.voice_at = (self.voice_at + length) % len(self.room.voice)
        self.ours[start : start + len(voice)] += voice
        self.busy_until = start + len(voice)


# ------------------------------------------------------------------ figures


def truth_in(truth: npt.NDArray[np.bool_], clips: Iterable[Clip]) -> float:
    """Seconds of the people's speech (`truth`, per sample) inside `clips`."""
    inside = np.zeros(len(truth), dtype=bool)
    for c in clips:
        inside[c.start : c.end] = True
    return float(np.sum(truth & inside)) / RATE


def figures(runs: Sequence[RoomRun]) -> dict[str, float]:
    """The matrix's rates over `runs` (pooled: sums of counts over sums of counts)."""
    clips = [c for r in runs for c in r.clips]
    alone = [c for c in clips if c.person_s < ALONE_S and c.heard_echo_share >= HEARD_ECHO]
    with_person = [c for c in clips if c.person_s >= PERSON_S]
    sent = [c for c in clips if c.sent]
    truth = sum(r.truth_s for r in runs)
    return {
        "rooms": len(runs),
        "people_cut": sum(r.cut_truth_s for r in runs) / truth if truth else 1.0,
        "people_sent": sum(r.sent_truth_s for r in runs) / truth if truth else 1.0,
        "alone_clips": len(alone),
        "alone_sent": sum(c.sent for c in alone),
        "person_clips": len(with_person),
        "person_dropped": sum(not c.sent for c in with_person),
        "requests": len(sent),
        "own_speech_requests": sum(c.echo_share > OWN_SHARE for c in sent),
        "us_per_10ms": sum(r.stage_cpu_s for r in runs)
        / max(sum(r.frames_10ms for r in runs), 1)
        * 1e6,
    }


# ------------------------------------------------------------------ running rooms


def run_seed(seed: int, cache_dir: Path) -> tuple[RoomRun, float]:
    """Room `seed` in closed loop, and this process's peak RSS (MB) after it."""
    run = ClosedLoop(compose(draw_room(seed), cache_dir)).run()
    return run, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(params: RoomParams, cache_dir: Path) -> None:
    impulse_responses(params, cache_dir)


def run_rooms(seeds: Sequence[int], cache_dir: Path, jobs: int) -> tuple[list[RoomRun], float]:
    """Rooms in closed loop on `jobs` processes; the runs and the peak RSS of a process."""
    args = [(s, cache_dir) for s in seeds]
    if jobs <= 1:
        results = [run_seed(*a) for a in args]
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            results = pool.starmap(run_seed, args, chunksize=1)
    return [r for r, _ in results], max((m for _, m in results), default=0.0)


def default_cache() -> Path:
    """Where the rooms' impulse responses are kept between runs."""
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return home / "roomtranslate" / "echo-matrix"


def prepare_rooms(seeds: Sequence[int], cache_dir: Path, jobs: int) -> None:
    """The impulse responses of `seeds`, into `cache_dir` (shared by later runs)."""
    rooms = {(p.rt60_s, p.placement): p for p in map(draw_room, seeds)}
    with multiprocessing.get_context("fork").Pool(max(jobs, 1)) as pool:
        pool.starmap(prepare, [(p, cache_dir) for p in rooms.values()], chunksize=1)


def json_value(value: Any) -> Any:
    """What json cannot write itself (numpy scalars and arrays, anything else as text)."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run matrix rooms; JSON lines out")
    parser.add_argument("seeds", type=int, nargs="+")
    parser.add_argument("--cache", type=Path, required=True, help="impulse responses")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the daemon's warnings, once per room: quiet
    runs, rss = run_rooms(args.seeds, args.cache, args.jobs)
    with open(args.out, "w") as f:
        f.write(json.dumps({"peak_rss_mb": rss}) + "\n")
        for r in runs:
            f.write(json.dumps(asdict(r), default=json_value) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
