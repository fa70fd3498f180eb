"""Capture on a real (virtual) microphone: the PulseAudio rig of scripts/audio_rig.py.

Each capture runs tests/drive_capture.py in a subprocess with the rig's environment,
while the test plays a real recording into the rig's microphone. Three captures run
concurrently on one playback: at 16 kHz with the echo gate, at a forced 48 kHz (the
resampling path), and at 16 kHz with a 1 s ring and a stalled event loop (overrun).
A fourth, on its own rig, loses the sound server mid-capture and must reopen.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.capture import BLOCK_S
from tests.rigutil import AUDIO, best_alignment, frame_time, read_source, start_driver, started_rig

pytestmark = pytest.mark.rig

SPEECH = AUDIO / "en_pv_librispeech.wav"  # 5.9 s of read speech (LibriSpeech)
SHORT = AUDIO / "en_sr_english.wav"  # 2.7 s: "one two three"
GATE_AFTER, GATE_FOR, TAIL = 2.0, 1.0, 0.3


@pytest.fixture(scope="module")
def rig() -> Iterator[Any]:
    yield from started_rig()


@pytest.fixture(scope="module")
def runs(rig: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("capture")
    seconds = str(len(read_source(SPEECH)) / 16_000 + 1.5)
    drivers = {
        "direct": start_driver(
            rig,
            workdir,
            "direct",
            "--seconds",
            seconds,
            "--gate-after",
            str(GATE_AFTER),
            "--gate-for",
            str(GATE_FOR),
            "--tail",
            str(TAIL),
        ),
        "resampled": start_driver(
            rig, workdir, "resampled", "--seconds", seconds, "--rate", "48000"
        ),
        "overrun": start_driver(
            rig,
            workdir,
            "overrun",
            "--seconds",
            "3.5",
            "--ring-seconds",
            "1",
            "--stall-at",
            "1.0",
            "--stall-for",
            "1.6",
        ),
    }
    for driver in drivers.values():
        driver.wait_ready()
    time.sleep(0.2)
    played_at = time.monotonic()
    player = rig.play_into_mic(SPEECH)
    assert player.wait(timeout=20) == 0
    results = {name: driver.finish() for name, driver in drivers.items()}
    results["played_at"] = played_at
    return results


def assert_contiguous(report: dict[str, Any]) -> None:
    frames = report["frames"]
    assert frames[0]["start"] == 0
    assert all(f["n"] == 480 for f in frames)
    assert all(b["start"] == a["start"] + 480 for a, b in itertools.pairwise(frames))


def assert_true_to_time(report: dict[str, Any], tolerance_s: float = 0.1) -> None:
    """The clock advanced as much as time did (16 000 samples a second)."""
    frames = report["frames"]
    clock_s = (frames[-1]["start"] - frames[0]["start"]) / 16_000
    time_s = frames[-1]["at"] - frames[0]["at"]
    assert clock_s == pytest.approx(time_s, abs=tolerance_s)


def test_16k_capture_loses_nothing_and_matches_the_source(runs: dict[str, Any]) -> None:
    report = runs["direct"]
    assert report["device"] == "rig_mic"
    assert report["rate"] == 16_000 and not report["resampling"]
    assert_contiguous(report)
    assert_true_to_time(report)
    counters = report["counters"]
    for name in (
        "ring_overruns",
        "input_overflows",
        "capture_callback_errors",
        "capture_device_lost",
        "capture_clock_jumps",
    ):
        assert counters.get(name, 0) == 0, (name, counters)
    lag, corr = best_alignment(report["pcm"], read_source(SPEECH))
    print(f"16 kHz: frames {len(report['frames'])}, lag {lag}, correlation {corr:.4f}")
    assert corr > 0.9


def test_capture_times_match_when_the_sound_was_played(runs: dict[str, Any]) -> None:
    report = runs["direct"]
    lag, _ = best_alignment(report["pcm"], read_source(SPEECH))
    delay = frame_time(report, lag) - runs["played_at"]
    print(f"source start captured {delay * 1000:.0f} ms after paplay was started")
    assert 0.0 < delay < 0.3


def test_48k_device_is_resampled_without_loss(runs: dict[str, Any]) -> None:
    report = runs["resampled"]
    assert report["rate"] == 48_000 and report["resampling"]
    assert_contiguous(report)
    assert_true_to_time(report)
    assert report["counters"].get("ring_overruns", 0) == 0
    lag, corr = best_alignment(report["pcm"], read_source(SPEECH))
    lag16, _ = best_alignment(runs["direct"]["pcm"], read_source(SPEECH))
    print(f"48 kHz → 16 kHz: lag {lag}, correlation {corr:.4f}")
    assert corr > 0.9
    # Both captures started on their own clocks; their times for the source agree.
    t48 = frame_time(report, lag)
    t16 = frame_time(runs["direct"], lag16)
    assert t48 == pytest.approx(t16, abs=0.03)


def test_echo_gate_zeroes_the_frames_in_the_speaking_window(runs: dict[str, Any]) -> None:
    report = runs["direct"]
    start, end, tail = report["gate_start"], report["gate_end"], report["tail"]
    frames = report["frames"]
    gated = [f for f in frames if f["gated"]]
    assert len(gated) == report["counters"]["echo_gated_frames"]
    assert all(f["zeros"] for f in gated)
    # Every frame captured inside the window (+ tail) is gated; none well outside it.
    inside = [f for f in frames if start + 0.05 <= f["at"] < end + tail - 0.005]
    assert inside and all(f["gated"] for f in inside)
    # a frame captured just before the window but read after it opened is gated too: at
    # most one capture block (the reader's lag) plus scheduling
    assert all(start - BLOCK_S - 0.1 <= f["at"] < end + tail for f in gated)
    expected = (end + tail - start) * 16_000 / 480
    early = BLOCK_S * 16_000 / 480  # frames read up to one capture block after the window opened
    assert expected - 3 <= len(gated) <= expected + early + 3, (len(gated), expected)
    # The raw (pre-gate) audio in the window was speech, not silence.
    assert any(report["pcm"][f["start"] : f["start"] + 480].any() for f in gated)


def test_ring_overrun_is_counted_and_the_clock_jumps_forward(runs: dict[str, Any]) -> None:
    report = runs["overrun"]
    counters = report["counters"]
    lost = counters["ring_overrun_samples"]
    assert counters["ring_overruns"] >= 1
    assert 0.3 * 16_000 < lost < 0.9 * 16_000  # stalled 1.6 s with a 1 s ring
    assert counters["capture_gap_samples"] == lost
    starts = [f["start"] for f in report["frames"]]
    steps = np.diff(starts)
    assert (steps >= 480).all() and (steps > 480).sum() == 1
    assert_true_to_time(report)


@pytest.fixture
def own_rig(tmp_path: Path) -> Iterator[Any]:
    yield from started_rig(tmp_path / "rig")


def test_lost_sound_server_is_reopened_and_capture_goes_on(own_rig: Any, tmp_path: Path) -> None:
    driver = start_driver(own_rig, tmp_path, "lost", "--seconds", "7", "--reopen-min", "0.5")
    ready = driver.wait_ready()
    time.sleep(max(0.0, ready + 1.0 - time.monotonic()))
    own_rig.stop()  # the closest thing to unplugging the device
    time.sleep(0.3)
    own_rig.start()
    time.sleep(1.5)  # the capture reopens within its backoff
    played_at = time.monotonic()
    assert own_rig.play_into_mic(SHORT).wait(timeout=10) == 0
    report = driver.finish()
    counters = report["counters"]
    assert counters["capture_device_lost"] >= 1, report["log"]
    assert counters["capture_reopens"] >= 1
    assert counters["capture_clock_jumps"] >= 1
    starts = [f["start"] for f in report["frames"]]
    assert (np.diff(starts) >= 480).all()  # never backwards
    assert_true_to_time(report, tolerance_s=0.15)
    lag, corr = best_alignment(report["pcm"], read_source(SHORT))
    print(
        f"after reopen: gap {counters['capture_gap_samples'] / 16_000:.2f} s, "
        f"correlation {corr:.4f}"
    )
    assert corr > 0.9
    assert 0.0 < frame_time(report, lag) - played_at < 0.3
