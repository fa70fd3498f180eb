"""Devices that appear after the daemon started are used without a restart (the rig).

PortAudio enumerates once at start; the daemon re-enumerates while a device is missing
(daemon/devices.py `DeviceHost`). Two rig cases, each a real daemon process:

- the whole sound server comes up 20 s after the daemon (neither the microphone nor the
  speaker exists at start, nothing is open: the plain rescan);
- the speaker is on one PulseAudio that runs from the start and the microphone on a
  second one that comes up 20 s later: the speaker stream is open and must give way
  (close, rescan, reopen) for the microphone to be found.

Both then play speech into the microphone and expect its captions, from the same PID.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts import audio_rig
from scripts.e2e_harness import Daemon, Harness, Session, Tap
from tests.rigutil import module_harness

pytestmark = [pytest.mark.rig, pytest.mark.e2e]

LATE_S = 20.0
SPEECH = [("en_sr_english", 0.5), ("fr_sr_french", 1.5)]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    yield from module_harness(tmp_path_factory, "late")


def start_daemon(h: Harness, tap: Tap, env: dict[str, str], name: str) -> Session:
    daemon = Daemon(env, h.workdir / f"{name}.log")
    session = Session(daemon, tap, len(tap.messages))
    daemon.start()
    return session


def assert_captions_after_the_device_came(
    h: Harness, session: Session, pid: int, mic_rig: Any
) -> None:
    session.wait_ready(40.0)  # online and listening: the microphone delivers now
    scene = h.compose(SPEECH, f"late-{pid}")
    mic_rig.play_into_mic(scene.path)
    assert session.wait_finals(len(SPEECH), 40.0), session.daemon.log_tail()
    finals = session.finals()
    assert [c.outcome for c in finals[: len(SPEECH)]] == ["translated"] * len(SPEECH)
    status = session.status()
    assert status["devices"]["input"] == "rig_mic", status
    assert status["counters"]["device_rescans"] >= 1, status
    assert session.daemon.pid == pid and session.daemon.running  # no restart
    assert "devices re-enumerated" in session.daemon.log_text()


def test_a_sound_server_that_comes_up_late_is_used(harness: Harness) -> None:
    h = harness
    h.rig.stop()  # its files (.asoundrc naming rig_mic / rig_spk) stay: devices defined, absent
    try:
        with Tap(h.broker, "roomtranslate/#") as tap:
            time.sleep(0.2)
            session = start_daemon(h, tap, h.daemon_env(), "server-late")
            try:
                pid = session.daemon.pid
                time.sleep(LATE_S)
                assert session.daemon.running
                assert "rig_mic" not in str(session.status().get("devices"))
                h.rig.start()
                assert_captions_after_the_device_came(h, session, pid, h.rig)
                assert session.status()["devices"]["output"] == "rig_spk"
            finally:
                if session.daemon.running:
                    assert session.daemon.stop() == 0
    finally:
        if not h.rig.running_pids():
            h.rig.start()


def split_asoundrc(home: Path, speaker_server: str, mic_server: str) -> None:
    """rig_spk on one PulseAudio, rig_mic on another."""
    home.mkdir(parents=True, exist_ok=True)
    entries = []
    for pcm, device, server in (("rig_mic", "mic", mic_server), ("rig_spk", "spk", speaker_server)):
        entries.append(
            f'pcm.{pcm} {{\n    type pulse\n    device "{device}"\n    server "{server}"\n}}\n'
            f'ctl.{pcm} {{\n    type pulse\n    server "{server}"\n}}\n'
        )
    (home / ".asoundrc").write_text("\n".join(entries))


def test_a_late_microphone_is_found_while_the_speaker_is_open(harness: Harness) -> None:
    h = harness
    mic_rig = audio_rig.AudioRig(h.workdir / "mic-rig")
    home = h.workdir / "split-home"
    split_asoundrc(home, h.rig.server, mic_rig.server)
    env = h.daemon_env() | {"HOME": str(home)}
    try:
        with Tap(h.broker, "roomtranslate/#") as tap:
            time.sleep(0.2)
            session = start_daemon(h, tap, env, "mic-late")
            try:
                pid = session.daemon.pid
                assert session.wait_status(lambda s: s["devices"]["output"] == "rig_spk", 20.0), (
                    session.daemon.log_tail()
                )
                time.sleep(LATE_S)
                mic_rig.start()
                assert_captions_after_the_device_came(h, session, pid, mic_rig)
                log = session.daemon.log_text()
                assert "playback stream closed for a device rescan" in log, log
                assert session.status()["devices"]["output"] == "rig_spk"
            finally:
                if session.daemon.running:
                    assert session.daemon.stop() == 0
    finally:
        mic_rig.stop()
