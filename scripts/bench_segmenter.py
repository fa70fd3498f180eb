#!/usr/bin/env python3
"""Benchmark: segmentation quality on real meetings, per detector and setting.

    .venv/bin/python scripts/bench_segmenter.py [--audio-dir ../shared/audio] [--quick]
        [--segmenter KEY=VALUE ...]

For each configuration (webrtcvad as it was before issue 7, webrtcvad fixed, earshot,
silero, and each with the Silero clip confirmation) the Segmenter runs over real AMI
meeting recordings against their human speaker-turn references (scripts/segscore.py):

- en_ami_tst00.wav  (+ .rttm)            JUDGED: nothing was tuned on it
- en_ami_EN2002a_30s.wav (tests/data/*.rttm)  TUNED on (with the composed scenarios)
- en_ami_tst01.wav  (+ .rttm)            reported: sparse speech, many non-speech sounds

Columns: miss (reference speech outside every clip), false alarm (clip time outside the
reference, as a share of the reference speech), clips, billed seconds (each clip ≥ 1 s),
clips ending more than 0.3 s inside a speaker's turn, and the segmenter's cost per 30 ms
frame; then each configuration over the three files together. Then bad input: every
shared noise_*.wav alone and all of them concatenated (requests and billed seconds; the
target is none), and tst00 with a 0.05 DC offset and with 50 Hz mains hum (within 1
point of the clean file). `--segmenter KEY=VALUE` (repeatable) changes a setting of the
default configuration (the last row), the one the verdict judges. Exits 0 whatever the
verdict.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.config import LiveRoom, RoomSettings, SegmenterSettings
from daemon.counters import Counters
from daemon.segmenter import FrameJudge, Segmenter
from daemon.values import SAMPLE_RATE, Pcm, Utterance
from scripts import segmenter_arg
from scripts.legacy_vad import LegacyJudge
from scripts.paths import AUDIO_DIR
from scripts.scenario import load, pcm_frames
from scripts.segscore import MIN_BILLED_S, Score, Turn, read_rttm, score

ROOT = Path(__file__).resolve().parent.parent
DONE_MISS, DONE_FA, DONE_CUTS = 0.03, 0.12, 2
Span = tuple[float, float]


@dataclass(frozen=True)
class Config:
    name: str
    settings: SegmenterSettings
    legacy: bool = False


def configs(quick: bool, default: SegmenterSettings, changed: bool) -> list[Config]:
    s = SegmenterSettings
    rows = [
        Config("webrtc as it was", s(highpass_hz=0, confirm="off"), legacy=True),
        Config("webrtc fixed", s(detector="webrtc", confirm="off")),
        Config("earshot 0.5", s(detector="earshot", confirm="off")),
        Config("earshot 0.4", s(detector="earshot", earshot_threshold=0.4, confirm="off")),
        Config("silero 0.5", s(detector="silero", confirm="off")),
        Config("earshot 0.4 + confirm", s(detector="earshot", earshot_threshold=0.4)),
        Config("default, no pause cuts", s(split_after_s=60.0)),
        Config("default, changed" if changed else "webrtc + silero confirm", default),
    ]
    return [rows[0], rows[1], *rows[-2:]] if quick else rows


@dataclass(frozen=True)
class Run:
    spans: list[Span]
    us_per_frame: float


def segment(pcm: Pcm, config: Config) -> Run:
    room = LiveRoom(RoomSettings())
    judge: FrameJudge | None = LegacyJudge(config.settings, room) if config.legacy else None
    segmenter = Segmenter(config.settings, room, Counters(), lambda s: s / SAMPLE_RATE, judge=judge)
    frames = pcm_frames(pcm, config.settings.frame_ms)
    spans: list[Span] = []
    began = time.perf_counter()
    for frame in frames:
        spans += _spans(segmenter.push(frame))
    spans += _spans(segmenter.flush())
    elapsed = time.perf_counter() - began
    return Run(spans, elapsed / max(1, len(frames)) * 1e6)


def _spans(events: Sequence[object]) -> list[Span]:
    return [
        (e.start / SAMPLE_RATE, e.end / SAMPLE_RATE) for e in events if isinstance(e, Utterance)
    ]


# ----------------------------------------------------------------------------- material


@dataclass(frozen=True)
class Meeting:
    label: str
    pcm: Pcm
    turns: list[Turn]

    @property
    def seconds(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


def meetings(audio_dir: Path) -> list[Meeting]:
    def one(label: str, name: str, rttm: Path) -> Meeting:
        pcm = load(str(audio_dir / f"{name}.wav"))
        return Meeting(label, pcm, read_rttm(rttm, len(pcm) / SAMPLE_RATE))

    return [
        one("tst00 (judged)", "en_ami_tst00", audio_dir / "en_ami_tst00.rttm"),
        one("EN2002a (tuned)", "en_ami_EN2002a_30s", ROOT / "tests/data/en_ami_EN2002a_30s.rttm"),
        one("tst01", "en_ami_tst01", audio_dir / "en_ami_tst01.rttm"),
    ]


def with_dc(pcm: Pcm, offset: float) -> Pcm:
    shifted = pcm.astype(np.int32) + round(offset * 32768)
    out: Pcm = np.clip(shifted, -32768, 32767).astype(np.int16)
    return out


def with_hum(
    pcm: Pcm, level_dbfs: float, hz: float = 50.0, harmonics: tuple[int, ...] = (1, 3, 5, 7)
) -> Pcm:
    """Mains hum at `hz` (with odd harmonics: a buzz), at `level_dbfs` RMS in all."""
    t = np.arange(len(pcm)) / SAMPLE_RATE
    hum = sum(np.sin(2 * np.pi * hz * k * t) / k for k in harmonics)
    hum *= 10 ** (level_dbfs / 20) * 32768 / np.sqrt(np.mean(hum * hum))
    out: Pcm = np.clip(pcm + hum, -32768, 32767).astype(np.int16)
    return out


def noises(audio_dir: Path) -> list[tuple[str, Pcm]]:
    named = [(p.stem, load(str(p))) for p in sorted(audio_dir.glob("noise_*.wav"))]
    if named:
        named.append(("all concatenated", np.concatenate([pcm for _, pcm in named])))
    return named


# ----------------------------------------------------------------------------- report


def header() -> None:
    print(
        f"{'configuration':<26}{'file':<18}{'miss':>7}{'FA':>8}{'clips':>6}"
        f"{'billed':>8}{'cut':>6}{'µs/frame':>10}"
    )


def line(config: str, label: str, result: Score, us: float) -> None:
    print(f"{config:<26}{label:<18}{result.row()}{us:>10.0f}")


def verdict(result: Score) -> str:
    ok = (
        result.miss <= DONE_MISS
        and result.false_alarm <= DONE_FA
        and result.cut_inside <= DONE_CUTS
    )
    return "PASS" if ok else "FAIL"


def quality(rows: list[Config], files: list[Meeting]) -> dict[str, Score]:
    print("== real meetings (miss and false alarm as shares of the reference speech)")
    header()
    judged: dict[str, Score] = {}
    together: dict[str, list[Score]] = {}
    for config in rows:
        for meeting in files:
            run = segment(meeting.pcm, config)
            result = score(run.spans, meeting.turns, meeting.seconds)
            line(config.name, meeting.label, result, run.us_per_frame)
            together.setdefault(config.name, []).append(result)
            if meeting is files[0]:
                judged[config.name] = result
    print("== the three files together")
    header()
    for name, results in together.items():
        print(f"{name:<26}{'all three':<18}{pooled(results).row()}")
    return judged


def pooled(results: list[Score]) -> Score:
    """Several files' scores as one: shares weighted by each file's reference speech."""
    speech = sum(r.speech_s for r in results)
    return Score(
        sum(r.miss * r.speech_s for r in results) / speech,
        sum(r.false_alarm * r.speech_s for r in results) / speech,
        sum(r.clips for r in results),
        sum(r.billed_s for r in results),
        sum(r.cut_inside for r in results),
        speech,
    )


def bad_input(rows: list[Config], audio_dir: Path, files: list[Meeting]) -> None:
    print("== noise recordings (no speech): requests and billed seconds; target 0")
    named = noises(audio_dir)
    print(f"{'configuration':<26}" + "".join(f"{n[:16]:>18}" for n, _ in named))
    for config in rows:
        cells = []
        for _, pcm in named:
            spans = segment(pcm, config).spans
            billed = sum(max(MIN_BILLED_S, b - a) for a, b in spans)
            cells.append(f"{len(spans):>8} / {billed:>5.1f} s")
        print(f"{config.name:<26}" + "".join(f"{c:>18}" for c in cells))
    judged = files[0]
    print(f"== {judged.label} with a bad microphone (within 1 point of the clean file)")
    header()
    variants: list[tuple[str, Callable[[Pcm], Pcm]]] = [
        ("clean", lambda p: p),
        ("DC offset 0.05", lambda p: with_dc(p, 0.05)),
        ("50 Hz hum -40dB", lambda p: with_hum(p, -40.0, harmonics=(1,))),
        ("50 Hz buzz -50dB", lambda p: with_hum(p, -50.0)),
    ]
    for config in rows:
        for label, change in variants:
            run = segment(change(judged.pcm), config)
            line(config.name, label, score(run.spans, judged.turns, judged.seconds), 0.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--audio-dir", type=Path, default=AUDIO_DIR)
    parser.add_argument("--quick", action="store_true", help="baseline, fixed and default only")
    segmenter_arg.add_argument(parser, "the default configuration")
    args = parser.parse_args(argv)
    args.settings = segmenter_arg.settings(parser, args.segmenter)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = configs(args.quick, args.settings, bool(args.segmenter))
    if args.segmenter:
        print(f"default, changed: {segmenter_arg.label(args.segmenter)}")
    files = meetings(args.audio_dir)
    judged = quality(rows, files)
    bad_input(rows, args.audio_dir, files)
    default = rows[-1].name
    result = judged[default]
    print(
        f"done-when on {files[0].label} for the default ({default}): miss {result.miss:.1%}"
        f" ≤ 3%, false alarm {result.false_alarm:.1%} ≤ 12%, cut inside a turn"
        f" {result.cut_inside} ≤ 2: {verdict(result)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
