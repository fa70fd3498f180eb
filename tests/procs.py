"""Stopping the test suite's child processes by PID (simulator, broker, daemon, recorders)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any


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
