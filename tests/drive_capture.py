"""Run `Capture` (+ `EchoGate`) for a while and write what it produced.

Run in a subprocess with the audio rig's environment (PortAudio reads `$HOME/.asoundrc`
when sounddevice is imported), e.g.:

    python tests/drive_capture.py --seconds 4 --out /tmp/raw.wav --report /tmp/r.json

Prints `READY <monotonic time>` once the first frame arrived, then runs `--seconds` more.
Writes the frames before the echo stage as a WAV (placed by their clock, gaps as zeros)
and a JSON report: the stream info, every frame's (start, length, capture time, gated),
the counters, and the gate window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.capture import Capture
from daemon.config import AudioSettings
from daemon.counters import Counters
from daemon.echo import EchoGate
from daemon.profiles import PROFILES_DIR, Profile, load_profiles, select_profile
from daemon.values import SAMPLE_RATE, Frame


def _profile(name: str, rate: int | None) -> Profile:
    profile = select_profile(name, [], load_profiles(PROFILES_DIR))
    if rate is None:
        return profile
    return profile.model_copy(update={"input": profile.input.model_copy(update={"rate": rate})})


class _FakeSpeaker:
    """`audible_until` for the gate: the window [start, end] once `start` has come."""

    def __init__(self) -> None:
        self.start = float("inf")
        self.end = 0.0

    def audible_until(self) -> float:
        return self.end if time.monotonic() >= self.start else 0.0


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    counters = Counters()
    settings = AudioSettings(input_device=args.device, ring_seconds=args.ring_seconds)
    capture = Capture(
        settings,
        counters,
        profile=_profile(args.profile, args.rate),
        frame_samples=args.frame_samples,
        reopen_min_s=args.reopen_min,
    )
    speaker = _FakeSpeaker()
    gate = EchoGate(speaker.audible_until, counters, mode=args.gate_mode, tail_s=args.tail)
    frames: list[Frame] = []
    records: list[dict[str, Any]] = []
    ready = 0.0
    stalled = args.stall_at is None
    async with contextlib.aclosing(capture.frames()) as stream:
        async for frame in stream:
            now = time.monotonic()
            if not ready:
                ready = now
                speaker.start = ready + args.gate_after
                speaker.end = speaker.start + args.gate_for
                print(f"READY {ready:.6f}", flush=True)
            captured_at = capture.monotonic_time(frame.start)
            out = gate.process(frame, captured_at)
            frames.append(frame)
            records.append(
                {
                    "start": frame.start,
                    "n": len(frame.pcm),
                    "at": captured_at,
                    "wall": capture.wall_time(frame.start),
                    "gated": out is not frame,
                    "zeros": bool(not out.pcm.any()),
                }
            )
            if not stalled and now >= ready + args.stall_at:
                stalled = True
                time.sleep(args.stall_for)  # noqa: ASYNC251 (block the loop: the ring overruns)
            if now >= ready + args.seconds:
                break
    info = capture.info
    return {
        "device": capture.device_name,
        "rate": info.rate if info else 0,
        "resampling": info.resampling if info else False,
        "ready": ready,
        "end": time.monotonic(),
        "gate_start": speaker.start,
        "gate_end": speaker.end,
        "tail": args.tail,
        "frames": records,
        "counters": counters.snapshot(),
        "pcm": frames,
    }


def _write_wav(path: str, frames: list[Frame]) -> None:
    if not frames:
        sf.write(path, np.zeros(0, dtype=np.int16), SAMPLE_RATE, subtype="PCM_16")
        return
    pcm = np.zeros(frames[-1].end, dtype=np.int16)
    for frame in frames:
        pcm[frame.start : frame.end] = frame.pcm
    sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--device", default="")
    parser.add_argument("--profile", default="virtual_rig")
    parser.add_argument("--rate", type=int, default=None, help="force this device rate")
    parser.add_argument("--frame-samples", type=int, default=480)
    parser.add_argument("--ring-seconds", type=float, default=30.0)
    parser.add_argument("--reopen-min", type=float, default=1.0)
    parser.add_argument("--gate-mode", choices=("gate", "off"), default="gate")
    parser.add_argument("--gate-after", type=float, default=1e9)
    parser.add_argument("--gate-for", type=float, default=0.0)
    parser.add_argument("--tail", type=float, default=0.3)
    parser.add_argument("--stall-at", type=float, default=None)
    parser.add_argument("--stall-for", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = asyncio.run(_run(args))
    _write_wav(args.out, result.pop("pcm"))
    Path(args.report).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
