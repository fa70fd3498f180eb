"""Every configuration error exits 78 with the field and the reason, never a traceback;
secrets never appear in the message."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from daemon.config import ConfigError, check_environment, load_settings
from scripts.procs import run_cli

SECRET = "sk-hunter2-secret"


def roomtranslate(
    *args: str, env: dict[str, str] | None = None, config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROOMTRANSLATE_")}
    base.pop("DASHSCOPE_API_KEY", None)
    if config is not None:
        base["ROOMTRANSLATE_CONFIG"] = str(config)
    return run_cli(*args, env={**base, **(env or {})})


def assert_config_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 78, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    assert SECRET not in result.stderr + result.stdout


def test_bad_json_in_a_section_variable_exits_78() -> None:
    result = roomtranslate("devices", env={"ROOMTRANSLATE_MQTT": '{"password": "' + SECRET})
    assert_config_error(result, "environment ROOMTRANSLATE_MQTT: not a JSON object")


def test_non_utf8_config_file_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[room]\ntarget_lang = "\xff"\n')
    assert_config_error(roomtranslate("run", "--config", str(path)), str(path), "not UTF-8")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (SECRET.encode() + b"\nsecond-line\n", "more than one line"),
        (b"sk-\xc3\xa9" + SECRET.encode() + b"\n", "non-ASCII"),
        (b"sk-\xff" + SECRET.encode(), "not UTF-8"),
        (b"sk-abc " + SECRET.encode(), "spaces or control characters"),
        (b"\n\n", "empty"),
    ],
)
def test_bad_key_file_exits_78_without_the_key(tmp_path: Path, content: bytes, reason: str) -> None:
    key = tmp_path / "api-key"
    key.write_bytes(content)
    result = roomtranslate("run", env={"ROOMTRANSLATE_API__KEY_FILE": str(key)})
    assert_config_error(result, f"api.key_file = '{key}'", reason)


def test_key_file_with_one_trailing_newline_is_fine(tmp_path: Path) -> None:
    key = tmp_path / "api-key"
    key.write_text(SECRET + "\n")
    from daemon.config import resolve_api_key

    settings = load_settings(None, {"api": {"key_file": str(key)}})
    assert resolve_api_key(settings, {}) == SECRET


def test_non_ascii_key_in_the_environment_exits_78() -> None:
    result = roomtranslate("run", env={"DASHSCOPE_API_KEY": SECRET + "é"})
    assert_config_error(result, "DASHSCOPE_API_KEY: the key has non-ASCII")


def test_values_checked_at_load_time_all_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[api]\nbase_url = "dashscope.aliyuncs.com/compatible-mode/v1"\n'
        '[mqtt]\ntls = true\nca_file = "/nonexistent/ca.pem"\n'
        f'cert_file = "{tmp_path}/client.pem"\n'
        f'password = "{SECRET}"\n'
        "[room]\nvolume = 101\n"
    )
    result = roomtranslate("run", "--config", str(path))
    assert_config_error(
        result,
        "api.base_url = 'dashscope.aliyuncs.com/compatible-mode/v1': must be an http",
        "mqtt.ca_file = '/nonexistent/ca.pem': no such file",
        f"mqtt.cert_file = '{tmp_path}/client.pem': no such file",
        "room.volume = 101",
    )


@pytest.mark.parametrize(
    "url", ["ftp://host/x", "http://", "https://host:99999/v1", "", "localhost:8765"]
)
def test_base_url_must_be_http_with_a_host(url: str) -> None:
    with pytest.raises(ConfigError, match=r"api\.base_url"):
        load_settings(None, {"api": {"base_url": url}})


def test_ranges() -> None:
    with pytest.raises(ConfigError, match="reconnect_min_s must not be greater"):
        load_settings(None, {"mqtt": {"reconnect_min_s": 40.0, "reconnect_max_s": 30.0}})
    with pytest.raises(ConfigError, match="backoff_base_s must not be greater"):
        load_settings(None, {"api": {"backoff_base_s": 9.0, "backoff_max_s": 8.0}})


def test_misspelt_environment_variables_are_named() -> None:
    result = roomtranslate(
        "devices",
        env={
            "ROOMTRANSLATE_MQTT_HOST": "broker",  # one underscore
            "ROOMTRANSLATE_MQQT__PASSWORD": SECRET,  # section misspelt
            "ROOMTRANSLATE_ROOM__TARGET_LANGUAGE": "de",  # key misspelt
            "ROOMTRANSLATE_ROOM__TARGET_LANG": "de",  # fine
        },
    )
    assert_config_error(
        result,
        "environment ROOMTRANSLATE_MQTT_HOST: no such setting "
        "(did you mean ROOMTRANSLATE_MQTT__HOST?)",
        "environment ROOMTRANSLATE_MQQT__PASSWORD: no such setting "
        "(did you mean ROOMTRANSLATE_MQTT__PASSWORD?)",
        "ROOMTRANSLATE_ROOM__TARGET_LANGUAGE: no such setting",
    )
    assert "ROOMTRANSLATE_ROOM__TARGET_LANG:" not in result.stderr


def test_known_variables_pass() -> None:
    environ = {
        "ROOMTRANSLATE_CONFIG": "/x",
        "ROOMTRANSLATE_AUDIO_DIR": "/y",
        "ROOMTRANSLATE_API__BASE_URL": "http://127.0.0.1:1/v1",
        "ROOMTRANSLATE_room__volume": "5",
        "ROOMTRANSLATE_MQTT": "{}",
        "OTHER": "1",
    }
    assert check_environment(environ) == []


def test_a_moved_setting_says_where_it_is_now(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[budget]\ndaily_audio_s = 3600\n")
    assert_config_error(roomtranslate("run", config=config), "budget", "room.daily_audio_s")


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[log]\nlevel = "debug"\n')
    assert load_settings(str(path)).log.level == "DEBUG"
    path.write_text('[log]\nlevel = "verbose"\n')
    assert_config_error(roomtranslate("devices", "--config", str(path)), "log.level = 'VERBOSE'")
