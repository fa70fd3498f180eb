"""The unit's sandbox: `systemd-analyze security` rates it at most 3.0 (offline, on the file),
and the sandbox keeps open what the daemon needs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

UNIT = PROJECT_ROOT / "systemd" / "roomtranslate.service"
MAX_EXPOSURE = 3.0


def _offline_supported() -> bool:
    if shutil.which("systemd-analyze") is None:
        return False
    result = subprocess.run(
        ["systemd-analyze", "security", "--help"], capture_output=True, text=True, check=False
    )
    return "--offline" in result.stdout


def exposure(unit_text: str, tmp_path: Path) -> float:
    unit = tmp_path / "roomtranslate.service"
    unit.write_text(unit_text)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found.group(1))


@pytest.mark.skipif(not _offline_supported(), reason="systemd-analyze security --offline missing")
def test_exposure_at_most_3(tmp_path: Path) -> None:
    figure = exposure(UNIT.read_text(), tmp_path)
    assert figure <= MAX_EXPOSURE, figure
    # the measurement can fail: the unhardened unit is rated far above it
    bare = "\n".join(
        line
        for line in UNIT.read_text().splitlines()
        if not re.match(r"(Protect|Restrict|Private|Capability|SystemCall|Device)", line)
    )
    assert exposure(bare, tmp_path) > MAX_EXPOSURE
    guide = (PROJECT_ROOT / "docs" / "operator.md").read_text()
    assert f"exposure {figure:.1f}" in guide, "the operator's guide states the measured figure"


def test_sandbox_keeps_what_the_daemon_needs() -> None:
    text = UNIT.read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0].isalpha()
    )
    assert settings["DeviceAllow"] == "char-alsa rw"  # /dev/snd/*
    assert settings["SupplementaryGroups"] == "audio"
    families = set(settings["RestrictAddressFamilies"].split())
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= families  # PulseAudio/journal, broker, service
    assert settings["StateDirectory"] == "roomtranslate"
    assert settings["EnvironmentFile"] == "-/etc/roomtranslate/environment"
    assert "PrivateDevices" not in settings and "PrivateNetwork" not in settings
    # cffi callbacks (sounddevice's PortAudio callback) need write+execute memory
    # (tests/test_unit_sandbox.py shows it)
    assert "MemoryDenyWriteExecute" not in settings
