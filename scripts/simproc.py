"""Run `daemon.simulator` as a subprocess for tests, and talk to its control endpoints.

with Simulator("--first-text-ms", "0") as sim:
    client = AsyncOpenAI(base_url=sim.base_url, api_key="test", max_retries=0)
    ...
    assert sim.stats()["requests"] == 1
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from scripts.procs import stop_process

PROJECT_ROOT = Path(__file__).resolve().parent.parent
READY_PREFIX = "READY "


@dataclass(frozen=True)
class RawResponse:
    """A fully read HTTP response from `Simulator.post_chat`."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Simulator:
    """The simulator as a child process on a free loopback port; stopped by PID."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        ready_timeout: float = 15.0,
    ) -> None:
        self.args = list(args)
        self.env = env
        self.ready_timeout = ready_timeout
        self.base_url = ""
        self.root_url = ""
        self.port = 0
        self.returncode: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[bytes] | None = None

    # lifecycle --------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("simulator not started")
        return self._proc.pid

    def start(self) -> Simulator:
        env = dict(os.environ) if self.env is None else dict(self.env)
        if self.env is None:
            env.pop("SIM_API_KEY", None)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])
        )
        env["PYTHONUNBUFFERED"] = "1"
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
        cmd = [sys.executable, "-m", "daemon.simulator", "--port", "0", *self.args]
        self._proc = subprocess.Popen(
            cmd,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,
        )
        self._await_ready()
        return self

    def _await_ready(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = self._proc.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=self.ready_timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError(
                f"simulator not ready in {self.ready_timeout}s:\n{self.stderr()}"
            ) from None
        if not line.startswith(READY_PREFIX):
            self.stop()
            raise RuntimeError(f"simulator failed to start ({line!r}):\n{self.stderr()}")
        self.base_url = line[len(READY_PREFIX) :].strip()
        self.root_url = self.base_url.removesuffix("/compatible-mode/v1")
        self.port = int(self.root_url.rsplit(":", 1)[1])

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the process by PID, wait, then SIGKILL; return its exit status."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self.returncode = None if proc is None else proc.returncode
            return self.returncode
        self.returncode = stop_process(proc, timeout)
        return self.returncode

    def stderr(self) -> str:
        """Everything the simulator logged so far."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # control endpoints --------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/stats")

    def control(self, **settings: Any) -> dict[str, Any]:
        """Set any of faults, first_text_ms, first_audio_ms, chunk_ms, jitter_ms,
        retry_after, stall_s, audio_chunk_ms."""
        return self._call("POST", "/_sim/control", settings)

    def reset(self) -> dict[str, Any]:
        return self._call("POST", "/_sim/reset", {})

    def _call(self, method: str, path: str, payload: Any = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.root_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            result: dict[str, Any] = json.loads(resp.read())
        return result

    # raw chat endpoint ----------------------------------------------------------------------

    def post_chat(
        self,
        body: bytes | dict[str, Any],
        *,
        api_key: str | None = "test",
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> RawResponse:
        """POST to chat/completions with urllib and read the whole response (any status)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + "/chat/completions", data=data)
        req.add_header("Content-Type", "application/json")
        if api_key is not None:
            req.add_header("Authorization", f"Bearer {api_key}")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return RawResponse(resp.status, dict(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as err:
            with err:
                return RawResponse(err.code, dict(err.headers.items()), err.read())


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll `predicate()` until truthy or timeout; return its last truthiness."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
