"""Configuration keys an earlier version had elsewhere.

A renamed key (`RENAMED_KEYS`) is still read from its old place, in the file and in the
environment, with one warning naming its new place; set in both places it is an error. A
moved setting that cannot be mapped (`MOVED_SETTINGS`) is an error saying where it went.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource

log = logging.getLogger("daemon.config")

# Keys that moved out of [mqtt], by their place now: (section, key) → (section, key).
RENAMED_KEYS: dict[tuple[str, str], tuple[str, str]] = {
    ("mqtt", "recent_captions"): ("captions", "recent"),
    ("mqtt", "recent_clear_s"): ("captions", "recent_clear_s"),
    ("mqtt", "site"): ("remote_config", "site"),
    ("mqtt", "config_changes_per_s"): ("remote_config", "changes_per_s"),
    ("mqtt", "ha_discovery"): ("homeassistant", "discovery"),
    ("mqtt", "ha_prefix"): ("homeassistant", "discovery_prefix"),
}

# Settings that cannot be mapped: the error says where they are now.
MOVED_SETTINGS = {
    "budget": "moved: the daily cap is now room.daily_audio_s (settable over MQTT)",
    "budget.daily_audio_s": "moved to room.daily_audio_s (settable over MQTT)",
}


@dataclass(frozen=True, slots=True)
class Renaming:
    """A configuration (`data`) with its renamed keys in their new place; `moved` and
    `clashes` hold the (old, new) dotted names of the keys found, moved or set twice."""

    data: dict[str, Any]
    moved: list[tuple[str, str]]
    clashes: list[tuple[str, str]]


def rename_keys(data: Mapping[str, Any]) -> Renaming:
    """`data` with every key of `RENAMED_KEYS` moved to its new place; a key set in both
    places is dropped from the old one and reported as a clash (never guessed)."""
    out = {name: dict(v) if isinstance(v, Mapping) else v for name, v in data.items()}
    moved: list[tuple[str, str]] = []
    clashes: list[tuple[str, str]] = []
    for (old_section, old_key), (new_section, new_key) in RENAMED_KEYS.items():
        section = out.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        target = out.setdefault(new_section, {})
        if not isinstance(target, dict):
            continue  # not a section: validation says so
        names = (f"{old_section}.{old_key}", f"{new_section}.{new_key}")
        value = section.pop(old_key)
        if new_key in target:
            clashes.append(names)
        else:
            target[new_key] = value
            moved.append(names)
    return Renaming(out, moved, clashes)


def check_renamed(
    settings_cls: type[BaseSettings], data: Mapping[str, Any], where: str, env_prefix: str
) -> list[str]:
    """Log each renamed key found in the file's `data` (`where`) or in the environment; one
    problem line per key set in both places."""
    environment = rename_keys(EnvSettingsSource(settings_cls)())
    return _report(rename_keys(data), where) + _report(environment, "environment: ", env_prefix)


def _report(renaming: Renaming, where: str, env_prefix: str | None = None) -> list[str]:
    """Log each key found in its old place (with its variable's new name when `env_prefix`
    is given); one problem line per key set in both places."""
    for old, new in renaming.moved:
        also = f" ({env_prefix}{new.upper().replace('.', '__')})" if env_prefix else ""
        log.warning("%s%s is now %s%s (the old key still works)", where, old, new, also)
    return [
        f"{where}{old}: moved to {new}, which is set too; remove {old}"
        for old, new in renaming.clashes
    ]


class RenamingSource(PydanticBaseSettingsSource):
    """A settings source with its renamed keys moved (`rename_keys`)."""

    def __init__(self, inner: PydanticBaseSettingsSource) -> None:
        super().__init__(inner.settings_cls)
        self._inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        return rename_keys(self._inner()).data
