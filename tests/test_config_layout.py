"""Configuration by concern: `[mqtt]` (the broker), `[captions]`, `[remote_config]` and
`[homeassistant]`; the keys these had in `[mqtt]` are still read, each with one log line
naming its new place, or exit 78 when set in both places; the room id's default needs no
I/O while validating."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from daemon.config import ConfigError, Settings, check_environment, load_settings, with_room_id
from daemon.control.layers import BOOT_KEYS
from daemon.identity import default_room_id
from daemon.moved_keys import RENAMED_KEYS, rename_keys
from scripts.procs import run_cli

# Every key that moved out of [mqtt], with a value that is not its default.
OLD_KEYS = {
    "recent_captions": ("captions", "recent", 3),
    "recent_clear_s": ("captions", "recent_clear_s", 60.0),
    "site": ("remote_config", "site", "hq"),
    "config_changes_per_s": ("remote_config", "changes_per_s", 2.0),
    "ha_discovery": ("homeassistant", "discovery", False),
    "ha_prefix": ("homeassistant", "discovery_prefix", "ha"),
}


def toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f'"{value}"' if isinstance(value, str) else str(value)


def test_every_renamed_key_is_tested() -> None:
    assert {(s, k) for s, k in RENAMED_KEYS} == {("mqtt", k) for k in OLD_KEYS}
    assert {new for new in RENAMED_KEYS.values()} == {(s, k) for s, k, _ in OLD_KEYS.values()}


def test_the_layout_by_concern_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[mqtt]\nhost = "broker"\nroom_id = "r1"\n'
        "[captions]\nrecent = 3\nrecent_clear_s = 60.0\n"
        '[remote_config]\nsite = "hq"\nchanges_per_s = 2.0\n'
        '[homeassistant]\ndiscovery = false\ndiscovery_prefix = "ha"\n'
    )
    settings = load_settings(str(path))
    assert (settings.mqtt.host, settings.mqtt.room_id) == ("broker", "r1")
    assert (settings.captions.recent, settings.captions.recent_clear_s) == (3, 60.0)
    assert (settings.remote_config.site, settings.remote_config.changes_per_s) == ("hq", 2.0)
    assert settings.homeassistant.discovery is False
    assert settings.homeassistant.discovery_prefix == "ha"


@pytest.mark.parametrize("old", sorted(OLD_KEYS))
def test_an_old_key_in_the_file_still_works_and_says_where_it_is_now(
    tmp_path: Path, old: str, caplog: pytest.LogCaptureFixture
) -> None:
    section, key, value = OLD_KEYS[old]
    path = tmp_path / "config.toml"
    path.write_text(f'[mqtt]\nhost = "broker"\n{old} = {toml(value)}\n')
    with caplog.at_level(logging.WARNING, logger="daemon.config"):
        settings = load_settings(str(path))
    assert getattr(getattr(settings, section), key) == value
    assert settings.mqtt.host == "broker"
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"{path}: mqtt.{old} is now {section}.{key} (the old key still works)"]


@pytest.mark.parametrize("old", sorted(OLD_KEYS))
def test_an_old_environment_variable_still_works_and_names_the_new_one(
    old: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    section, key, value = OLD_KEYS[old]
    monkeypatch.setenv(f"ROOMTRANSLATE_MQTT__{old.upper()}", str(value).lower())
    assert check_environment(os.environ) == []
    with caplog.at_level(logging.WARNING, logger="daemon.config"):
        settings = load_settings()
    assert getattr(getattr(settings, section), key) == value
    new = f"ROOMTRANSLATE_{section.upper()}__{key.upper()}"
    assert [r.getMessage() for r in caplog.records] == [
        f"environment: mqtt.{old} is now {section}.{key} ({new}) (the old key still works)"
    ]


def test_the_environment_still_overrides_the_file_across_the_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[homeassistant]\ndiscovery_prefix = "file"\n[mqtt]\nsite = "file"\n')
    monkeypatch.setenv("ROOMTRANSLATE_MQTT__HA_PREFIX", "env")
    monkeypatch.setenv("ROOMTRANSLATE_REMOTE_CONFIG__SITE", "env")
    settings = load_settings(str(path))
    assert settings.homeassistant.discovery_prefix == "env"
    assert settings.remote_config.site == "env"


def test_a_key_set_in_its_old_and_new_place_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[mqtt]\nha_prefix = "a"\n[homeassistant]\ndiscovery_prefix = "b"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path))
    assert caught.value.lines == [
        f"{path}: mqtt.ha_prefix: moved to homeassistant.discovery_prefix, which is set too; "
        "remove mqtt.ha_prefix"
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMTRANSLATE_")}
    env["ROOMTRANSLATE_MQTT__SITE"] = "a"
    env["ROOMTRANSLATE_REMOTE_CONFIG__SITE"] = "b"
    result = run_cli("run", env=env)
    assert result.returncode == 78, result.stderr
    assert (
        "configuration error: environment: mqtt.site: moved to remote_config.site, "
        "which is set too; remove mqtt.site" in result.stderr
    )


def test_renaming_is_a_pure_mapping() -> None:
    data = {"mqtt": {"host": "h", "ha_discovery": False}, "room": {"volume": 5}}
    renamed = rename_keys(data)
    assert renamed.data == {
        "mqtt": {"host": "h"},
        "room": {"volume": 5},
        "homeassistant": {"discovery": False},
    }
    assert renamed.moved == [("mqtt.ha_discovery", "homeassistant.discovery")]
    assert data["mqtt"] == {"host": "h", "ha_discovery": False}  # the input is left alone
    assert Settings(mqtt={"site": "hq"}).remote_config.site == "hq"


def test_old_and_new_names_are_both_refused_over_mqtt_as_boot_settings() -> None:
    for old, (section, key, _) in OLD_KEYS.items():
        assert {old, f"mqtt.{old}", key, f"{section}.{key}"} <= BOOT_KEYS


def test_the_room_id_default_needs_no_io_while_validating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_hostname() -> str:
        raise AssertionError("the hostname was looked up while validating")

    with monkeypatch.context() as patch:
        patch.setattr(socket, "gethostname", no_hostname)
        settings = Settings()
        assert settings.mqtt.room_id == ""
    assert with_room_id(settings, "meeting-room-3").mqtt.room_id == "meeting-room-3"
    named = Settings(mqtt={"room_id": "r1"})
    assert with_room_id(named, "meeting-room-3").mqtt.room_id == "r1"
    assert load_settings().mqtt.room_id == default_room_id()
    path = tmp_path / "config.toml"
    path.write_text('[mqtt]\nroom_id = ""\n')
    assert load_settings(str(path)).mqtt.room_id == default_room_id()
    path.write_text('[mqtt]\nroom_id = "a/b"\n')
    with pytest.raises(ConfigError, match=r"mqtt.room_id = .a/b.: must be one topic level"):
        load_settings(str(path))
