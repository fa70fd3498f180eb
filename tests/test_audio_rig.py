"""scripts/audio_rig.py: the CLI starts a detached rig and stops it by PID; the speaker
can be recorded."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.rigutil import PYTHON, ROOT, audio_rig, skip_without_pulseaudio, started_rig

pytestmark = pytest.mark.rig

SCRIPT = str(ROOT / "scripts" / "audio_rig.py")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_cli_start_prints_exports_and_stop_ends_every_process(tmp_path: Path) -> None:
    skip_without_pulseaudio()
    rig_dir = tmp_path / "rig"
    result = subprocess.run(
        [PYTHON, SCRIPT, "start", "--dir", str(rig_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    try:
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines()
        )
        env = {key: shlex.split(value)[0] for key, value in exports.items()}
        assert env["PULSE_SERVER"] == f"unix:{rig_dir.resolve()}/native"
        assert (Path(env["HOME"]) / ".asoundrc").read_text().count("type pulse") == 4
        pids = [int(line.split()[0]) for line in (rig_dir / "pids").read_text().splitlines()]
        assert len(pids) == 3 and all(alive(pid) for pid in pids)
        info = subprocess.run(
            ["pactl", "list", "short", "sinks"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        assert "spk" in info.stdout and "micfeed" in info.stdout
        again = subprocess.run(
            [PYTHON, SCRIPT, "start", "--dir", str(rig_dir)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        subprocess.run([PYTHON, SCRIPT, "stop", "--dir", str(rig_dir)], timeout=30, check=True)
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)  # the detached processes are reaped by init, not by us
    assert not any(alive(pid) for pid in pids)
    assert not (rig_dir / "pids").exists()


@pytest.fixture
def rig() -> Iterator[Any]:
    yield from started_rig()


def test_record_speaker_gets_what_is_played_to_spk(rig: Any, tmp_path: Path) -> None:
    tone = tmp_path / "tone.wav"
    t = np.arange(24_000) / 24_000
    pcm = (10_000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2")
    with wave.open(str(tone), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(24_000)
        out.writeframes(pcm.tobytes() + bytes(2 * 6000))  # 0.25 s of silence after
    recorder = rig.record_speaker(tmp_path / "heard.wav")
    time.sleep(0.2)
    player = subprocess.Popen(["paplay", "-d", "spk", str(tone)], env={**os.environ, **rig.env})
    assert player.wait(timeout=10) == 0
    recorder.terminate()
    assert recorder.wait(timeout=5) == 0
    with wave.open(str(tmp_path / "heard.wav"), "rb") as heard:
        assert (heard.getframerate(), heard.getnchannels()) == (48_000, 1)
        got = np.frombuffer(heard.readframes(heard.getnframes()), dtype="<i2").astype(float)
    loud = got[np.abs(got) > 1000]
    assert len(loud) > 0.8 * 48_000 / 2  # most of the 1 s tone (half its samples > 1000)
    spectrum = np.abs(np.fft.rfft(got))
    assert np.argmax(spectrum) * 48_000 / len(got) == pytest.approx(1000, abs=3)


def test_stop_is_idempotent_and_a_temp_dir_is_removed() -> None:
    skip_without_pulseaudio()
    rig = audio_rig.AudioRig()
    directory = rig.dir
    with rig:
        assert rig.running_pids()
    assert not directory.exists()
    rig.stop()
