"""The state file: room-level changes made over MQTT, kept across restarts.

`<state_dir>/room-config.json` holds `{"format": 1, "version": N, "room": {...}}`: the
room layer (the `config/set` overrides) and the config version. It is written atomically
(`daemon/statefile.py`: a temporary file in the same directory, fsync, rename, fsync of
the directory), so a crash or power loss leaves either the old or the new file. A file
that cannot be used (not JSON, wrong shape, settings that do not validate) is renamed
aside (`room-config.json.corrupt-<UTC time>`) and reported; the daemon then starts from
the configuration file.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.statefile import read_json, write_json

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
    """Reads and atomically writes the room layer (daemon/statefile.py does the I/O)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME

    def load(self) -> Loaded:
        """The saved state; a missing file is an empty state, a bad one is set aside."""
        found = read_json(self.path)  # sets aside a file that is not a JSON object
        if found.problem:
            log.warning("state file: %s", found.problem)
            return Loaded(SavedState(), found.problem)
        if found.data is None:
            return Loaded(SavedState())
        try:
            return Loaded(_decode(found.data))
        except ValueError as exc:
            return Loaded(SavedState(), self.set_aside(str(exc)))

    def set_aside(self, reason: str) -> str:
        """Rename the file out of the way; the problem to report."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{FILE_NAME}.corrupt-{stamp}")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            return f"{self.path}: unusable ({reason}); cannot set it aside: {exc.strerror}"
        log.warning("state file %s unusable (%s): set aside as %s", self.path, reason, aside)
        return f"{self.path}: unusable ({reason}); set aside as {aside.name}"

    def save(self, state: SavedState) -> None:
        """Write atomically: temporary file, fsync, rename, fsync the directory."""
        write_json(self.path, {"format": FORMAT, "version": state.version, "room": state.room})


def _decode(data: dict[str, Any]) -> SavedState:
    if data.get("format") != FORMAT:
        raise ValueError(f"not a format {FORMAT} state file")
    version, room = data.get("version"), data.get("room")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError("no valid version")
    if not isinstance(room, dict):
        raise ValueError("no room settings")
    return SavedState(version, room)
