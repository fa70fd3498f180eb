"""Helpers for tests on the private PulseAudio rig (scripts/audio_rig.py) and the end-to-end
harness (scripts/e2e_harness.py).

Tests that use the rig skip (with the reason) only when PulseAudio is not installed.
Anything on the rig that must see PortAudio devices runs in a subprocess with
`rig.env`: PortAudio reads `$HOME/.asoundrc` once, when sounddevice is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from scripts import audio_rig
from scripts.audio_rig import AudioRig
from scripts.e2e_harness import Harness, missing_programs
from scripts.paths import AUDIO_DIR

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
AUDIO = AUDIO_DIR


def skip_without_pulseaudio() -> None:
    missing = audio_rig.missing_programs()
    if missing:
        pytest.skip(f"PulseAudio is not installed (missing {', '.join(missing)})")


def require_programs() -> None:
    """Skip the module when the harness's programs are missing, except in CI (`CI` set),
    which installs them (scripts/setup.sh): a skip there would hide a broken install."""
    if missing := missing_programs():
        why = f"not installed: {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def module_harness(factory: pytest.TempPathFactory, name: str, **options: Any) -> Iterator[Harness]:
    """A module's harness (rig, broker, simulator) in a fresh work directory."""
    require_programs()
    with Harness(factory.mktemp(name), **options) as harness:
        harness.reset_simulator()
        yield harness


def started_rig(directory: Path | None = None) -> Iterator[Any]:
    """A running rig for a fixture (skips if PulseAudio is not installed)."""
    skip_without_pulseaudio()
    rig = AudioRig(directory)
    rig.start()
    try:
        yield rig
    finally:
        rig.stop()


def client_env(rig: Any) -> dict[str, str]:
    return {**os.environ, **rig.env, "PYTHONPATH": str(ROOT)}


@dataclass
class DriverRun:
    """A running tests/drive_capture.py."""

    proc: subprocess.Popen[str]
    out: Path
    report_path: Path
    ready: float = 0.0

    def wait_ready(self, timeout: float = 15.0) -> float:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY"):
                self.ready = float(line.split()[1])
                return self.ready
            if not line and self.proc.poll() is not None:
                break
        self.proc.kill()
        _, err = self.proc.communicate()
        raise AssertionError(f"capture driver never got a frame:\n{err}")

    def finish(self, timeout: float = 30.0) -> dict[str, Any]:
        _, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        report: dict[str, Any] = json.loads(self.report_path.read_text())
        report["log"] = err
        report["pcm"] = sf.read(self.out, dtype="int16")[0]
        return report


def start_driver(rig: Any, workdir: Path, name: str, *args: str) -> DriverRun:
    out, report = workdir / f"{name}.wav", workdir / f"{name}.json"
    proc = subprocess.Popen(
        [
            PYTHON,
            str(ROOT / "tests" / "drive_capture.py"),
            "--out",
            str(out),
            "--report",
            str(report),
            *args,
        ],
        env=client_env(rig),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return DriverRun(proc, out, report)


def read_source(path: Path) -> np.ndarray:
    pcm, rate = sf.read(path, dtype="int16")
    assert rate == 16_000 and pcm.ndim == 1
    return pcm


def best_alignment(captured: np.ndarray, source: np.ndarray) -> tuple[int, float]:
    """(lag, correlation): where `source` starts in `captured`, and the normalised
    correlation of the source with the captured span there (FFT cross-correlation)."""
    x = captured.astype(np.float64)
    s = source.astype(np.float64)
    n = len(x) + len(s)
    size = 1 << (n - 1).bit_length()
    xc = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(s, size)), size)
    lag = int(np.argmax(np.abs(xc[: len(x) - len(s) + 1])))
    span = x[lag : lag + len(s)]
    corr = float(np.corrcoef(span, s)[0, 1])
    return lag, corr


def frame_time(report: dict[str, Any], sample: int) -> float:
    """The capture's monotonic time of a clock sample, from the frames' reported times."""
    frames = report["frames"]
    for frame in frames:
        if frame["start"] <= sample < frame["start"] + frame["n"]:
            return float(frame["at"]) + (sample - frame["start"]) / 16_000
    raise AssertionError(f"sample {sample} not in any frame")
