"""Stopping the test suite's child processes by PID (simulator, broker, daemon, recorders)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scripts.paths import PROJECT_ROOT


def stop_process(proc: subprocess.Popen[Any], timeout: float, *, resume: bool = False) -> int:
    """SIGTERM the process by its PID, then SIGKILL after `timeout`; its exit status.

    `resume` sends SIGCONT first, for a process a test paused with SIGSTOP.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if resume:
                os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5.0)
    with contextlib.suppress(ValueError, OSError):
        proc.communicate(timeout=1.0)  # close pipes
    return int(proc.returncode)


def soundless_daemon_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a daemon process without sound devices and outside systemd: a
    test key, no configuration file, its state in `tmp_path`, MQTT off unless `settings`
    (`SECTION__KEY=value`, as `ROOMTRANSLATE_SECTION__KEY`) say otherwise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMTRANSLATE_")}
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM", "INVOCATION_ID"):
        env.pop(name, None)
    env |= {
        "HOME": str(tmp_path),  # no .asoundrc: no sound devices
        "PULSE_SERVER": f"unix:{tmp_path}/none",
        "DASHSCOPE_API_KEY": "test",
        "ROOMTRANSLATE_CONFIG": os.devnull,
        "ROOMTRANSLATE_STATE_DIR": str(tmp_path / "state"),
        "ROOMTRANSLATE_MQTT__ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    }
    env |= {f"ROOMTRANSLATE_{k.upper()}": v for k, v in settings.items()}
    return env


def start_daemon(env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m daemon run` from the checkout in its own session, stderr (the log) to
    `log`; stop it with `stop_process`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "daemon", "run"],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
        )


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m daemon ARGS` from the checkout, output captured; never raises on exit."""
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT_ROOT,
        env=None if env is None else dict(env),
    )


def run_script(name: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`python scripts/NAME ARGS` from the checkout, output captured; never raises on exit."""
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / name), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT_ROOT,
    )
