#!/usr/bin/env python3
"""Benchmark: does an end-of-turn model tell a turn's end from a pause inside it?

    .venv/bin/python scripts/bench_turn_end.py --wheel pipecat_ai-1.14.0-py3-none-any.whl

The model: smart-turn v3.2 (`smart-turn-v3.2-cpu.onnx`, BSD-2-Clause) and its numpy
Whisper feature extractor, both read from a `pipecat-ai` wheel (nothing of pipecat is
installed or imported), run with onnxruntime on one thread on the last 8 s of the clip in
progress, as pipecat runs it. The points: every pause of the segmenter's own per-frame
decision (`Voicing`) reaching `--stop-ms` of unvoiced frames after speech, on

- the AMI meetings (`en_ami_tst00`, `en_ami_EN2002a_30s`, `en_ami_tst01`, far-field,
  overlapping): a turn's end unless it lies more than 0.3 s inside a speaker's reference
  turn (scripts/segscore.py's "cut inside a turn");
- the manifest's single-speaker recordings (a dozen languages, one turn each, 1 s of
  silence after): the last pause is the turn's end, the others pauses inside it;
- the 60 s monologues and the Harvard sentences: the same, reported apart.

Per set: the area under the ROC curve of the model's probability and of the pause's
whole length (what a hangover decides on: the 600 ms hangover ends a turn where the
pause reaches 600 ms), the turn ends and inside pauses a threshold calls ends (the
threshold set on the single-speaker recordings, judged on the others), and the model's
CPU time per decision (features, inference).
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib.util
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from daemon.config import LiveRoom, RoomSettings, SegmenterSettings
from daemon.segmenter import Voicing
from daemon.values import SAMPLE_RATE, Pcm
from scripts.paths import AUDIO_DIR, PROJECT_ROOT
from scripts.scenario import load, pcm_frames
from scripts.segscore import INSIDE_S, Turn, read_rttm

MODEL = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
FEATURES = "pipecat/audio/turn/smart_turn/_whisper_features.py"
WINDOW = 8 * SAMPLE_RATE  # the model's input: the last 8 s, zero-padded in front
PRE_S = 0.3  # audio kept before the speech the pause ends (the segmenter's pre-roll)
HANGOVER_S = 0.6
AMI = (
    ("en_ami_tst00", AUDIO_DIR / "en_ami_tst00.rttm"),
    ("en_ami_EN2002a_30s", PROJECT_ROOT / "tests/data/en_ami_EN2002a_30s.rttm"),
    ("en_ami_tst01", AUDIO_DIR / "en_ami_tst01.rttm"),
)
LONG = ("de_silero_60s", "es_silero_60s", "ru_silero_60s", "en_osr_harvard_8k")
Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Point:
    pause_s: float  # the pause's whole length (unvoiced frames)
    probability: float  # the model's "complete"
    end: bool  # the truth: the turn ends here


class SmartTurn:
    """smart-turn v3.2 from a pipecat-ai wheel, on one onnxruntime thread."""

    def __init__(self, wheel: Path, scratch: Path) -> None:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(MODEL, scratch)
            archive.extract(FEATURES, scratch)
        spec = importlib.util.spec_from_file_location("whisper_features", scratch / FEATURES)
        assert spec is not None and spec.loader is not None
        module: ModuleType = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self._features: Callable[..., Floats] = module.compute_whisper_log_mel_features
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(str(scratch / MODEL), sess_options=options)
        self.feature_s = self.inference_s = 0.0
        self.calls = 0

    def complete(self, pcm: Pcm) -> float:
        audio = (pcm[-WINDOW:].astype(np.float32) / 32768.0).astype(np.float32)
        audio = np.pad(audio, (WINDOW - len(audio), 0))
        began = time.process_time()
        features = self._features(audio, do_normalize=True)[np.newaxis]
        featured = time.process_time()
        out = self._session.run(None, {"input_features": features})
        self.feature_s += featured - began
        self.inference_s += time.process_time() - featured
        self.calls += 1
        return float(np.asarray(out[0]).reshape(-1)[0])


def pauses(pcm: Pcm, stop_ms: int) -> list[tuple[int, int, int]]:
    """(speech start, pause start, pause length) in frames, per pause reaching `stop_ms`;
    the speech starts after the last pause of a hangover or more."""
    settings = SegmenterSettings()
    frame_s = settings.frame_ms / 1000
    judge = Voicing(settings, LiveRoom(RoomSettings()))
    voiced = [judge.judge(frame).voiced for frame in pcm_frames(pcm, settings.frame_ms)]
    stop = -(-stop_ms // settings.frame_ms)
    out: list[tuple[int, int, int]] = []
    start: int | None = None
    k = 0
    while k < len(voiced):
        if not voiced[k]:
            k += 1
            continue
        run_end = k
        while run_end < len(voiced) and voiced[run_end]:
            run_end += 1
        if start is None:
            start = k
        quiet = run_end
        while quiet < len(voiced) and not voiced[quiet]:
            quiet += 1
        if quiet - run_end >= stop:
            out.append((start, run_end, quiet - run_end))
        if (quiet - run_end) * frame_s >= HANGOVER_S:
            start = None
        k = quiet
    return out


def points(
    pcm: Pcm, model: SmartTurn, stop_ms: int, is_end: Callable[[float], bool]
) -> list[Point]:
    frame = SAMPLE_RATE * SegmenterSettings().frame_ms // 1000
    found = []
    for start, pause, length in pauses(pcm, stop_ms):
        begin = max(0, start * frame - round(PRE_S * SAMPLE_RATE))
        heard = pcm[begin : pause * frame + round(stop_ms / 1000 * SAMPLE_RATE)]
        at = pause * frame / SAMPLE_RATE
        found.append(Point(length * frame / SAMPLE_RATE, model.complete(heard), is_end(at)))
    return found


def ami_points(model: SmartTurn, stop_ms: int) -> list[Point]:
    found: list[Point] = []
    for name, rttm in AMI:
        pcm = load(name)
        turns = read_rttm(rttm, len(pcm) / SAMPLE_RATE)
        found += points(pcm, model, stop_ms, functools.partial(ended, turns=turns))
    return found


def ended(at: float, turns: list[Turn]) -> bool:
    """A clip ending `post_roll_ms` into a pause at `at` ends no reference turn early."""
    end = at + SegmenterSettings().post_roll_ms / 1000
    return not any(t.start + INSIDE_S < end < t.end - INSIDE_S for t in turns)


def turn_points(names: list[str], model: SmartTurn, stop_ms: int) -> list[Point]:
    found: list[Point] = []
    for name in names:
        silence = np.zeros(SAMPLE_RATE, dtype=np.int16)
        pcm = np.concatenate([silence[: SAMPLE_RATE // 2], load(name), silence])
        these = points(pcm, model, stop_ms, lambda at: False)
        if these:  # the last pause is the turn's end
            these[-1] = Point(these[-1].pause_s, these[-1].probability, True)
        found += these
    return found


def single_speaker(audio_dir: Path) -> list[str]:
    with open(audio_dir / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = [r["file"].removesuffix(".wav") for r in rows if r["speakers"].strip() == "1"]
    return [n for n in names if n not in LONG and not n.startswith("noise")]


def auc(ends: list[float], inside: list[float]) -> float:
    if not ends or not inside:
        return float("nan")
    wins = sum((e > i) + 0.5 * (e == i) for e in ends for i in inside)
    return float(wins) / (len(ends) * len(inside))


def report(label: str, found: list[Point], threshold: float) -> None:
    ends = [p for p in found if p.end]
    inside = [p for p in found if not p.end]
    model_auc = auc([p.probability for p in ends], [p.probability for p in inside])
    pause_auc = auc([p.pause_s for p in ends], [p.pause_s for p in inside])

    def called(ps: list[Point], rule: Callable[[Point], bool]) -> str:
        return f"{sum(map(rule, ps)):>3}/{len(ps):<3}"

    model = called(ends, lambda p: p.probability > threshold)
    model_in = called(inside, lambda p: p.probability > threshold)
    hang = called(ends, lambda p: p.pause_s >= HANGOVER_S)
    hang_in = called(inside, lambda p: p.pause_s >= HANGOVER_S)
    print(
        f"{label:<30}{len(ends):>5}{len(inside):>7}{model_auc:>9.2f}{pause_auc:>9.2f}"
        f"   {model} {model_in}   {hang} {hang_in}"
    )


def calibrate(found: list[Point]) -> float:
    """The threshold calling the most turn ends while calling at most as many inside
    pauses ends as the hangover does."""
    budget = sum(p.pause_s >= HANGOVER_S for p in found if not p.end)
    best = 0.99
    for threshold in sorted({p.probability for p in found}, reverse=True):
        if sum(p.probability > threshold for p in found if not p.end) > budget:
            break
        best = threshold
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--wheel", type=Path, required=True, help="a pipecat-ai wheel")
    parser.add_argument("--audio-dir", type=Path, default=AUDIO_DIR)
    parser.add_argument("--stop-ms", type=int, default=200, help="the short VAD stop")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="turn-end-") as scratch:
        model = SmartTurn(args.wheel, Path(scratch))
        single = turn_points(single_speaker(args.audio_dir), model, args.stop_ms)
        long = turn_points(list(LONG), model, args.stop_ms)
        ami = ami_points(model, args.stop_ms)
    threshold = calibrate(single)
    print(f"pauses of ≥ {args.stop_ms} ms; threshold {threshold:.2f} (set on the single speakers)")
    print(
        f"{'':<30}{'ends':>5}{'inside':>7}{'AUC st':>9}{'AUC len':>9}"
        f"   {'smart-turn ends/inside':<22}   {'pause ≥ 600 ms ends/inside'}"
    )
    report("single speakers (calibration)", single, threshold)
    report("AMI meetings (held out)", ami, threshold)
    report("monologues (held out)", long, threshold)
    calls = max(model.calls, 1)
    print(
        f"smart-turn per decision (CPU, one thread): features {model.feature_s / calls * 1e6:.0f}"
        f" µs + inference {model.inference_s / calls * 1e6:.0f} µs, over {model.calls} decisions"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
