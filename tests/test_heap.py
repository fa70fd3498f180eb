"""glibc's mmap threshold (daemon/heap.py), in fresh processes: once a large buffer was
freed, glibc serves the next clip-sized buffers from its heap (where their holes stay
resident, the soak's RSS growth) unless the threshold is fixed; the daemon fixes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.heap import heap_figures
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.skipif(not heap_figures(), reason="not glibc")

# A 4 MiB buffer is freed (glibc's dynamic threshold rises to 4 MiB), then buffers of
# 300 kB are held, 20 more than the heap's free memory could hold: how many of them got
# their own mmap?
SCRIPT = """
import sys
from daemon.heap import fix_mmap_threshold, heap_figures
big = bytearray(4 << 20)
del big
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
before = heap_figures()
held = [bytearray(300_000) for _ in range(before["free"] // 300_000 + 20)]
print(heap_figures()["mmaps"] - before["mmaps"])
"""


def mmapped_buffers(mode: str, *, script: str = SCRIPT, state_dir: Path | None = None) -> int:
    result = subprocess.run(
        [sys.executable, "-c", script, mode, str(state_dir)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


def test_clip_sized_buffers_come_from_the_heap_once_the_threshold_has_risen() -> None:
    assert mmapped_buffers("glibc-default") == 0


def test_with_the_threshold_fixed_the_heap_does_not_grow_for_them() -> None:
    assert mmapped_buffers("fixed") >= 20


# The same, with a Daemon run (a silent source, no broker) instead of the call.
DAEMON = """
import asyncio
from pathlib import Path
from daemon.app import Daemon
from daemon.config import Settings, apply_overrides

class Silence:
    device_name = "silence"
    async def frames(self):
        await asyncio.Event().wait()
        yield
    def wall_time(self, sample):
        return 0.0
    def monotonic_time(self, sample):
        return 0.0

async def run_a_moment():
    settings = apply_overrides(
        Settings(), {"mqtt": {"enabled": False}, "api": {"check_key_at_start": False}}
    ).model_copy(update={"state_dir": Path(sys.argv[2])})
    daemon = Daemon(settings, "key", None, "no-such-speaker", source=Silence())
    run = asyncio.create_task(daemon.run())
    await asyncio.sleep(0.5)
    daemon.stop()
    await run

asyncio.run(run_a_moment())
"""


@pytest.mark.slow
def test_the_daemon_fixes_the_threshold(tmp_path: Path) -> None:
    script = SCRIPT.replace("before = ", DAEMON + "before = ")
    assert mmapped_buffers("daemon", script=script, state_dir=tmp_path) >= 20
