"""The soak's memory diagnosis (`scripts/soak.py --memory-detail`, `--trace-malloc N`):
where the process's RSS is and where its Python heap grows."""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import tracemalloc
from collections import Counter
from dataclasses import dataclass
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


class MemoryDetail:
    """`--memory-detail`: where the RSS is. Anonymous vs file-backed pages (libraries'
    code paged in), glibc's heap (in use, free but kept, mmapped); with pymalloc (the
    soak runs on glibc's malloc, as the daemon does, unless PYTHONMALLOC says otherwise)
    its arenas (it frees one only when it is empty) and the size classes whose pools grew
    since the first figure."""

    def __init__(self) -> None:
        self._base: Pymalloc | None = None

    def line(self) -> str:
        py = pymalloc()
        if self._base is None:
            self._base = py
        pools = (
            f"pymalloc {py.arenas} arenas ({py.unused_pools} unused pools), "
            f"{sys.getallocatedblocks()} blocks; "
            if py.arenas
            else "no pymalloc; "
        )
        grown = f"\n  size classes grown most: {py.grown_since(self._base)}" if py.arenas else ""
        return f"{rss_figures()}{pools}{len(gc.get_objects())} gc objects{grown}"


def rss_figures() -> str:
    rollup = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        rollup[name.rstrip(":")] = int(value) / 1024
    main_heap = 0.0
    mapping = ""
    anon: list[tuple[float, str]] = []  # the largest anonymous mappings: (MB, range)
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line[0].isupper():  # a mapping's first line
            mapping = line
        elif line.startswith("Rss:"):
            mb = int(line.split()[1]) / 1024
            if mapping.endswith("[heap]"):
                main_heap = mb
            elif len(mapping.split()) == 5:  # no path: anonymous
                anon.append((mb, mapping.split()[0]))
    anon.sort(reverse=True)
    largest = ", ".join(f"{where} {mb:.1f}" for mb, where in anon[:3])
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
        f"file {rollup['Rss'] - rollup['Anonymous']:.1f} MB, [heap] {main_heap:.1f} MB, "
        f"largest other anonymous mappings (MB) {largest}; {glibc}; "
    )


def debugmallocstats() -> str:
    """sys._debugmallocstats()'s text (it writes to the C stderr)."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        return out.read().decode(errors="replace")


@dataclass(frozen=True)
class Pymalloc:
    """pymalloc's state: arenas (1 MiB each), wholly unused pools (16 KiB each) in them,
    and per size class (bytes): pools in use, blocks in use, free blocks in those pools."""

    arenas: int
    unused_pools: int
    classes: dict[int, tuple[int, int, int]]

    def grown_since(self, base: Pymalloc, top: int = 6) -> str:
        rows = []
        for size, (pools, used, avail) in self.classes.items():
            b_pools, b_used, _ = base.classes.get(size, (0, 0, 0))
            rows.append((pools - b_pools, size, used - b_used, pools, avail))
        rows.sort(reverse=True)
        return ", ".join(
            f"{size} B: pools {d_pools:+d} ({pools}), blocks {d_used:+d}, free {avail}"
            for d_pools, size, d_used, pools, avail in rows[:top]
        )


def pymalloc() -> Pymalloc:
    arenas = unused = 0
    classes: dict[int, tuple[int, int, int]] = {}
    for line in debugmallocstats().splitlines():
        words = line.split()
        if len(words) == 5 and all(w.isdigit() for w in words):
            classes[int(words[1])] = (int(words[2]), int(words[3]), int(words[4]))
        elif line.startswith("# arenas allocated current"):
            arenas = int(words[-1])
        elif "unused pools *" in line:
            unused = int(words[0])
    return Pymalloc(arenas, unused, classes)
