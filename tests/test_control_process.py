"""Remote configuration in the real daemon process: restarts, kill -9, a broker that is down.

`python -m daemon run` runs without sound devices here (capture and playback keep trying
to open theirs; MQTT and the control plane work regardless), against a real Mosquitto.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.control.state import FILE_NAME, SavedState, StateFile
from scripts.broker import Broker, eventually, retained
from scripts.e2e_harness import Daemon
from scripts.procs import stop_process
from tests.control_util import Operator

BASE = "roomtranslate/room-1"
CONFIG = f"{BASE}/config"
STATUS = f"{BASE}/status"
AVAILABILITY = f"{BASE}/availability"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def daemon_env(broker: Broker, state_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMTRANSLATE_")}
    for name in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
        env.pop(name, None)
    values = {
        "MQTT__HOST": broker.host,
        "MQTT__ROOM_ID": "room-1",
        "API__CHECK_KEY_AT_START": "false",
        "MQTT__PORT": str(broker.port),
        "MQTT__RECONNECT_MIN_S": "0.1",
        "MQTT__RECONNECT_MAX_S": "0.5",
        "REMOTE_CONFIG__CHANGES_PER_S": "1000",
        "API__BASE_URL": "http://127.0.0.1:9/compatible-mode/v1",
        "STATE_DIR": str(state_dir),
        **settings,
    }
    env |= {f"ROOMTRANSLATE_{k}": v for k, v in values.items()}
    env |= {"DASHSCOPE_API_KEY": "test", "ROOMTRANSLATE_CONFIG": os.devnull}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Running:
    """A daemon process and the operator's view of its topics."""

    def __init__(self, broker: Broker, state_dir: Path, log: Path) -> None:
        self.daemon = Daemon(daemon_env(broker, state_dir), log)

    def __enter__(self) -> Daemon:
        return self.daemon.start()

    def __exit__(self, *exc: object) -> None:
        if self.daemon.running:
            self.daemon.stop()


def config_of(payload: bytes | None) -> dict[str, Any]:
    assert payload, "no retained config"
    doc: dict[str, Any] = json.loads(payload)
    return doc


async def online(op: Operator, daemon: Daemon, since: int) -> None:
    """Until the daemon has published its config after `since` messages."""

    def published() -> bool:
        assert daemon.running, daemon.log_tail()
        return any(m.topic == CONFIG for m in op.recorder.messages[since:])

    await eventually(published, 30.0)


@pytest.mark.e2e
async def test_room_changes_survive_a_restart_and_apply_before_the_broker(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    with Broker() as broker:
        async with Operator(broker, BASE) as op:
            with Running(broker, state, tmp_path / "d1.log") as daemon:
                await online(op, daemon, 0)
                reply = await op.set({"target_lang": "de", "volume": 21}, within_s=10.0)
                assert reply["status"] == "ok", reply
                assert daemon.stop() == 0
            version = config_of(await retained(broker, CONFIG, wait_s=5.0))["version"]
        broker.stop()
        with Running(broker, state, tmp_path / "d2.log") as daemon:
            # the broker is down: the saved settings are applied all the same
            assert await_log(daemon, "room settings restored")
            assert "target_lang='de'" in daemon.log_text()
            broker.start()
            async with Operator(broker, BASE) as op:
                await eventually(lambda: bool(op.on(STATUS)), 30.0)
                first_status = json.loads(op.on(STATUS)[0].payload)
                assert first_status["target_lang"] == "de" and first_status["volume"] == 21
                # the config document follows the status after a connect (a loaded machine)
                await eventually(lambda: bool(op.on(CONFIG)), 30.0)
                config = config_of(await retained(broker, CONFIG, wait_s=5.0))
                assert config["version"] == version
                assert config["layers"]["volume"] == "room"
                assert "config.state" not in first_status["problems"]


def await_log(daemon: Daemon, text: str, within_s: float = 30.0) -> bool:
    deadline = time.monotonic() + within_s
    while text not in daemon.log_text():
        if time.monotonic() > deadline or not daemon.running:
            return text in daemon.log_text()
        time.sleep(0.05)
    return True


@pytest.mark.e2e
async def test_kill_9_during_changes_never_loses_an_acknowledged_change(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    rng = random.Random(8)
    acked = restored = -1
    with Broker() as broker:
        async with Operator(broker, BASE) as op:
            for round_ in range(3):
                with Running(broker, state, tmp_path / f"d{round_}.log") as daemon:
                    seen = len(op.recorder.messages)
                    await online(op, daemon, seen)
                    if acked >= 0:  # restored from the last round
                        assert op.configs()[-1]["config"]["volume"] == restored
                    first = len(op.responses())
                    for volume in range(101):
                        payload = json.dumps({"volume": volume, "transaction": volume})
                        await op.publish(f"{BASE}/config/set", payload.encode())
                    # kill it while it is working through the burst
                    goal = first + rng.randint(5, 60)
                    await eventually(lambda goal=goal: len(op.responses()) >= goal, 30.0)
                    os.kill(daemon.pid, signal.SIGKILL)
                    assert daemon.stop() == -signal.SIGKILL
                    # the broker has seen the end of that connection: its will went out
                    await eventually(
                        lambda: op.recorder.payloads(AVAILABILITY)[-1:] == [b"offline"]
                    )
                oks = [r for r in op.responses()[first:] if r["status"] == "ok"]
                acked = oks[-1]["config"]["volume"]
                # answers still in flight when it died may be lost (the kernel resets a
                # socket closed with unread data): what was acknowledged is a lower bound
                saved = StateFile(state).load()
                assert not saved.problem
                restored = saved.state.room["volume"]
                assert acked <= restored <= 100, (acked, restored)
        with Running(broker, state, tmp_path / "last.log") as daemon:
            assert await_log(daemon, "room settings restored")


WRITER = """
import sys
from pathlib import Path
from daemon.control.state import SavedState, StateFile
store = StateFile(Path(sys.argv[1]))
version = 0
print("READY", flush=True)
while True:
    version += 1
    store.save(SavedState(version, {"volume": version % 101, "padding": "x" * (version % 5000)}))
"""


@pytest.fixture
def writer_script(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "writer.py"
    path.write_text(WRITER)
    yield path


@pytest.mark.slow
def test_kill_9_in_the_middle_of_writes_leaves_a_usable_file(
    tmp_path: Path, writer_script: Path
) -> None:
    """A process saving the state as fast as it can, killed at random moments: every time,
    the file is the old or the new state, never a broken one."""
    state = tmp_path / "state"
    store = StateFile(state)
    store.save(SavedState(0, {}))
    rng = random.Random(9)
    for _ in range(15):
        proc = subprocess.Popen(
            [sys.executable, str(writer_script), str(state)],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"READY"
        time.sleep(rng.uniform(0.01, 0.2))
        os.kill(proc.pid, signal.SIGKILL)
        stop_process(proc, 5.0)
        loaded = store.load()
        assert not loaded.problem, loaded.problem
        if loaded.state.version:  # the state of one whole write
            assert loaded.state.room["volume"] == loaded.state.version % 101
    assert not [p for p in state.iterdir() if p.name.startswith(f"{FILE_NAME}.corrupt")]
