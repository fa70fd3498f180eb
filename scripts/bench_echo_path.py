#!/usr/bin/env python3
"""Benchmark finding the echo path (`daemon.echo.delay.DelayTracker`) on the matrix rooms.

The rooms of `bench_echo.py --matrix` (scripts/echo_rooms.py: people, noise, RT60, bulk
delay, a jump in half of them, drift, a clipping loudspeaker), in open loop: we play a
translation of 2-8 s every 0.5-3 s (our voice of the room), and the tracker is fed what
we played and what the microphone heard, frame by frame, as the canceller feeds it. Each
room three times:

- **echo**: our voice reaches the microphone through the room. Figures: how long until
  the tracked delay is the room's path (its bulk delay plus the direct sound, within
  20 ms), and rooms where it never is; the share of estimates taken while the tracked
  delay was right, and while it was somewhere that is not the path (nor the path before
  a jump: that is "not re-found yet"); after a jump, how long until the new path is
  tracked.
- **no echo**: the same room and what we played, but the microphone never hears us (a
  loudspeaker it cannot hear, the demo's devices before they had a room): rooms where a
  path was claimed at all.
- **tones**: as no echo, our translations the simulator's tones.

Even seeds are the calibration half, odd the held-out half (as the matrix). The same
rooms run with the daemon package of git ref `--baseline` beside today's, same run; then
the tracker's CPU per 10 ms frame.

    .venv/bin/python scripts/bench_echo_path.py               # 80 rooms, ~4 min
    .venv/bin/python scripts/bench_echo_path.py --rooms 20    # ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scripts import echo_matrix
from scripts.bench_echo import export_daemon
from scripts.echo_rooms import CHUNK, RATE, EchoPath, compose, draw_room, to_pcm
from scripts.paths import PROJECT_ROOT as ROOT

BASELINE = "922aea1"  # before the correlation's spread was normalised per lag
RIGHT_S = 0.02  # a tracked delay this close to the path is right
AT_PATH_S = 0.01  # an estimate this close to it is at the path
FRAME = 480
Floats = npt.NDArray[np.float64]


def played(seed: int, n: int, voice: Floats, *, tones: bool) -> Floats:
    """Our translations: 2-8 s each, 0.5-3 s apart, from `voice` or the simulator's tones."""
    import soxr

    from daemon.simulator.speech import tone_samples

    rng = np.random.default_rng([0xEC42, seed])
    ours, at, used = np.zeros(n), round(rng.uniform(0.5, 3.0) * RATE), 0
    while at < n:
        length = min(round(rng.uniform(2.0, 8.0) * RATE), n - at)
        if tones:
            tone = tone_samples(f"{rng.integers(2**32):08x}", length / RATE + 0.1) / 32768.0
            part = 0.4 * soxr.resample(tone.astype(np.float64), 24_000, RATE)[:length]
        else:
            part = np.resize(np.roll(voice, -used), length)
            used += length
        ours[at : at + len(part)] = part
        at += len(part) + round(rng.uniform(0.5, 3.0) * RATE)
    return ours


def run_room(seed: int, cache: Path) -> dict[str, Any]:
    """One room's three runs: per run, each estimate's time and the tracked delay."""
    from daemon.echo.delay import DelayTracker

    params = draw_room(seed)
    room = compose(params, cache)
    n = (room.meeting_end + 3 * RATE) // CHUNK * CHUNK
    ours = played(seed, n, room.voice, tones=False)
    path = EchoPath(params, room.speaker_h, n)
    echo = np.concatenate([path.process(ours, first) for first in range(0, n, CHUNK)])
    heard = room.people[:n] + room.noise[:n]
    direct = int(np.argmax(np.abs(room.speaker_h))) / RATE
    runs: dict[str, Any] = {
        "seed": seed,
        "path_s": params.bulk_ms / 1000 + direct,
        "jump_s": params.jump_ms / 1000,
        "jump_at_s": params.jump_at_s if params.jump_ms else None,
    }
    spent = 0.0
    cases = {
        "echo": (ours, heard + echo),
        "no echo": (ours, heard),
        "tones": (played(seed, n, room.voice, tones=True), heard),
    }
    for case, (reference, mic) in cases.items():
        ref, pcm = to_pcm(reference), to_pcm(mic)
        tracker, track = DelayTracker(), []
        started = time.process_time()
        for at in range(0, n - FRAME + 1, FRAME):
            part = pcm[at : at + FRAME]
            estimate = tracker.push(ref[at : at + FRAME], part, part)
            if estimate is not None:
                track.append((at / RATE, tracker.delay_s, estimate.delay_s, estimate.confidence))
        spent += time.process_time() - started
        runs[case] = track
    runs["us_per_10ms"] = spent / (3 * n / (RATE / 100)) * 1e6
    return runs


def room_figures(run: dict[str, Any]) -> dict[str, Any]:
    path, jump = float(run["path_s"]), float(run["jump_s"])
    jump_at: float | None = run["jump_at_s"]

    def truth(t: float) -> float:
        return path + jump if jump_at is not None and t >= jump_at else path

    def near(d: float | None, x: float) -> bool:
        return d is not None and abs(d - x) <= RIGHT_S

    track = run["echo"]
    right = [near(d, truth(t)) for t, d, _, _ in track]
    spurious = [
        d is not None and not near(d, truth(t)) and not near(d, path) for t, d, _, _ in track
    ]
    first = next((t for (t, *_), ok in zip(track, right, strict=True) if ok), None)
    refound = None
    if jump_at is not None:
        after = [(t, ok) for (t, *_), ok in zip(track, right, strict=True) if t >= jump_at]
        refound = next((t - jump_at for t, ok in after if ok), float("inf")) if after else None
    return {
        "first_s": first,
        "right": float(np.mean(right)) if right else 0.0,
        "spurious": float(np.mean(spurious)) if spurious else 0.0,
        "refound_s": refound,
        "claimed": any(d is not None for _, d, _, _ in run["no echo"]),
        "claimed_tones": any(d is not None for _, d, _, _ in run["tones"]),
        "at_path": [c for t, _, e, c in track if abs(e - truth(t)) <= AT_PATH_S],
        "no_echo_max": max(c for _, _, _, c in [*run["no echo"], *run["tones"]]),
    }


def half_figures(figs: list[dict[str, Any]]) -> str:
    firsts = [f["first_s"] for f in figs if f["first_s"] is not None]
    refound = [f["refound_s"] for f in figs if f["refound_s"] is not None]
    found_again = [x for x in refound if x != float("inf")]

    def p(xs: list[float], q: float) -> float:
        return float(np.percentile(xs, q)) if xs else float("nan")

    return (
        f"path found {p(firsts, 50):4.1f} s median, p90 {p(firsts, 90):4.1f}, never "
        f"{len(figs) - len(firsts)}; right {statistics.mean(f['right'] for f in figs):4.0%} of "
        f"estimates, elsewhere {statistics.mean(f['spurious'] for f in figs):5.1%} "
        f"({sum(f['spurious'] > 0 for f in figs)} rooms); after a jump "
        f"{p(found_again, 50):4.1f} s median, p90 {p(found_again, 90):4.1f}, not in the "
        f"meeting {len(refound) - len(found_again)}/{len(refound)} | no echo: a path claimed "
        f"in {sum(f['claimed'] for f in figs)}/{len(figs)} rooms, with tones "
        f"{sum(f['claimed_tones'] for f in figs)}/{len(figs)}; confidence with no echo at "
        f"most {max(f['no_echo_max'] for f in figs):.1f}, our echo at its path "
        f"{statistics.median(c for f in figs for c in f['at_path']):.1f} (median)"
    )


def side(seeds: list[int], cache: Path) -> None:
    """Run the rooms with whichever daemon package is imported; one JSON line each."""
    for seed in seeds:
        print(json.dumps(run_room(seed, cache), default=echo_matrix.json_value), flush=True)


def run_side(tree: Path, seeds: list[int], cache: Path, jobs: int) -> list[dict[str, Any]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), str(ROOT)]))
    parts = [seeds[i::jobs] for i in range(jobs)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--side", *map(str, part), "--cache", str(cache)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for part in parts
        if part
    ]
    runs = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a side's worker failed ({proc.returncode})")
        runs += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return sorted(runs, key=lambda r: r["seed"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=80, help="rooms (seeds 0..N-1)")
    parser.add_argument("--baseline", default=BASELINE, help='git ref beside today, or "none"')
    parser.add_argument("--jobs", type=int, default=2, help="worker processes per side")
    parser.add_argument("--side", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument(
        "--cache",
        type=Path,
        default=echo_matrix.default_cache(),
    )
    args = parser.parse_args(argv)
    if args.side:
        side(args.side, args.cache)
        return 0
    seeds = list(range(args.rooms))
    args.cache.mkdir(parents=True, exist_ok=True)
    echo_matrix.prepare_rooms(seeds, args.cache, args.jobs)
    with tempfile.TemporaryDirectory(prefix="echo-path-") as tmp:
        trees = {"today": ROOT}
        if args.baseline != "none":
            tree, commit = export_daemon(args.baseline, Path(tmp) / "baseline")
            trees[f"baseline {commit}"] = tree
        sides = {name: run_side(tree, seeds, args.cache, args.jobs) for name, tree in trees.items()}
    for half, parity in (("calibration", 0), ("held-out", 1)):
        print(f"\n{half} half ({len(seeds[parity::2])} rooms)")
        for name, runs in sides.items():
            figs = [room_figures(r) for r in runs if r["seed"] % 2 == parity]
            print(f"  {name:18} {half_figures(figs)}")
    print("\nthe tracker's CPU per 10 ms frame (while we play and while we do not)")
    for name, runs in sides.items():
        print(f"  {name:18} {statistics.mean(r['us_per_10ms'] for r in runs):6.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
