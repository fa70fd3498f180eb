"""Configuration layers of the room settings and their validation.

The effective room settings are the `[room]` section of the configuration file with three
layers of overrides on top, lowest first: `fleet` < `site` < `room`. Each layer is a
mapping of room keys to JSON values. A change to any layer is validated by building the
whole stack and validating it with `RoomSettings` (the config file's own model, strict
types), so a voice that cannot speak the target is an error whichever key changed.

The keys that can be set remotely are the fields of `RoomSettings`: a field added to the
model is settable without touching this module.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from daemon.config import RoomSettings, Settings
from daemon.moved_keys import RENAMED_KEYS

Layer = Literal["file", "fleet", "site", "room"]
OVERRIDE_LAYERS: tuple[Layer, ...] = ("fleet", "site", "room")
MAX_PAYLOAD_BYTES = 16 * 1024
MAX_TRANSACTION_CHARS = 128
MAX_FIELD_CHARS = 64  # a key longer than this is shortened in an error's `field`
MAX_NUMBER_CHARS = 100  # a longer number in a payload is refused, not converted
RejectKind = Literal[
    "too_large",
    "not_utf8",
    "not_json",
    "bad_number",
    "not_object",
    "invalid",
    "rate_limited",
    "retained",
]
Transaction = str | int | float | None
Overrides = dict[str, Any]


def settable_keys() -> tuple[str, ...]:
    """The room settings that can be changed remotely: every field of `RoomSettings`."""
    return tuple(RoomSettings.model_fields)


def _boot_keys() -> frozenset[str]:
    """Names that exist in the configuration but need the file and a restart."""
    names: set[str] = set()
    for name, info in Settings.model_fields.items():
        if name == "room":
            continue
        names.add(name)
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            names.update(section.model_fields)
            names.update(f"{name}.{key}" for key in section.model_fields)
    names.update(key for _, key in RENAMED_KEYS)
    names.update(f"{section}.{key}" for section, key in RENAMED_KEYS)
    return frozenset(names | {"api_key", "api.key"})  # the key lives outside the file


BOOT_KEYS = _boot_keys()


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field of a request."""

    field: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class Rejected(Exception):
    """A request or document that cannot be applied; nothing of it was."""

    def __init__(self, kind: RejectKind, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.kind = kind
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Request:
    """A readable `config/set` request or group document: keys to set or (None) clear,
    and the errors of the keys that cannot be set (their values are not looked at)."""

    changes: Mapping[str, Any]
    transaction: Transaction = None
    errors: tuple[FieldError, ...] = ()


class _BadNumber(ValueError):
    """A number in the payload that no setting can hold (the message says why)."""


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number (numbers must be finite)")


def _int(text: str) -> int:
    _check_length(text)
    return int(text)


def _float(text: str) -> float:
    _check_length(text)
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"{text} is out of range for a number")
    return value


def _check_length(text: str) -> None:
    if len(text) > MAX_NUMBER_CHARS:
        digits = sum(c.isdigit() for c in text)
        raise _BadNumber(
            f"a number of {digits} digits; at most {MAX_NUMBER_CHARS} characters per number"
        )


def read_json_object(payload: bytes) -> dict[str, Any]:
    """The payload as a JSON object; Rejected (too_large / not_utf8 / not_json / bad_number /
    not_object)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Rejected(
            "too_large",
            [FieldError("payload", f"{len(payload)} bytes; at most {MAX_PAYLOAD_BYTES} bytes")],
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("not_utf8", [FieldError("payload", "not UTF-8 text")]) from None
    try:
        data = json.loads(text, parse_constant=_no_constants, parse_int=_int, parse_float=_float)
    except _BadNumber as exc:
        raise Rejected("bad_number", [FieldError("payload", str(exc))]) from None
    except RecursionError:
        raise Rejected("not_json", [FieldError("payload", "not JSON: too deeply nested")]) from None
    except ValueError as exc:
        raise Rejected("not_json", [FieldError("payload", f"not JSON: {exc}")]) from None
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "null"
        raise Rejected(
            "not_object", [FieldError("payload", f"a JSON object is needed, not {kind}")]
        )
    return data


def transaction_of(data: Mapping[str, Any]) -> Transaction:
    """The request's transaction if it is one that can be echoed, else None."""
    value = data.get("transaction")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str) and len(value) > MAX_TRANSACTION_CHARS:
        return None
    return value


def parse_request(data: Mapping[str, Any]) -> Request:
    """Sort the keys of a JSON object: settable changes, and one error per other key."""
    errors: list[FieldError] = []
    settable = settable_keys()
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key == "transaction":
            if value is not None and transaction_of(data) is None:
                errors.append(
                    FieldError(
                        "transaction",
                        f"a string (at most {MAX_TRANSACTION_CHARS} characters) or a number",
                    )
                )
        elif key in settable:
            changes[key] = value
        elif key in BOOT_KEYS or key.removeprefix("room.") in BOOT_KEYS:
            errors.append(
                FieldError(
                    _short(key),
                    "not remotely settable: only the room settings can be changed over MQTT "
                    f"({', '.join(settable)}); this one needs the configuration file",
                )
            )
        else:
            errors.append(
                FieldError(_short(key), f"unknown setting; settable: {', '.join(settable)}")
            )
    return Request(changes, transaction_of(data), tuple(errors))


def _short(key: str) -> str:
    return key if len(key) <= MAX_FIELD_CHARS else key[:MAX_FIELD_CHARS] + "…"


@dataclass(frozen=True, slots=True)
class Stack:
    """The file's room settings and the three override layers (JSON values)."""

    file: RoomSettings
    fleet: Overrides = field(default_factory=dict)
    site: Overrides = field(default_factory=dict)
    room: Overrides = field(default_factory=dict)

    def layer(self, name: Layer) -> Overrides:
        match name:
            case "fleet":
                return self.fleet
            case "site":
                return self.site
            case "room":
                return self.room
            case "file":
                return self.file.model_dump(mode="json")

    def with_layer(self, name: Layer, overrides: Overrides) -> Stack:
        match name:
            case "fleet":
                return Stack(self.file, dict(overrides), self.site, self.room)
            case "site":
                return Stack(self.file, self.fleet, dict(overrides), self.room)
            case "room":
                return Stack(self.file, self.fleet, self.site, dict(overrides))
            case "file":
                raise ValueError("the file layer is not changed remotely")

    def merged(self) -> dict[str, Any]:
        return {**self.file.model_dump(mode="json"), **self.fleet, **self.site, **self.room}

    def sources(self) -> dict[str, Layer]:
        """For each key, the layer its effective value comes from."""
        found: dict[str, Layer] = {}
        for key in settable_keys():
            found[key] = "file"
            for name in OVERRIDE_LAYERS:
                if key in self.layer(name):
                    found[key] = name
        return found

    def validate(self, errors: Sequence[FieldError] = ()) -> RoomSettings:
        """The effective settings; Rejected("invalid") with one error per bad field,
        `errors` (found before, e.g. unknown keys) first."""
        try:
            effective = RoomSettings.model_validate_json(json.dumps(self.merged()), strict=True)
        except ValidationError as exc:
            raise Rejected("invalid", [*errors, *describe(exc)]) from None
        if errors:
            raise Rejected("invalid", list(errors))
        return effective


def apply_request(overrides: Mapping[str, Any], changes: Mapping[str, Any]) -> Overrides:
    """A layer with `changes` applied: a None value removes the key."""
    result = dict(overrides)
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def describe(exc: ValidationError) -> list[FieldError]:
    """One FieldError per pydantic error; model-level errors go to the field they name."""
    errors: list[FieldError] = []
    for err in exc.errors():
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        loc = [str(part) for part in err.get("loc", ())]
        name = ".".join(loc) if loc else _named_field(message)
        errors.append(FieldError(f"room.{name}" if name else "room", message))
    return errors


def _named_field(message: str) -> str:
    """The room field a model-level message is about: the first one it mentions."""
    found = [
        (match.start(), key)
        for key in settable_keys()
        if (match := re.search(rf"\b{re.escape(key)}\b", message))
    ]
    return min(found)[1] if found else ""
