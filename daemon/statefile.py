"""Small state files in the state directory: atomic writes, corrupt files set aside.

`write_atomic()` writes a temporary file in the same directory, fsyncs it, renames it
over the target and fsyncs the directory, so after a power cut the file is either the
old or the new version, never a torn one. `read_json()` returns None for a missing file
and moves an unreadable one aside (`<name>.corrupt-<UTC stamp>`) so it can be looked at,
saying where it went. Unreadable includes nested deeper than `MAX_DEPTH`: the daemon's
state files are a few levels deep, and a deeper one (however it was built) must not reach
code that walks it recursively.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_DEPTH = 32  # containers inside containers; the deepest state file the daemon writes is 3


@dataclass(frozen=True, slots=True)
class Loaded:
    """What `read_json` found: the data (None if absent or corrupt), and a problem."""

    data: dict[str, Any] | None
    problem: str = ""  # "" or why the file was set aside (and where it went)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (temp + fsync + rename + directory fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(payload, sort_keys=True) + "\n").encode("utf-8"))


def read_json(path: Path) -> Loaded:
    """The JSON object in `path`; a corrupt file is renamed aside (see module docstring)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Loaded(None)
    except OSError as exc:
        return Loaded(None, f"{path}: cannot read: {exc.strerror or exc}")
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        _check_depth(data)
    except (ValueError, RecursionError) as exc:  # incl. UnicodeDecodeError, JSONDecodeError
        aside = path.with_name(
            f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        )
        try:
            os.replace(path, aside)
        except OSError as move:
            return Loaded(None, f"{path}: corrupt ({exc}); cannot set it aside: {move.strerror}")
        return Loaded(None, f"{path}: corrupt ({type(exc).__name__}); set aside as {aside.name}")
    return Loaded(data)


def _check_depth(data: Any) -> None:
    """ValueError when containers nest deeper than MAX_DEPTH (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH}")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
