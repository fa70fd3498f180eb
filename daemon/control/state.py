"""The state file: room-level changes made over MQTT, kept across restarts.

`<state_dir>/room-config.json` holds `{"format": 1, "version": N, "room": {...}}`: the
room layer (the `config/set` overrides) and the config version. It is written atomically
(a temporary file in the same directory, fsync, rename, fsync of the directory), so a
crash or power loss leaves either the old or the new file. A file that cannot be used
(not JSON, wrong shape) is renamed aside (`room-config.json.corrupt-<time>`) and
reported; the daemon then starts from the configuration file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE_NAME = "room-config.json"
FORMAT = 1


@dataclass(frozen=True, slots=True)
class SavedState:
    version: int = 0
    room: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Loaded:
    """What `StateFile.load()` found; `problem` says why the file was not used."""

    state: SavedState
    problem: str = ""


class StateFile:
    """Reads and atomically writes the room layer."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self._tmp = state_dir / f".{FILE_NAME}.tmp"

    def load(self) -> Loaded:
        """The saved state; a missing file is an empty state, a bad one is set aside."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Loaded(SavedState())
        except OSError as exc:
            return Loaded(SavedState(), f"cannot read {self.path}: {exc.strerror}")
        try:
            return Loaded(_decode(raw))
        except ValueError as exc:
            return Loaded(SavedState(), self.set_aside(str(exc)))

    def set_aside(self, reason: str) -> str:
        """Rename the file out of the way; the problem to report."""
        aside = self.path.with_name(f"{FILE_NAME}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            return f"{self.path} unusable ({reason}) and not set aside: {exc.strerror}"
        log.warning("state file %s unusable (%s): set aside as %s", self.path, reason, aside)
        return f"{self.path} was unusable ({reason}): set aside as {aside.name}"

    def save(self, state: SavedState) -> None:
        """Write atomically: temporary file, fsync, rename, fsync the directory."""
        data = json.dumps(
            {"format": FORMAT, "version": state.version, "room": state.room},
            ensure_ascii=False,
            indent=1,
        ).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _decode(raw: bytes) -> SavedState:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a format {FORMAT} state file")
    version, room = data.get("version"), data.get("room")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError("no valid version")
    if not isinstance(room, dict):
        raise ValueError("no room settings")
    return SavedState(version, room)
