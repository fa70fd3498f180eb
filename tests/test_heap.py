"""glibc's mmap threshold (daemon/heap.py), in fresh processes: once a large buffer was
freed, glibc serves the next clip-sized buffers from its heap (where their holes stay
resident, the soak's RSS growth) unless the threshold is fixed; the daemon fixes it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.heap import HeapTrimmer, exec_with_system_malloc, heap_figures
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


# Long-lived small objects scattered through a burst of short-lived ones (a counter's new
# value, a timestamp kept, made in a busy moment): what stays resident once the burst is
# freed? pymalloc keeps every 1 MiB arena one of them is in; glibc's malloc, once the
# process runs on it (exec_with_system_malloc) and trims, keeps only their pages.
BURST = """
import sys
from pathlib import Path
from daemon.heap import exec_with_system_malloc, malloc_trim

if sys.argv[1] == "system-malloc":
    exec_with_system_malloc()

def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

before = rss_mb()
burst = [float(i) for i in range(2_000_000)]
kept = burst[::4096]
del burst
malloc_trim()
print(sys.getallocatedblocks(), rss_mb() - before)
"""


def retained_mb(mode: str) -> tuple[int, float]:
    result = subprocess.run(
        [sys.executable, "-c", BURST, mode],
        cwd=PROJECT_ROOT,
        env={k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    blocks, retained = result.stdout.split()
    return int(blocks), float(retained)


def test_on_pymalloc_a_few_long_lived_objects_keep_a_burst_resident() -> None:
    blocks, retained = retained_mb("pymalloc")
    assert blocks > 0
    assert retained > 40  # of the burst's ~64 MB of floats


def test_on_glibc_malloc_trimmed_the_burst_goes_back_to_the_system() -> None:
    blocks, retained = retained_mb("system-malloc")
    assert blocks == 0  # re-executed without pymalloc
    assert retained < 10


def test_the_re_execution_keeps_the_arguments_and_sets_only_pythonmalloc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    exec_with_system_malloc(lambda path, argv, env: calls.append((path, argv, env)))
    [(path, argv, env)] = calls
    assert path == sys.executable
    assert argv == [sys.executable, *sys.orig_argv[1:]]
    assert env == {**os.environ, "PYTHONMALLOC": "malloc"}


@pytest.mark.parametrize("chosen", ["pymalloc", "malloc", "debug"])
def test_an_allocator_already_chosen_is_kept(monkeypatch: pytest.MonkeyPatch, chosen: str) -> None:
    monkeypatch.setenv("PYTHONMALLOC", chosen)  # ignored under python -E: no exec loop
    calls: list[str] = []
    exec_with_system_malloc(lambda path, argv, env: calls.append(path))
    assert calls == []


def test_the_trimmer_trims_every_interval_and_keeps_the_longest() -> None:
    slept: list[float] = []
    ticks = iter([0.0, 0.004, 1.0, 1.030, 2.0, 2.010])

    async def sleep(seconds: float) -> None:
        if len(slept) == 3:
            raise asyncio.CancelledError
        slept.append(seconds)

    trimmed: list[int] = []
    trimmer = HeapTrimmer(
        30.0, trim=lambda: trimmed.append(1), sleep=sleep, clock=lambda: next(ticks)
    )
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(trimmer.run())
    assert slept == [30.0, 30.0, 30.0]
    assert len(trimmed) == trimmer.trims == 3
    assert trimmer.longest_ms == pytest.approx(30.0)


def test_a_refused_exec_leaves_the_process_running_on_pymalloc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTHONMALLOC", raising=False)

    def refused(path: str, argv: list[str], env: dict[str, str]) -> None:
        raise PermissionError(1, "Operation not permitted")

    exec_with_system_malloc(refused)  # returns
