"""The soak's memory diagnosis (`scripts/soak.py --memory-detail`, `--trace-malloc N`,
`--malloc-trim`): where the process's RSS is, where its Python heap grows, and glibc's
free memory given back before a figure."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path

from daemon.heap import heap_figures


class HeapTrace:
    """`--trace-malloc N`: where the Python heap grows, and which object types multiply.

    A tracemalloc snapshot and a count of the gc-tracked objects by type are taken at the
    warm-up report; every later report prints the N allocation sites and the N types that
    grew most since then. tracemalloc sees what Python and numpy allocate and still hold:
    growth in RSS that it does not show is elsewhere (holes in glibc's heap, pymalloc's
    arenas, PortAudio, onnxruntime): see `--memory-detail`.
    """

    def __init__(self, top: int, frames: int) -> None:
        self._top = top
        self._base: tracemalloc.Snapshot | None = None
        self._types: Counter[str] = Counter()
        tracemalloc.start(frames)

    @staticmethod
    def _snapshot() -> tracemalloc.Snapshot:
        return tracemalloc.take_snapshot().filter_traces(
            (tracemalloc.Filter(False, tracemalloc.__file__),)
        )

    @staticmethod
    def _count_types() -> Counter[str]:
        gc.collect()
        return Counter(type(o).__qualname__ for o in gc.get_objects())

    def mark(self) -> None:
        self._base = self._snapshot()
        self._types = self._count_types()
        traced, _ = tracemalloc.get_traced_memory()
        print(f"  trace-malloc: baseline, {traced / 1e6:.2f} MB traced", flush=True)

    def report(self) -> None:
        if self._base is None:
            return
        now = self._snapshot()
        traced, _ = tracemalloc.get_traced_memory()
        base_size = sum(s.size for s in self._base.statistics("filename"))
        print(
            f"  trace-malloc: {traced / 1e6:.2f} MB traced "
            f"({(traced - base_size) / 1e6:+.3f} MB since the baseline)"
        )
        key = "traceback" if self._frames() > 1 else "lineno"
        for stat in now.compare_to(self._base, key)[: self._top]:
            where = stat.traceback.format(limit=self._frames())
            print(f"    {stat.size_diff / 1e3:+9.1f} kB {stat.count_diff:+7d} blocks  {where[0]}")
            for line in where[1:]:
                print(f"        {line}")
        small = small_blocks(now) - small_blocks(self._base)
        print(
            "    small blocks (pymalloc's, ≤ 512 B) grown most: "
            + ", ".join(f"{where} {n:+d}" for where, n in small.most_common(self._top))
        )
        types = self._count_types()
        grown = sorted(((types[k] - self._types[k], k) for k in types), reverse=True)
        print(
            "    objects: "
            + ", ".join(f"{name} {diff:+d} ({types[name]})" for diff, name in grown[: self._top]),
            flush=True,
        )

    @staticmethod
    def _frames() -> int:
        return tracemalloc.get_traceback_limit()


def small_blocks(snapshot: tracemalloc.Snapshot) -> Counter[str]:
    """Blocks of at most 512 bytes (pymalloc's) held, by the line that allocated them."""
    held: Counter[str] = Counter()
    for trace in snapshot.traces:
        if trace.size <= 512:
            frame = trace.traceback[0]
            held[f"{Path(frame.filename).name}:{frame.lineno}"] += 1
    return held


def memory_detail() -> str:
    """`--memory-detail`: where the RSS is. Anonymous vs file-backed pages (libraries'
    code paged in), glibc's heap (in use, free but kept, mmapped), pymalloc's arenas
    (the Python objects' allocator, which frees an arena only when it is empty)."""
    rollup = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        rollup[name.rstrip(":")] = int(value) / 1024
    heap = heap_figures()
    mb = 1024 * 1024
    glibc = (
        f"malloc in use {heap['in_use'] / mb:.1f} MB, free {heap['free'] / mb:.1f} MB, "
        f"mmapped {heap['mmapped'] / mb:.1f} MB ({heap['mmaps']})"
        if heap
        else "not glibc"
    )
    return (
        f"  memory: anon {rollup['Anonymous']:.1f} MB, "
        f"file {rollup['Rss'] - rollup['Anonymous']:.1f} MB; {glibc}; "
        f"pymalloc {pymalloc_arenas()} arenas, {sys.getallocatedblocks()} blocks; "
        f"{len(gc.get_objects())} gc objects"
    )


def pymalloc_arenas() -> str:
    """pymalloc's current arena count (1 MiB each), from sys._debugmallocstats (which
    writes to the C stderr)."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        for line in out.read().decode(errors="replace").splitlines():
            if line.startswith("# arenas allocated current"):
                return line.split("=")[-1].strip()
    return "?"


def malloc_trim() -> None:
    """`--malloc-trim`: glibc gives freed heap back to the system before each figure, so
    fragmentation of its arenas shows as the difference from a run without it."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc_trim(0)
