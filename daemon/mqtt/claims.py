"""The room's `device` claim: which process serves the room, and who else does.

`<prefix>/<room_id>/device` holds a retained JSON claim `{"device_id", "host", "at",
"instance", "pid"}` of the process serving the room (`instance`: random, made per
process), published on every connect and again every `status_interval_s`. The link
subscribes to it:

- A claim with another device id (live, or retained and fresh) means a second device uses
  the same `room_id`; both devices see it, log it and report it (`other_devices()`) until
  no claim of the other was seen for `CLAIM_STALE_INTERVALS` status intervals. The client
  id carries the device id, so two devices never kick each other off the broker.
- Two processes of one device on one room (a stray `roomtranslate run` beside the
  service) share the client id: the broker drops one whenever the other connects. Each
  sees the other's claim (same device id, another instance, made after this process
  started) when it reconnects, logs it and reports it (`conflict()`); the link then takes
  turns instead of reconnecting at once.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from daemon.counters import Counters
from daemon.mqtt.client import encode_json

log = logging.getLogger(__name__)

# A claim not seen for this many status intervals is forgotten.
CLAIM_STALE_INTERVALS = 3


@dataclass(frozen=True, slots=True)
class Twin:
    """Another process with this device id: where it runs and its latest claim (wall time)."""

    host: str
    pid: int
    at: float


class Claims:
    """This process's claim and the claims of the others seen on the room's `device` topic."""

    def __init__(
        self,
        room: str,
        device_id: str,
        status_interval_s: float,
        counters: Counters,
        wall_clock: Callable[[], float],
    ) -> None:
        """`wall_clock` stamps the claims and judges their age."""
        self._room = room
        self._device_id = device_id
        self._stale_s = CLAIM_STALE_INTERVALS * status_interval_s
        self._counters = counters
        self._wall = wall_clock
        self._instance = secrets.token_hex(4)  # this process, in the claims
        self._started_at = wall_clock()
        self._others: dict[str, tuple[str, float]] = {}  # device id -> (host, last seen)
        self._twins: dict[str, Twin] = {}  # instance -> another process of this device

    @property
    def has_twins(self) -> bool:
        """Another process of this device was seen (conflict() not yet cleared)."""
        return bool(self._twins)

    def payload(self) -> bytes:
        """This process's claim, stamped now."""
        return encode_json(
            {
                "device_id": self._device_id,
                "host": socket.gethostname(),
                "at": self._wall(),
                "instance": self._instance,
                "pid": os.getpid(),
            }
        )

    def other_devices(self) -> dict[str, str]:
        """Other devices seen claiming this room recently: device id -> host."""
        now = time.monotonic()
        for device, (host, seen) in list(self._others.items()):
            if now - seen > self._stale_s:
                del self._others[device]
                log.info("device %s (%s) no longer claims room %r", device, host, self._room)
        return {device: host for device, (host, _) in self._others.items()}

    def conflict(self, client_id: str) -> str | None:
        """Why another process of this device on this room keeps taking the connection
        `client_id` (see the module docstring), None when there is none."""
        for instance, twin in list(self._twins.items()):
            if self._wall() - twin.at > self._stale_s:
                del self._twins[instance]
                log.info(
                    "the other process (pid %d on %s) no longer claims room %r",
                    twin.pid,
                    twin.host,
                    self._room,
                )
        if not self._twins:
            return None
        who = ", ".join(f"pid {t.pid} on {t.host}" for t in self._twins.values())
        return (
            f"another roomtranslate process ({who}) serves room_id {self._room!r} with this "
            f"device id: both use the MQTT client id {client_id!r}, so the broker "
            "disconnects one whenever the other connects; stop one of them, or give each "
            "its own device_id and room_id"
        )

    def receive(self, payload: bytes, retained: bool, client_id: str) -> None:
        """A claim read from the room's `device` topic (`retained`: stored by the broker)."""
        try:
            claim = json.loads(payload)
            device, host, at = str(claim["device_id"]), str(claim["host"]), float(claim["at"])
            instance, pid = str(claim.get("instance", "")), int(claim.get("pid", 0))
        except (ValueError, KeyError, TypeError):
            self._counters.add("mqtt_bad_claims")
            return
        if device == self._device_id:
            if instance and instance != self._instance and at > self._started_at:
                self._on_twin(instance, Twin(host, pid, at), client_id)
            return  # else this process's own claim, or one of an earlier run of it
        if retained and abs(self._wall() - at) > self._stale_s:
            return  # an old claim: that device is gone (or was replaced by this one)
        if device not in self._others:
            log.warning(
                "another device (%s, id %s) also uses room_id %r: give each room its own",
                host,
                device,
                self._room,
            )
        self._others[device] = (host, time.monotonic())

    def _on_twin(self, instance: str, twin: Twin, client_id: str) -> None:
        """A claim of another process with this device id, made while this one runs."""
        new = instance not in self._twins
        self._twins[instance] = twin
        if new:
            log.warning("%s", self.conflict(client_id))
