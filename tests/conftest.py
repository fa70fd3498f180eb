"""Shared fixtures: the recordings, a service simulator process, clean environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from scripts.paths import AUDIO_DIR, PROJECT_ROOT
from scripts.simproc import Simulator
from tests.tiers import TierGuard

__all__ = ["AUDIO_DIR", "PROJECT_ROOT", "read_clip"]


def pytest_configure(config: pytest.Config) -> None:
    guard = TierGuard()
    guard.install()
    config.pluginmanager.register(guard, "tier-guard")
    config.add_cleanup(guard.uninstall)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's key, config or overrides."""
    for name in list(os.environ):
        if name.startswith("ROOMTRANSLATE_") and name != "ROOMTRANSLATE_AUDIO_DIR":
            monkeypatch.delenv(name)
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.setenv("ROOMTRANSLATE_CONFIG", os.devnull)


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    if not (AUDIO_DIR / "manifest.csv").is_file():
        pytest.fail(f"the shared recordings are missing: {AUDIO_DIR}")
    return AUDIO_DIR


def read_clip(name: str, start_s: float = 0.0, seconds: float | None = None) -> np.ndarray:
    """16 kHz mono int16 PCM of (part of) a shared recording."""
    pcm, rate = sf.read(str(AUDIO_DIR / name), dtype="int16")
    assert rate == 16000 and pcm.ndim == 1
    first = int(start_s * rate)
    last = len(pcm) if seconds is None else first + int(seconds * rate)
    return np.ascontiguousarray(pcm[first:last])


@pytest.fixture(scope="session")
def sim_process() -> Iterator[Simulator]:
    with Simulator("--first-text-ms", "5", "--first-audio-ms", "5", "--chunk-ms", "1") as sim:
        yield sim


@pytest.fixture
def sim(sim_process: Simulator) -> Simulator:
    """The shared simulator, with stats, faults and latencies reset for this test."""
    sim_process.reset()
    sim_process.control(
        first_text_ms=5,
        first_audio_ms=5,
        chunk_ms=1,
        jitter_ms=0,
        retry_after=1,
        stall_s=30,
        account_rpm=0,
        account_tpm=0,
    )
    return sim_process
