"""systemd: the unit file verifies; the daemon says READY, pings the watchdog, says STOPPING.

The daemon runs as a real process with a real NOTIFY_SOCKET (a Unix datagram socket made
here), with no sound devices and no broker: it must still come up (degraded), keep the
watchdog fed, and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

UNIT = PROJECT_ROOT / "systemd" / "roomtranslate.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_file_verifies(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "roomtranslate"
    unit = tmp_path / "roomtranslate.service"
    unit.write_text(
        UNIT.read_text().replace("/opt/roomtranslate/.venv/bin/roomtranslate", str(exe))
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    problems = [
        line
        for line in result.stderr.splitlines()
        if "roomtranslate.service" in line and "User=" not in line and "Group" not in line
    ]
    assert result.returncode == 0 or not problems, result.stderr
    assert "Type=notify" in UNIT.read_text() and "WatchdogSec=" in UNIT.read_text()
    assert "RestartPreventExitStatus=78" in UNIT.read_text()


def receive_until(sock: socket.socket, wanted: str, timeout: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if any(wanted in message for message in got):
            break
    return got


def unit_exec_start(config: Path) -> list[str]:
    """The unit's own `ExecStart` command line, with this checkout's executable and `config`."""
    lines = [line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    argv = shlex.split(lines[0].removeprefix("ExecStart="))
    exe = Path(sys.executable).parent / "roomtranslate"
    assert argv[0] == "/opt/roomtranslate/.venv/bin/roomtranslate", argv
    rest = [str(config) if a.startswith("/etc/roomtranslate/") else a for a in argv[1:]]
    return [str(exe), *rest]


@pytest.mark.e2e
def test_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    """The unit's ExecStart line itself, against a test config: READY, WATCHDOG, STOPPING."""
    config = tmp_path / "config.toml"
    config.write_text(
        '[mqtt]\nenabled = false\n[api]\nbase_url = "http://127.0.0.1:9/compatible-mode/v1"\n'
    )
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "400000",
        "DASHSCOPE_API_KEY": "test",
        "ROOMTRANSLATE_STATE_DIR": str(tmp_path / "state"),
        "HOME": str(tmp_path),  # no .asoundrc: no rig devices, whatever else runs
        "PULSE_SERVER": f"unix:{tmp_path}/none",
    }
    proc = subprocess.Popen(
        unit_exec_start(config),
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        messages = receive_until(sock, "READY=1", 20)
        assert any("READY=1" in m for m in messages), messages
        pings = receive_until(sock, "WATCHDOG=1", 5)
        assert any("WATCHDOG=1" in m for m in pings), pings
        proc.send_signal(signal.SIGTERM)
        stopping = receive_until(sock, "STOPPING=1", 10)
        assert any("STOPPING=1" in m for m in stopping), stopping
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        sock.close()
