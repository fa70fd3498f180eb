"""Who this device is: a stable per-device id and the default room id.

The device id keeps two devices apart on the broker (it is part of the MQTT client id
and of the retained `device` claim, see daemon/mqtt/claims.py). It is derived from
`/etc/machine-id` (or D-Bus's copy) the way `sd_id128_get_machine_app_specific()`
does it — an HMAC-SHA256 keyed by the machine id — so the machine id itself, which
systemd asks to keep confidential, never leaves the device. Without a machine id, a
random id is made once and kept in the state directory; if that cannot be written
either, the id is derived from the hostname and the MAC address (stable while they are).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path

from daemon.statefile import write_atomic

log = logging.getLogger(__name__)

MACHINE_ID_PATHS = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
DEVICE_ID_FILE = "device-id"
ID_LENGTH = 12  # hex digits
_APP_KEY = b"roomtranslate device id v1"
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")
_ID = re.compile(r"^[0-9a-f]{12}$")


def _app_specific(secret: str) -> str:
    digest = hmac.new(secret.encode("ascii"), _APP_KEY, hashlib.sha256).hexdigest()
    return digest[:ID_LENGTH]


def _machine_id(paths: Sequence[Path]) -> str | None:
    for path in paths:
        try:
            text = path.read_text(encoding="ascii").strip().lower()
        except (OSError, UnicodeDecodeError):
            continue
        if _MACHINE_ID.match(text) and text != "0" * 32:
            return text
    return None


def _stored_id(state_dir: Path) -> str | None:
    path = state_dir / DEVICE_ID_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        text = ""
    if _ID.match(text):
        return text
    made = secrets.token_hex(ID_LENGTH // 2)
    try:
        write_atomic(path, (made + "\n").encode("ascii"))
    except OSError as exc:
        log.warning("cannot keep a device id in %s: %s", path, exc.strerror or exc)
        return None
    return made


def device_id(state_dir: Path | None, machine_id_paths: Sequence[Path] = MACHINE_ID_PATHS) -> str:
    """This device's id: 12 hex digits, stable across restarts (see the module docstring)."""
    machine = _machine_id(machine_id_paths)
    if machine is not None:
        return _app_specific(machine)
    if state_dir is not None and (stored := _stored_id(state_dir)) is not None:
        return stored
    return _app_specific(f"{socket.gethostname()}-{uuid.getnode():012x}".encode().hex())


def default_room_id(hostname: str | None = None) -> str:
    """The room id when none is configured: the hostname as one MQTT topic level
    (its first label, lower case; characters other than letters, digits, `_` and `-`
    become `-`)."""
    name = (hostname if hostname is not None else socket.gethostname()).strip().lower()
    name = name.split(".")[0]  # the host, not its domain
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", name).strip("-")
    return cleaned or "room"
