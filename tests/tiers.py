"""The test tiers, enforced: a test that starts a sound server must be marked `rig`, one that
starts a broker or the daemon process `e2e`, so the fast tier (`scripts/test.sh --fast`,
which deselects them) never waits on them.

Every process a test starts (in its setup, call or teardown) is looked at when it is
spawned; a server the test's markers do not allow fails the test at once, naming the
marker. A daemon `run` that ended with the configuration error status is a CLI check, not
a running daemon, and needs no marker.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Generator, Sequence
from typing import Any

import pytest

from daemon.config import EX_CONFIG

# programs (or scripts run by python) and the marker each needs
SERVERS = {
    "pulseaudio": "rig",
    "audio_rig.py": "rig",
    "mosquitto": "e2e",
    "demo.py": "e2e",
    "soak.py": "e2e",
    "bench_latency.py": "e2e",
    "bench_fleet.py": "e2e",
}


def argv_of(args: Any) -> list[str]:
    if isinstance(args, str | bytes | os.PathLike):
        text = os.fsdecode(args)
        return shlex.split(text) if " " in text else [text]
    return [os.fsdecode(arg) for arg in args]


def needed_marker(argv: Sequence[str]) -> str | None:
    names = [os.path.basename(arg) for arg in argv]
    for name in names:
        if name in SERVERS:
            return SERVERS[name]
    return None


def is_daemon_run(argv: Sequence[str]) -> bool:
    names = [os.path.basename(arg) for arg in argv]
    for i, name in enumerate(names):
        starts_daemon = name == "roomtranslate" or (
            name == "daemon" and i > 0 and names[i - 1] == "-m"
        )
        if starts_daemon and "run" in names[i + 1 :]:
            return True
    return False


class TierGuard:
    """A pytest plugin: watches `subprocess.Popen` (asyncio's subprocesses use it too)."""

    def __init__(self) -> None:
        self._item: pytest.Item | None = None
        self._daemons: list[subprocess.Popen[Any]] = []
        self._violations: list[str] = []
        self._original = subprocess.Popen.__init__

    def install(self) -> None:
        guard, original = self, self._original

        def watched(popen: subprocess.Popen[Any], args: Any, *rest: Any, **kw: Any) -> None:
            argv = argv_of(args)
            guard.check_spawn(argv)
            original(popen, args, *rest, **kw)
            if guard._item is not None and is_daemon_run(argv):
                guard._daemons.append(popen)

        subprocess.Popen.__init__ = watched  # type: ignore[method-assign]

    def uninstall(self) -> None:
        subprocess.Popen.__init__ = self._original  # type: ignore[method-assign]

    def check_spawn(self, argv: Sequence[str]) -> None:
        marker = needed_marker(argv)
        if self._item is None or marker is None:
            return
        if self._item.get_closest_marker(marker) is None:
            # failed here and again at teardown, should a thread swallow this one
            self._violations.append(
                f"{self._item.nodeid} starts `{shlex.join(argv[:3])}`: mark it `{marker}` "
                "(the markers: pyproject.toml)"
            )
            pytest.fail(self._violations[-1], pytrace=False)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        self._item, self._daemons, self._violations = item, [], []
        try:
            return (yield)
        finally:
            self._item = None

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        yield
        if self._violations:
            pytest.fail(self._violations[0], pytrace=False)
        if item.get_closest_marker("e2e") is not None:
            return
        ran = [p for p in self._daemons if p.poll() != EX_CONFIG]
        if ran:
            pytest.fail(
                f"{item.nodeid} starts the daemon (`{shlex.join(argv_of(ran[0].args))}`): "
                "mark it `e2e` (the markers: pyproject.toml)",
                pytrace=False,
            )
