"""Configuration: one typed settings model, loaded from defaults < TOML file < environment.

Boot settings (devices, service URL, broker, ...) need a restart. Room settings
(`[room]`: languages, voice, speech, volume, mute, VAD sensitivity) live in a
`LiveRoom` holder that the pipeline reads per utterance, so they can be swapped while
running.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import threading
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from daemon import moved_keys
from daemon.identity import default_room_id
from daemon.languages import LANGUAGES, check_voice

DEFAULT_CONFIG_PATH = Path("/etc/roomtranslate/config.toml")
DEFAULT_STATE_DIR = Path("/var/lib/roomtranslate")
BEIJING_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
SINGAPORE_URL = "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"
EX_CONFIG = 78  # sysexits.h EX_CONFIG
_SECRET_FIELDS = frozenset({"password", "api_key", "key"})
ENV_PREFIX = "ROOMTRANSLATE_"
# ROOMTRANSLATE_* variables that are not settings: the config path, and the recordings
# directory and demo flag read by the tests and scripts.
OTHER_ENV_VARIABLES = frozenset({"CONFIG", "AUDIO_DIR", "DEMO"})


def _check_http_url(value: str) -> str:
    """`value` if it is an absolute http(s) URL with a host, else ValueError."""
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


def _check_file(value: Path | None) -> Path | None:
    """`value` if it is None or names a readable file, else ValueError."""
    if value is None:
        return None
    if not value.is_file():
        raise ValueError("no such file")
    if not os.access(value, os.R_OK):
        raise ValueError("file is not readable by this user")
    return value


# Each caption language costs one request per utterance (the service allows 100 a minute).
MAX_CAPTION_LANGS = 4
# A smaller daily budget than this would pause the room at its first clip.
MIN_DAILY_AUDIO_S = 1.0
MAX_ACCOUNT_CHARS = 64
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoomSettings(_Section):
    """What a room changes while running; read per utterance from `LiveRoom`."""

    target_lang: str = "en"
    source_lang: str = "auto"
    voice: str = "Cherry"
    speech: bool = True
    volume: int = Field(default=80, ge=0, le=100)
    mute: bool = False
    vad_mode: int = Field(default=2, ge=0, le=3)
    # Languages captioned (text only) in addition to target_lang, each on its own topic.
    caption_langs: list[str] = Field(default_factory=list, max_length=MAX_CAPTION_LANGS)
    # Seconds of input audio the service may bill per local day, 0 = unlimited (budget.py).
    daily_audio_s: float = Field(default=0.0, ge=0.0, le=86400.0)
    # The service account the room shares with the other rooms of it on the broker
    # ("" = none: the room paces itself alone); daemon/fleet/.
    account: str = Field(default="", max_length=MAX_ACCOUNT_CHARS)

    @field_validator("account")
    @classmethod
    def _check_account(cls, value: str) -> str:
        if value and not ACCOUNT_NAME.fullmatch(value):
            raise ValueError(
                "account must be letters, digits, '-', '_' or '.' (it is a topic level), "
                f"not {value!r}"
            )
        return value

    @field_validator("daily_audio_s")
    @classmethod
    def _check_daily_audio(cls, value: float) -> float:
        if 0.0 < value < MIN_DAILY_AUDIO_S:
            raise ValueError(
                f"daily_audio_s must be 0 (unlimited) or at least {MIN_DAILY_AUDIO_S:g} s, "
                f"not {value:g}"
            )
        return value

    @model_validator(mode="after")
    def _check_languages(self) -> RoomSettings:
        if self.target_lang not in LANGUAGES:
            raise ValueError(
                f"target_lang {self.target_lang!r} is not a supported language; "
                f"one of: {', '.join(sorted(LANGUAGES))}"
            )
        if self.source_lang != "auto" and self.source_lang not in LANGUAGES:
            raise ValueError(
                f"source_lang {self.source_lang!r} is not a supported language; "
                f"'auto' or one of: {', '.join(sorted(LANGUAGES))}"
            )
        problem = check_voice(self.voice, self.target_lang)
        if problem is not None and self.speech:
            raise ValueError(problem)
        _check_caption_langs(self.caption_langs, self.target_lang)
        return self

    @property
    def source(self) -> str | None:
        """The source language to send, None for auto-detection."""
        return None if self.source_lang == "auto" else self.source_lang


def _check_caption_langs(langs: list[str], target: str) -> None:
    for lang in langs:
        if lang not in LANGUAGES:
            raise ValueError(
                f"caption_langs: {lang!r} is not a supported language; "
                f"one of: {', '.join(sorted(LANGUAGES))}"
            )
        if lang == target:
            raise ValueError(f"caption_langs: {lang!r} is the target_lang (captioned already)")
    if len(set(langs)) != len(langs):
        raise ValueError(f"caption_langs: a language is listed twice: {list(langs)}")


class SegmenterSettings(_Section):
    frame_ms: Literal[10, 20, 30] = 30
    pre_roll_ms: int = Field(default=300, ge=0, le=2000)
    start_window_ms: int = Field(default=240, ge=30, le=2000)
    start_ratio: float = Field(default=0.6, gt=0.0, le=1.0)
    hangover_ms: int = Field(default=600, ge=60, le=5000)
    split_pause_ms: int = Field(default=200, ge=60, le=5000)
    split_after_s: float = Field(default=5.0, ge=0.0, le=60.0)
    split_rest_ms: int = Field(default=300, ge=30, le=5000)
    post_roll_ms: int = Field(default=150, ge=0, le=2000)
    min_speech_ms: int = Field(default=250, ge=0, le=5000)
    max_utterance_s: float = Field(default=15.0, ge=2.0, le=60.0)
    split_search_s: float = Field(default=2.0, ge=0.2, le=10.0)
    energy_floor_dbfs: float = Field(default=-65.0, ge=-100.0, le=0.0)
    noise_margin_db: float = Field(default=3.0, ge=0.0, le=40.0)
    noise_window_s: float = Field(default=2.0, ge=0.1, le=60.0)
    detector: Literal["webrtc", "earshot", "silero"] = "webrtc"
    earshot_threshold: float = Field(default=0.5, ge=0.05, le=0.95)
    silero_threshold: float = Field(default=0.5, ge=0.05, le=0.95)
    confirm: Literal["silero", "off"] = "silero"
    confirm_speech_ms: int = Field(default=300, ge=0, le=5000)
    highpass_hz: float = Field(default=100.0, ge=0.0, le=300.0)

    @model_validator(mode="after")
    def _check_split(self) -> SegmenterSettings:
        if self.split_search_s >= self.max_utterance_s:
            raise ValueError("split_search_s must be shorter than max_utterance_s")
        return self


class ApiSettings(_Section):
    base_url: str = BEIJING_URL
    model: str = "qwen3-livetranslate-flash"
    key_file: Path | None = None
    upload_format: Literal["wav", "flac"] = "wav"
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=15.0, gt=0)
    request_timeout_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=10)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=8.0, ge=0)
    retry_after_max_s: float = Field(default=30.0, ge=0)
    fatal_pause_s: float = Field(default=60.0, ge=0)
    speech_rate: float | None = Field(default=None, ge=0.5, le=2.0)
    requests_per_minute: int = Field(default=100, ge=1, le=100_000)
    tokens_per_minute: int = Field(default=100_000, ge=100, le=100_000_000)
    check_key_at_start: bool = True

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        return _check_http_url(value)

    @model_validator(mode="after")
    def _check_backoff(self) -> ApiSettings:
        if self.backoff_base_s > self.backoff_max_s:
            raise ValueError("backoff_base_s must not be greater than backoff_max_s")
        return self


class PipelineSettings(_Section):
    max_in_flight: int = Field(default=2, ge=1, le=8)
    queue_size: int = Field(default=4, ge=1, le=64)
    drop_policy: Literal["oldest", "newest"] = "oldest"


class AudioSettings(_Section):
    profile: str = "auto"
    profiles_dir: Path | None = None
    input_device: str = ""
    output_device: str = ""
    ring_seconds: float = Field(default=30.0, ge=1.0, le=600.0)
    echo_guard: Literal["auto", "aec", "gate", "off"] = "auto"
    echo_tail_ms: int = Field(default=300, ge=0, le=5000)
    duck_db: float = Field(default=10.0, ge=0.0, le=40.0)
    max_playback_backlog_s: float = Field(default=20.0, ge=1.0, le=600.0)
    max_playback_rate: float = Field(default=1.4, ge=1.0, le=2.0)  # 1.0: never faster
    stop_cap_s: float = Field(default=5.0, ge=0.0, le=60.0)
    ready_timeout_s: float = Field(default=10.0, ge=0.0, le=300.0)
    no_input_restart_s: float = Field(default=120.0, ge=0.0)


def _topic_level(value: str) -> str:
    if any(c in value for c in "+#/\0"):
        raise ValueError("must be one topic level, without + # /")
    return value


TopicLevel = Annotated[str, AfterValidator(_topic_level)]


class MqttSettings(_Section):
    """The broker connection and the room's place on it (`<prefix>/<room_id>/...`)."""

    enabled: bool = True
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str = ""
    username: str = ""
    password: SecretStr = SecretStr("")
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    prefix: TopicLevel = Field(default="roomtranslate", min_length=1)
    room_id: TopicLevel = ""  # "" = the hostname, filled in by `load_settings` (`with_room_id`)
    device_id: TopicLevel = ""  # "" = derived from /etc/machine-id (identity.device_id)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    outbox_size: int = Field(default=200, ge=1, le=100_000)
    status_interval_s: float = Field(default=30.0, ge=1.0)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _check_tls_file(cls, value: Path | None) -> Path | None:
        return _check_file(value)

    @model_validator(mode="after")
    def _check_pairs(self) -> MqttSettings:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not be greater than reconnect_max_s")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file is set but cert_file is not")
        return self


class CaptionSettings(_Section):
    """The retained `captions/<lang>/recent` documents for displays that join late."""

    recent: int = Field(default=6, ge=0, le=100)
    recent_clear_s: float = Field(default=600.0, gt=0)


class RemoteConfigSettings(_Section):
    """Room settings changed over MQTT (daemon/control/): the site layer, the rate limit."""

    site: TopicLevel = ""  # "" = no site layer
    changes_per_s: float = Field(default=5.0, gt=0, le=1000)


class HomeAssistantSettings(_Section):
    """Home Assistant MQTT discovery (daemon/control/homeassistant.py)."""

    discovery: bool = True
    discovery_prefix: TopicLevel = Field(default="homeassistant", min_length=1)


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    room: RoomSettings = RoomSettings()
    segmenter: SegmenterSettings = SegmenterSettings()
    api: ApiSettings = ApiSettings()
    pipeline: PipelineSettings = PipelineSettings()
    audio: AudioSettings = AudioSettings()
    mqtt: MqttSettings = MqttSettings()
    captions: CaptionSettings = CaptionSettings()
    remote_config: RemoteConfigSettings = RemoteConfigSettings()
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()
    log: LogSettings = LogSettings()
    state_dir: Path = DEFAULT_STATE_DIR

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment overrides it. Each source
        # has its renamed keys moved on its own, so the environment still wins.
        return (moved_keys.RenamingSource(env_settings), moved_keys.RenamingSource(init_settings))


class ConfigError(Exception):
    """A configuration that cannot be used; `lines` holds one readable line per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def config_path(cli_path: str | None, environ: Mapping[str, str]) -> Path | None:
    """--config, else ROOMTRANSLATE_CONFIG, else /etc/roomtranslate/config.toml if present."""
    if cli_path:
        return Path(cli_path)
    if environ.get("ROOMTRANSLATE_CONFIG"):
        return Path(environ["ROOMTRANSLATE_CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such configuration file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None


def _is_section(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _setting_names() -> dict[str, set[str]]:
    """Section name → its keys (renamed ones too), upper case as the environment has them."""
    names = {
        section.upper(): {key.upper() for key in info.annotation.model_fields}  # type: ignore[union-attr]
        for section, info in Settings.model_fields.items()
        if _is_section(info.annotation)
    }
    for section, key in moved_keys.RENAMED_KEYS:
        names[section.upper()].add(key.upper())
    return names


def _top_level_names() -> set[str]:
    """Settings outside any section (`state_dir`), upper case."""
    return {
        name.upper()
        for name, info in Settings.model_fields.items()
        if not _is_section(info.annotation)
    }


def check_environment(environ: Mapping[str, str]) -> list[str]:
    """One line per `ROOMTRANSLATE_*` variable that names no setting or holds bad JSON.

    Values are never echoed (a variable may hold a secret).
    """
    sections = _setting_names()
    top_level = _top_level_names()
    renamed = {f"{ENV_PREFIX}{s}__{k}".upper() for s, k in moved_keys.RENAMED_KEYS}
    valid = [f"{ENV_PREFIX}{s}__{k}" for s, keys in sections.items() for k in keys]
    valid = [name for name in valid if name not in renamed]
    valid += [f"{ENV_PREFIX}{name}" for name in (*sections, *top_level, *OTHER_ENV_VARIABLES)]
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        rest = upper.removeprefix(ENV_PREFIX)
        section, _, key = rest.partition("__")
        if rest in OTHER_ENV_VARIABLES or rest in top_level:
            continue
        if rest in sections:
            try:
                json.loads(environ[name])
            except json.JSONDecodeError as exc:
                problems.append(f"environment {name}: not a JSON object ({exc.msg})")
            continue
        if section in sections and key in sections[section]:
            continue
        close = difflib.get_close_matches(upper, valid, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"environment {name}: no such setting{hint}")
    return problems


def _describe(error: Mapping[str, Any], section: str) -> str:
    loc = (
        ".".join(
            [section, *(str(part) for part in error.get("loc", ()))]
            if section
            else [str(part) for part in error.get("loc", ())]
        )
        or "(config)"
    )
    msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        moved = moved_keys.MOVED_SETTINGS.get(loc)
        return f"{loc}: {moved}" if moved else f"{loc}: unknown setting"
    if error.get("type") == "missing":
        return f"{loc}: required setting is missing"
    leaf = str(error["loc"][-1]) if error.get("loc") else ""
    if leaf in _SECRET_FIELDS:
        return f"{loc} = <hidden>: {msg}"
    value = error.get("input")
    if isinstance(value, dict):
        return f"{loc}: {msg}"
    return f"{loc} = {value!r}: {msg}"


def describe_validation_error(
    exc: ValidationError, where: str = "", section: str = ""
) -> list[str]:
    """One line per bad field: `where` dotted.path = value: reason (secrets hidden)."""
    return [where + _describe(err, section) for err in exc.errors()]


def load_settings(
    cli_path: str | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> Settings:
    """Load and validate the configuration; raise ConfigError with readable lines.

    Sources, lowest first: defaults < TOML file < environment (`ROOMTRANSLATE_SECTION__KEY`)
    < `overrides` (command-line options such as `--to`). The room id left empty is the
    hostname's (`with_room_id`).
    """
    path = config_path(cli_path, os.environ)
    data: dict[str, Any] = _read_toml(path) if path is not None else {}
    where = f"{path}: " if path is not None else ""
    problems = check_environment(os.environ)
    try:
        problems += moved_keys.check_renamed(Settings, data, where, ENV_PREFIX)
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(problems + describe_validation_error(exc, where)) from None
    except SettingsError as exc:  # a variable pydantic-settings could not parse
        raise ConfigError(problems or [f"environment: {exc}"]) from None
    if problems:
        raise ConfigError(problems)
    return with_room_id(apply_overrides(settings, overrides or {}), default_room_id())


def with_room_id(settings: Settings, default: str) -> Settings:
    """`settings` with `mqtt.room_id` set to `default` when it is empty."""
    if settings.mqtt.room_id:
        return settings
    mqtt = settings.mqtt.model_copy(update={"room_id": default})
    return settings.model_copy(update={"mqtt": mqtt})


def apply_overrides(settings: Settings, overrides: Mapping[str, Mapping[str, Any]]) -> Settings:
    """Settings with some keys of some sections replaced, each section validated again."""
    update: dict[str, BaseModel] = {}
    for section, values in overrides.items():
        current: BaseModel = getattr(settings, section)
        try:
            update[section] = type(current).model_validate({**current.model_dump(), **values})
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, section=section)) from None
    return settings.model_copy(update=update)


def check_api_key(key: str, where: str) -> str:
    """`key` without surrounding whitespace, or ConfigError saying (not showing) what is wrong:
    a key is one line of printable ASCII."""
    key = key.strip()
    if not key:
        raise ConfigError([f"{where}: the key is empty"])
    if any(c in key for c in "\r\n"):
        raise ConfigError([f"{where}: holds more than one line; put only the key in it"])
    if not key.isascii():
        raise ConfigError([f"{where}: the key has non-ASCII characters (a pasting error?)"])
    if not key.isprintable() or any(c.isspace() for c in key):
        raise ConfigError([f"{where}: the key has spaces or control characters"])
    return key


def resolve_api_key(settings: Settings, environ: Mapping[str, str] | None = None) -> str | None:
    """The API key from DASHSCOPE_API_KEY or `api.key_file`; never logged or echoed."""
    env = os.environ if environ is None else environ
    if env.get("DASHSCOPE_API_KEY", "").strip():
        return check_api_key(env["DASHSCOPE_API_KEY"], "DASHSCOPE_API_KEY")
    if settings.api.key_file is None:
        return None
    where = f"api.key_file = '{settings.api.key_file}'"
    try:
        raw = settings.api.key_file.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{where}: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{where}: not UTF-8 text"]) from None
    return check_api_key(text, where)


Listener = Callable[["RoomSettings"], None]


class LiveRoom:
    """The room settings of the running pipeline, swapped atomically.

    Readers take `current` once per utterance (or per frame for the VAD mode); a change
    applies from the next read on, without restarting anything.
    """

    def __init__(self, initial: RoomSettings) -> None:
        self._current = initial
        self._version = 0
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    @property
    def current(self) -> RoomSettings:
        return self._current

    @property
    def version(self) -> int:
        return self._version

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def update(self, **changes: Any) -> RoomSettings:
        """Validate the changed settings as a whole and swap them in; raises ConfigError."""
        with self._lock:
            merged = {**self._current.model_dump(), **changes}
            try:
                new = RoomSettings(**merged)
            except ValidationError as exc:
                raise ConfigError(describe_validation_error(exc, section="room")) from None
            self._current = new
            self._version += 1
        for listener in self._listeners:
            listener(new)
        return new
