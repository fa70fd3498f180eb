"""Configuration: sources and their order, readable errors with exit 78, live room swaps."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from daemon.config import (
    ConfigError,
    LiveRoom,
    RoomSettings,
    Settings,
    load_settings,
    resolve_api_key,
    with_room_id,
)
from daemon.identity import default_room_id
from scripts.paths import AUDIO_DIR, PROJECT_ROOT
from scripts.procs import run_cli


def roomtranslate(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_repository_config_documents_every_key_with_its_default() -> None:
    text = (PROJECT_ROOT / "config.toml").read_text()
    data = tomllib.loads(text)
    defaults = Settings()
    documented = set(re.findall(r"^#?\s*(\w+) = ", text, re.MULTILINE))
    for section, model in defaults:
        if not isinstance(model, BaseModel):  # a top-level setting (state_dir)
            assert section in documented, f"{section} is not in config.toml"
            assert data.get(section, model) == str(model), f"{section}: not the default"
            continue
        for key, value in model:
            assert key in documented, f"{section}.{key} is not in config.toml"
            if key in data.get(section, {}):
                shipped = data[section][key]
                expected = value.get_secret_value() if hasattr(value, "get_secret_value") else value
                assert shipped == expected, f"{section}.{key}: {shipped!r} != default {expected!r}"
    shipped = load_settings(str(PROJECT_ROOT / "config.toml"))
    assert shipped == with_room_id(defaults, default_room_id())


def test_sources_order_file_then_environment_then_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[room]\ntarget_lang = "de"\n[api]\nmax_attempts = 5\n')
    assert load_settings(str(path)).room.target_lang == "de"
    monkeypatch.setenv("ROOMTRANSLATE_ROOM__TARGET_LANG", "fr")
    monkeypatch.setenv("ROOMTRANSLATE_API__BASE_URL", "http://127.0.0.1:1/compatible-mode/v1")
    settings = load_settings(str(path))
    assert settings.room.target_lang == "fr" and settings.api.max_attempts == 5
    assert settings.api.base_url.startswith("http://127.0.0.1:1/")
    assert load_settings(str(path), {"room": {"target_lang": "ja"}}).room.target_lang == "ja"
    monkeypatch.setenv("ROOMTRANSLATE_CONFIG", str(path))
    assert load_settings().api.max_attempts == 5


def test_bad_file_exits_78_with_one_line_per_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[room]\nvolume = 120\n[api]\nbogus = 1\n[mqtt]\nport = "x"\npassword = 5\n',
    )
    result = roomtranslate("--config", str(path), "translate-file", "x.wav", "--to", "de")
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert any(
        "room.volume = 120" in line and "less than or equal to 100" in line for line in lines
    )
    assert any("api.bogus: unknown setting" in line for line in lines)
    assert any("mqtt.port = 'x'" in line for line in lines)
    assert any("mqtt.password = <hidden>" in line for line in lines)
    assert all(str(path) in line for line in lines)


def test_invalid_toml_exits_78(tmp_path: Path) -> None:
    result = roomtranslate("--config", str(write(tmp_path, "[room\n")), "run")
    assert result.returncode == 78 and "not valid TOML" in result.stderr


def test_missing_file_exits_78(tmp_path: Path) -> None:
    result = roomtranslate("--config", str(tmp_path / "nope.toml"), "run")
    assert result.returncode == 78 and "no such configuration file" in result.stderr


@pytest.mark.parametrize("command", ["run", "devices"])
def test_config_option_after_the_subcommand(tmp_path: Path, command: str) -> None:
    """`run --config PATH` (the systemd unit's order) reads PATH, like `--config PATH run`."""
    missing = str(tmp_path / "nope.toml")
    result = roomtranslate(command, "--config", missing)
    assert result.returncode == 78 and "no such configuration file" in result.stderr
    assert missing in result.stderr


def test_impossible_voice_names_the_allowed_voices() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"room": {"target_lang": "yue", "voice": "Cherry"}})
    assert err.value.lines == ["room: voice 'Cherry' does not speak 'yue'; voices for 'yue': Kiki"]
    # a text-only target needs no voice; speech off needs no voice either
    assert load_settings(None, {"room": {"target_lang": "th"}}).room.target_lang == "th"
    load_settings(None, {"room": {"target_lang": "yue", "speech": False}})


def test_unknown_language_is_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"room": {"target_lang": "xx"}})
    assert "target_lang 'xx' is not a supported language" in err.value.lines[0]


def test_secrets_never_echoed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOMTRANSLATE_MQTT__PASSWORD", "hunter2-secret")
    settings = load_settings()
    assert "hunter2-secret" not in repr(settings) and "hunter2-secret" not in str(settings)
    assert settings.mqtt.password.get_secret_value() == "hunter2-secret"


def test_api_key_from_environment_or_key_file(tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text("sk-file\n")
    settings = load_settings(None, {"api": {"key_file": str(keyfile)}})
    assert resolve_api_key(settings, {}) == "sk-file"
    assert resolve_api_key(settings, {"DASHSCOPE_API_KEY": "sk-env"}) == "sk-env"
    assert resolve_api_key(Settings(), {}) is None
    keyfile.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        resolve_api_key(settings, {})


def test_no_key_is_a_configuration_error_without_echo(tmp_path: Path) -> None:
    wav = AUDIO_DIR / "en_sr_english.wav"
    result = roomtranslate("translate-file", str(wav), "--to", "de")
    assert result.returncode == 78 and "DASHSCOPE_API_KEY" in result.stderr


def test_live_room_swaps_atomically_and_validates_the_whole() -> None:
    room = LiveRoom(RoomSettings(target_lang="en"))
    seen: list[str] = []
    room.subscribe(lambda r: seen.append(r.target_lang))
    room.update(target_lang="zh", voice="Jada")
    assert (room.current.target_lang, room.current.voice, room.version) == ("zh", "Jada", 1)
    with pytest.raises(ConfigError, match="voices for 'en'"):
        room.update(target_lang="en")  # Jada speaks only zh: refused, nothing changes
    assert (room.current.target_lang, room.version, seen) == ("zh", 1, ["zh"])
    with pytest.raises(ConfigError, match=r"room\.volume = 101"):
        room.update(volume=101)
