"""glibc's heap in a daemon that runs for months: its free memory goes back to the system.

Every clip makes a few short-lived buffers of 0.1–1 MB: the clip's PCM, its WAV and
base64 data URL, the JSON request body, the reply's audio. glibc serves an allocation at
or above its mmap threshold with its own mmap, returned to the system when freed; but
the threshold is dynamic: the first such buffer freed raises it to that buffer's size
(up to 32 MiB), and from then on these buffers come from the heap, between long-lived
small objects, and the holes they leave stay resident. scripts/soak.py --memory-detail
measured it: glibc's free-but-kept memory 7.0 → 11.6 MB over 6 room hours, the RSS ~7 MB
higher over a day; with the threshold fixed, 1.6–4.2 MB over 24 room hours.

`fix_mmap_threshold()` puts the threshold back to glibc's starting 128 KiB and keeps it
there (mallopt(M_MMAP_THRESHOLD) turns the adjustment off), and the trim threshold (free
memory at the top of the heap kept rather than returned), which the adjustment doubles
along, back to its 128 KiB. `Daemon.run()` calls it. A large buffer still comes from the
heap when a free hole there fits it; the heap no longer grows for one.

Python's small objects (≤ 512 B) come from pymalloc, which takes 1 MiB arenas from the
system and gives one back only when every block in it is free: a few long-lived blocks
made in a busy moment keep their arenas, and busy moments keep taking fresh ones (the
soak's RSS grew ~18 MB in 48 room hours with the live objects flat, see
docs/testing.md). `exec_with_system_malloc()` makes `roomtranslate run` re-execute itself
with PYTHONMALLOC=malloc, so small objects come from glibc too, and `HeapTrimmer` calls
malloc_trim(0) every `TRIM_EVERY_S`, which returns every free 4 KiB page, wherever it
is in the heap. Without glibc (musl, macOS) there is nothing to do. `heap_figures()` reads
mallinfo2 for the soak.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters
M_MMAP_THRESHOLD = -3
TRIM_EVERY_S = 30.0
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting values, kept from then on
TRIM_THRESHOLD = 128 * 1024
_MALLINFO2 = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2.split()]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        libc.mallinfo2.argtypes = ()
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return None
    return libc


def fix_mmap_threshold() -> bool:
    """The heap grows no more for allocations of 128 KiB and more (each gets its own
    mmap), for good; True if glibc took it."""
    libc = _glibc()
    if libc is None:
        log.debug("not glibc: the mmap threshold is left as it is")
        return False
    done = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    done = bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and done
    if not done:
        log.warning("glibc refused its mmap or trim threshold")
    return done


def heap_figures() -> dict[str, int]:
    """glibc's heap in bytes: in use, free but kept, mmapped (and how many mmaps); {}
    without glibc."""
    libc = _glibc()
    if libc is None:
        return {}
    info = libc.mallinfo2()
    return {
        "in_use": info.uordblks,
        "free": info.fordblks,
        "mmapped": info.hblkhd,
        "mmaps": info.hblks,
    }


def malloc_trim() -> bool:
    """glibc returns every whole free page of its heaps to the system; False without
    glibc (or when there was nothing to return)."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


Exec = Callable[[str, list[str], dict[str, str]], object]


def exec_with_system_malloc(execve: Exec = os.execve) -> None:
    """Re-execute this process (same PID, same arguments) with PYTHONMALLOC=malloc when
    it runs on pymalloc with glibc; returns when there is nothing to do: already on
    malloc, not glibc, PYTHONMALLOC set (and ignored under python -E, which would loop),
    or the exec refused."""
    pymalloc = sys.getallocatedblocks() > 0  # always 0 without pymalloc
    if not pymalloc or _glibc() is None or "PYTHONMALLOC" in os.environ:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    env = {**os.environ, "PYTHONMALLOC": "malloc"}
    try:
        execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as exc:  # a sandbox without execve: pymalloc it is
        log.warning("could not re-execute on glibc's malloc (%s): staying on pymalloc", exc)


class HeapTrimmer:
    """Every `every_s`, malloc_trim(0): the free pages of glibc's heaps go back to the
    system (a supervised task of the daemon). It holds each heap's lock while it walks
    its free chunks, a few ms to tens of ms on the daemon's heap."""

    def __init__(
        self,
        every_s: float = TRIM_EVERY_S,
        *,
        trim: Callable[[], object] = malloc_trim,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.every_s = every_s
        self._trim = trim
        self._sleep = sleep
        self._clock = clock
        self.trims = 0
        self.longest_ms = 0.0

    async def run(self) -> None:
        while True:
            await self._sleep(self.every_s)
            self.trim()

    def trim(self) -> None:
        start = self._clock()
        self._trim()
        self.trims += 1
        self.longest_ms = max(self.longest_ms, (self._clock() - start) * 1000)
