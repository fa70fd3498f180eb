#!/usr/bin/env python3
"""Benchmark the echo stage per mode (off, gate, aec) on a simulated meeting, in closed loop.

The meeting: nine people's utterances (recordings not used by the echo tests) with
0.3-1.0 s between turns, through one room impulse response; our translation of each
sent clip (Chinese recordings, as long as the clip) starts 0.3 s after the clip was cut
and plays from the speaker, reaching the microphone through another (-3 dB, 60 ms, RT60
0.45 s) — so each translation plays while the next person talks. The daemon's own echo
stage, segmenter and guard run frame by frame, as in the room.

Per mode it prints: the share of the people's speech inside sent clips, the requests,
those that carry our own speech (more than 10% of the clip's energy is our echo), the
echo dropped by the guard, ERLE and double-talk VAD recall (separate echo-only and
double-talk runs), µs per 10 ms frame of the echo stage, and the peak RSS of a process
running it; then the ratios against `off`.

    .venv/bin/python scripts/bench_echo.py            # all three modes, ~1 min

`--matrix` runs the room matrix instead (scripts/echo_matrix.py; the rooms and what is
drawn per room: scripts/echo_rooms.py): `--rooms` rooms (default 200; `--quick`: 20),
seeds 0..N-1, even seeds the calibration half, odd the held-out half, each in closed loop
through the `aec` stage of `daemon.echo.make_echo_stage`, on `--jobs` (at most 2)
processes; and the same rooms, same run, with the daemon package of git ref `--baseline`
(default today's main, `none` to skip), exported with `git archive` to a temporary
directory and imported first by a subprocess (PYTHONPATH). Per room, per half and per
bucket of the held-out half, per side:

- people cut, sent: the share of the people's speech (voiced 10 ms frames of their
  turns) inside the clips the segmenter cut, and inside sent clips;
- alone sent: of the clips the segmenter cut with under 0.1 s of a person's speech in
  them and at least half of what the microphone heard over them our echo (our voice
  alone, not the room's noise), those the guard let pass;
- person dropped: of the clips with at least 0.2 s of a person's speech, those dropped;
- own-speech req: sent clips with more than 10% of their energy our echo (`echo_share`).

Then the echo stage's CPU time (process and screen) per 10 ms frame and the peak RSS
of a worker process. `--dump FILE` writes one JSON line per clip cut (side, room, its
parameters and half, start/end, a person's seconds in it, our echo's share, sent or
dropped, and the stage's `last_judgement` where it has one), for an ROC.

    .venv/bin/python scripts/bench_echo.py --matrix --quick          # ~3 min
    .venv/bin/python scripts/bench_echo.py --matrix --dump clips.jsonl  # ~20 min
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from daemon.config import LiveRoom, RoomSettings, SegmenterSettings
from daemon.counters import Counters
from daemon.echo import EchoCanceller, EchoGate, PlayedAudio, Verdict
from daemon.echo.reference import ReferenceAligner
from daemon.segmenter import Segmenter
from daemon.values import SAMPLE_RATE, Frame, Utterance
from scripts import echo_matrix, echo_rooms, room_echo
from scripts.echo_rooms import load, rms, to_pcm
from scripts.paths import PROJECT_ROOT as ROOT

RATE = SAMPLE_RATE
FRAME = 480
MEETING = [  # (recording, seconds used, silence before it)
    ("en_pv_falcon3", 6.0, 0.8),
    ("ru_silero_numbers", 5.0, 0.5),
    ("ko_pv_leopard", 5.0, 0.9),
    ("en_wenet_librispeech", 6.0, 0.3),
    ("es_silero_60s", 6.0, 1.0),
    ("ar_habibi_irq", 5.0, 0.6),
    ("yue_funasrggml_yue", 5.0, 0.4),
    ("en_osr_harvard_8k", 6.0, 0.7),
    ("fr_sr_french", 3.0, 0.9),
]
OUR_VOICE = ["zh_funasr_long", "zh_funasr_mid", "zh_wenet_aishell", "zh_funasrggml_zh"]
PEOPLE_DBFS, OURS_DBFS = -24.0, -20.0
ECHO = {"delay_s": 0.060, "gain_db": -3.0}
LATENCY_S = 0.3  # clip cut → our translation starts playing
LEAD_S = 0.04  # the playback callback writes this far ahead
OWN_SHARE = 0.1
Floats = npt.NDArray[np.float64]


class Meeting:
    """The people's track (through the room) and where each of them spoke."""

    def __init__(self) -> None:
        h = room_echo.room_impulse_response(0.45, 11)
        parts, self.truth, at = [], [], 0.0
        for name, seconds, gap in MEETING:
            x = load(name, seconds)
            x = np.convolve(x, h)[: len(x)]
            parts += [np.zeros(round(gap * RATE)), x / rms(x) * 10 ** (PEOPLE_DBFS / 20)]
            at += gap
            self.truth.append((at, at + len(x) / RATE))
            at += len(x) / RATE
        parts.append(np.zeros(8 * RATE))
        self.track = np.concatenate(parts)
        voice = np.concatenate([load(n) for n in OUR_VOICE])
        self.voice = voice / rms(voice) * 10 ** (OURS_DBFS / 20)


class Loop:
    """The room in closed loop: what we play depends on what the segmenter sent."""

    def __init__(self, meeting: Meeting, mode: str) -> None:
        self.meeting = meeting
        self.mode = mode
        self.n = len(meeting.track)
        self.ours = np.zeros(self.n + 30 * RATE)
        self.room = room_echo.RoomEcho(
            room_echo.room_impulse_response(0.45, 3),
            FRAME,
            delay=round(ECHO["delay_s"] * RATE),
            gain_db=ECHO["gain_db"],
        )
        self.counters = Counters()
        self.played = PlayedAudio(self.counters)
        self.played.open(RATE)
        self.written = 0
        self.busy_until = 0  # sample where our current translation ends
        self.stage: Any
        if mode == "aec":
            self.stage = EchoCanceller(
                ReferenceAligner(self.played, self.counters), self.counters, self.audible_until
            )
        else:
            self.stage = EchoGate(self.audible_until, self.counters, mode=mode, tail_s=0.3)  # type: ignore[arg-type]
        self.segmenter = Segmenter(
            SegmenterSettings(),
            LiveRoom(RoomSettings()),
            self.counters,
            lambda s: s / RATE,
            confirmer=echo_matrix.confirmer_for(self.stage),
        )
        self.echo = np.zeros(self.n)
        self.sent: list[Utterance] = []
        self.dropped = 0
        self.stage_s = 0.0
        self.voice_at = 0

    def audible_until(self) -> float:
        return self.busy_until / RATE

    def run(self) -> None:
        noise = np.random.default_rng(0).standard_normal(self.n) * 10 ** (-65 / 20)
        for start in range(0, self.n - FRAME + 1, FRAME):
            now = start / RATE
            self._write_reference(now)
            echo = self.room.process(self.ours[start : start + FRAME])
            self.echo[start : start + FRAME] = echo
            mic = self.meeting.track[start : start + FRAME] + echo + noise[start : start + FRAME]
            t = time.perf_counter()
            frame = self.stage.process(Frame(start, to_pcm(mic)), now)
            self.stage_s += time.perf_counter() - t
            for event in self.segmenter.push(frame):
                if isinstance(event, Utterance):
                    self._clip(event, start + FRAME)

    def _write_reference(self, now: float) -> None:
        block = RATE // 100
        while (self.written + block) / RATE <= now + LEAD_S:
            chunk = to_pcm(self.ours[self.written : self.written + block]).reshape(-1, 1)
            self.played.write(chunk, (self.written + block) / RATE)
            self.written += block

    def _clip(self, utt: Utterance, now: int) -> None:
        screened = echo_matrix.screen(self.stage, utt)
        if isinstance(screened, Verdict):
            self.dropped += 1
            return
        self.sent.append(screened)
        start = max(now + round(LATENCY_S * RATE), self.busy_until)
        length = len(screened.pcm)
        voice = np.tile(self.meeting.voice, 3)[self.voice_at : self.voice_at + length]
        self.voice_at = (self.voice_at + length) % len(self.meeting.voice)
        self.ours[start : start + len(voice)] += voice
        self.busy_until = start + len(voice)

    def figures(self) -> dict[str, float]:
        covered = sum(
            max(0.0, min(b, u.end / RATE) - max(a, u.start / RATE))
            for a, b in self.meeting.truth
            for u in self.sent
        )
        people = sum(b - a for a, b in self.meeting.truth)
        shares = [self._echo_share(u) for u in self.sent]
        frames = self.n // FRAME
        return {
            "coverage": covered / people,
            "requests": len(self.sent),
            "own_speech_requests": sum(1 for s in shares if s > OWN_SHARE),
            "echo_dropped": self.dropped,
            "us_per_10ms": self.stage_s / (frames * 3) * 1e6,
        }

    def _echo_share(self, utt: Utterance) -> float:
        clip = utt.pcm.astype(np.float64) / 32768.0
        return echo_matrix.echo_share(clip, self.echo, utt.start, step=16)


def erle_and_recall(mode: str) -> tuple[float, float]:
    """Echo only for 8 s, then a person over our speech: ERLE on the first part (after
    2 s), webrtcvad recall of the person in the second."""
    import webrtcvad

    voice = Meeting().voice[: 16 * RATE]
    person = load("en_pv_falcon3", 6.0)
    h_p = room_echo.room_impulse_response(0.45, 12)
    person = np.convolve(person, h_p)[: len(person)]
    person = person / rms(person) * 10 ** ((OURS_DBFS - 3) / 20)
    echo = room_echo.echo_of(voice, room_echo.room_impulse_response(0.45, 3), **ECHO)
    people = np.zeros(len(voice))
    people[9 * RATE : 9 * RATE + len(person)] = person
    mic = echo + people
    played = soxr.resample(voice, RATE, 24_000)
    stage = None if mode == "aec" else EchoGate(lambda: 0.0, Counters(), mode="off")
    out, _ = room_echo.run_canceller(mic, played, stage=stage)
    if mode == "gate":  # the gate silences the microphone while we speak
        out = np.zeros_like(out)
    a, b = 2 * RATE, 8 * RATE
    erle = 10 * np.log10(np.sum(mic[a:b] ** 2) / max(np.sum(out[a:b] ** 2), 1e-20))
    vad = webrtcvad.Vad(2)

    def voiced(x: Floats) -> npt.NDArray[np.bool_]:
        pcm = to_pcm(x)
        return np.array(
            [vad.is_speech(pcm[k : k + 480].tobytes(), RATE) for k in range(0, len(pcm) - 479, 480)]
        )

    lo, hi = 9 * RATE, 9 * RATE + len(person)
    truth = voiced(people[lo:hi])
    recall = float(np.sum(truth & voiced(out[lo:hi])) / max(np.sum(truth), 1))
    return float(min(erle, 99.0)), recall


def one_mode(mode: str) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loop = Loop(Meeting(), mode)
    loop.run()
    figures = loop.figures()
    figures["erle_db"], figures["double_talk_recall"] = erle_and_recall(mode)
    figures["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["rss_added_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return figures


# ------------------------------------------------------------------ the room matrix

BASELINE = "b949742"
Bucket = tuple[str, Callable[[echo_rooms.RoomParams], bool]]


def _bands(label: str, key: str, edges: list[float]) -> list[Bucket]:
    """Buckets of |`key`| between consecutive `edges` (the last one closed)."""

    def within(lo: float, hi: float, last: bool) -> Callable[[echo_rooms.RoomParams], bool]:
        return lambda p: lo <= abs(getattr(p, key)) < hi or (last and abs(getattr(p, key)) == hi)

    pairs = list(itertools.pairwise(edges))
    return [
        (f"{label} {lo:g}..{hi:g}", within(lo, hi, i == len(pairs) - 1))
        for i, (lo, hi) in enumerate(pairs)
    ]


BUCKETS: list[Bucket] = [
    ("echo dB -12..-6", lambda p: p.echo_db < -6),
    ("echo dB -6..0", lambda p: -6 <= p.echo_db < 0),
    ("echo dB 0..+6", lambda p: p.echo_db >= 0),
    *_bands("bulk ms", "bulk_ms", [5, 100, 400, 800]),
    ("no jump", lambda p: p.jump_ms == 0),
    ("jump grows", lambda p: p.jump_ms > 0),
    ("jump shrinks", lambda p: p.jump_ms < 0),
    *_bands("|jump| ms", "jump_ms", [20, 200, 500]),
    *_bands("RT60 s", "rt60_s", [0.2, 0.5, 0.8, 1.2]),
    *_bands("|drift| ppm", "ppm", [0, 100, 200]),
    ("linear speaker", lambda p: p.clip_drive == 0),
    ("clipping speaker", lambda p: p.clip_drive > 0),
    *_bands("SNR dB", "snr_db", [10, 20, 40]),
]


def export_daemon(ref: str, into: Path) -> tuple[Path, str]:
    """The daemon package at git `ref`, unpacked under `into`; and the commit."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "daemon"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return into, commit


def _run_side(
    tree: Path, seeds: list[int], cache: Path, jobs: int, out: Path
) -> tuple[list[echo_matrix.RoomRun], float, float]:
    """The rooms with the daemon package of `tree`: runs, peak RSS (MB), wall seconds."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), str(ROOT)]))
    started = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "echo_matrix.py"),
            *map(str, seeds),
            "--cache",
            str(cache),
            "--jobs",
            str(jobs),
            "--out",
            str(out),
        ],
        env=env,
        check=True,
    )
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    runs = []
    for d in lines[1:]:
        d["clips"] = [echo_matrix.Clip(**c) for c in d["clips"]]
        runs.append(echo_matrix.RoomRun(**d))
    return runs, float(lines[0]["peak_rss_mb"]), time.monotonic() - started


def _rate(n: float, of: float) -> str:
    return f"{n:.0f}/{of:.0f} {n / of:6.1%}" if of else f"{n:.0f}/0 {'-':>6}"


def _cells(f: dict[str, float]) -> str:
    return (
        f"{f['people_cut']:6.1%} {f['people_sent']:6.1%}"
        f" {_rate(f['alone_sent'], f['alone_clips']):>15}"
        f" {_rate(f['person_dropped'], f['person_clips']):>15}"
        f" {_rate(f['own_speech_requests'], f['requests']):>15}"
    )


def _print_table(
    title: str,
    rows: list[tuple[str, list[int]]],
    sides: dict[str, dict[int, echo_matrix.RoomRun]],
) -> None:
    cols = (
        f"{'people cut  sent':>13} {'alone sent':>15} {'person dropped':>15} {'own-speech req':>15}"
    )
    print(f"\n{title}\n{'':24} {'rooms':>5} " + " | ".join(f"{s:^61}" for s in sides))
    print(f"{'':24} {'':>5} " + " | ".join(cols for _ in sides))
    for label, seeds in rows:
        cells = [_cells(echo_matrix.figures([runs[s] for s in seeds])) for runs in sides.values()]
        print(f"{label:24} {len(seeds):>5} " + " | ".join(cells))


def _dump(path: Path, params: dict[int, echo_rooms.RoomParams], sides: dict[str, Any]) -> None:
    with open(path, "w") as f:
        for side, runs in sides.items():
            for seed, run in runs.items():
                p = params[seed]
                for c in run.clips:
                    line = {
                        "side": side,
                        "room": seed,
                        "half": p.half,
                        "params": p.summary(),
                        "start_s": c.start / RATE,
                        "end_s": c.end / RATE,
                        "person_s": c.person_s,
                        "echo_share": c.echo_share,
                        "heard_echo_share": c.heard_echo_share,
                        "outcome": "sent" if c.sent else "dropped",
                        "last_judgement": c.judgement,
                    }
                    f.write(json.dumps(line, default=echo_matrix.json_value) + "\n")


def matrix(rooms: int, jobs: int, baseline: str, dump: Path | None, cache: Path) -> int:
    """The room matrix, today's checkout beside `baseline` (a git ref, or "none")."""
    seeds = list(range(rooms))
    params = {s: echo_rooms.draw_room(s) for s in seeds}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="echo-matrix-") as tmp:
        cache.mkdir(parents=True, exist_ok=True)
        echo_matrix.prepare_rooms(seeds, cache, jobs)
        print(f"rooms composed: {rooms} in {time.monotonic() - started:.0f} s", flush=True)
        trees = {"current": ROOT}
        if baseline != "none":
            tree, commit = export_daemon(baseline, Path(tmp) / "baseline")
            trees[f"baseline {commit}"] = tree
        sides: dict[str, dict[int, echo_matrix.RoomRun]] = {}
        costs = {}
        for side, tree in trees.items():
            runs, rss, wall = _run_side(tree, seeds, cache, jobs, Path(tmp) / "out.jsonl")
            sides[side] = {r.seed: r for r in runs}
            costs[side] = (echo_matrix.figures(runs)["us_per_10ms"], rss, wall, runs[0].daemon)
    print("\nper room: seed half people/voice language, RT60 s, echo dB, bulk ms, jump ms,")
    print("ppm, clipping drive, SNR dB; per side people cut and sent, alone sent, dropped,")
    print("own-speech requests")
    for s in seeds:
        p = params[s]
        head = (
            f"{s:4} {p.half[:4]} {p.people_lang:>3}/{p.voice_lang:<3} {p.rt60_s:4.2f}"
            f" {p.echo_db:+5.1f} {p.bulk_ms:4.0f} {p.jump_ms:+4.0f} {p.ppm:+4.0f}"
            f" {p.clip_drive:3.1f} {p.snr_db:4.1f}"
        )
        print(head + "  " + " | ".join(_cells(echo_matrix.figures([r[s]])) for r in sides.values()))
    halves = [(h, [s for s in seeds if params[s].half == h]) for h in ("calibration", "held-out")]
    _print_table("totals", halves, sides)
    held = halves[1][1]
    rows = [(label, [s for s in held if pred(params[s])]) for label, pred in BUCKETS]
    _print_table("held-out half, per bucket", rows, sides)
    print("\ncost of the echo stage (process + screen), CPU per 10 ms frame; peak RSS of a worker")
    for side, (us, rss, wall, where) in costs.items():
        print(f"{side:18} {us:7.1f} µs/10ms  {rss:6.1f} MB  {wall:5.0f} s wall  ({where})")
    print(f"total {time.monotonic() - started:.0f} s, {jobs} worker processes")
    if dump:
        _dump(dump, params, sides)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["off", "gate", "aec"], help="one mode, as JSON")
    parser.add_argument("--matrix", action="store_true", help="the room matrix instead")
    parser.add_argument("--rooms", type=int, default=200, help="matrix rooms (seeds 0..N-1)")
    parser.add_argument("--quick", action="store_true", help="a matrix of 20 rooms")
    parser.add_argument("--jobs", type=int, default=2, help="matrix worker processes")
    parser.add_argument("--baseline", default=BASELINE, help='git ref beside today, or "none"')
    parser.add_argument("--dump", type=Path, help="matrix: one JSON line per clip cut")
    parser.add_argument(
        "--cache",
        type=Path,
        default=echo_matrix.default_cache(),
        help="matrix: the rooms' impulse responses are kept here (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.matrix:
        rooms = 20 if args.quick else args.rooms
        return matrix(rooms, min(args.jobs, 2), args.baseline, args.dump, args.cache)
    if args.mode:
        print(json.dumps(one_mode(args.mode)))
        return 0
    results: dict[str, dict[str, float]] = {}
    for mode in ("off", "gate", "aec"):  # each in its own process: its own peak RSS
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode], capture_output=True, text=True, check=True
        )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"{'mode':5} {'people in sent clips':>21} {'requests':>9} {'own speech':>11}"
        f" {'echo dropped':>13} {'ERLE dB':>8} {'DT recall':>10} {'µs/10ms':>8} {'RSS MB':>7}"
    )
    for mode, r in results.items():
        print(
            f"{mode:5} {r['coverage']:>21.1%} {r['requests']:>9.0f}"
            f" {r['own_speech_requests']:>11.0f} {r['echo_dropped']:>13.0f}"
            f" {r['erle_db']:>8.1f} {r['double_talk_recall']:>10.2f}"
            f" {r['us_per_10ms']:>8.1f} {r['rss_mb']:>7.1f}"
        )
    base = results["off"]
    for mode in ("gate", "aec"):
        r = results[mode]
        print(
            f"{mode} / off: people in sent clips {r['coverage'] / base['coverage']:.2f}x,"
            f" own-speech requests {r['own_speech_requests']:.0f}"
            f" vs {base['own_speech_requests']:.0f},"
            f" stage cost {r['us_per_10ms'] / max(base['us_per_10ms'], 1e-9):.0f}x,"
            f" RSS {r['rss_mb'] - base['rss_mb']:+.1f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
