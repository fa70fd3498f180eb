"""`roomtranslate fleet`: the rooms on the broker, from the retained topics alone.

It reads the retained `<prefix>/+/availability`, `<prefix>/+/status` and the account
records `<prefix>/_account/+/+` for `--wait` seconds and prints a line per room — its
state (or `offline`) and problems, its account, its share, what it sent and asked for a
minute, what fraction of its speech the account can take, what it shed and its 429s —
and a line per account. `--json` prints the same as one JSON document.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from daemon.config import MqttSettings
from daemon.fleet.record import Record, read_record
from daemon.mqtt.client import broker_client

EX_UNAVAILABLE = 69
MAX_STATUS_BYTES = 256 * 1024


@dataclass
class RoomView:
    """What the broker holds of one room."""

    room_id: str
    online: bool | None = None  # None: no availability retained
    status: dict[str, Any] = field(default_factory=dict)
    account: str = ""
    record: Record | None = None

    def state(self) -> str:
        if self.online is False:
            return "offline"
        return str(self.status.get("state", "no status"))

    def as_json(self) -> dict[str, Any]:
        problems = self.status.get("problems")
        return {
            "room_id": self.room_id,
            "state": self.state(),
            "problems": sorted(problems) if isinstance(problems, dict) else [],
            "account": self.account,
            "record": self.record.model_dump() if self.record is not None else None,
        }


@dataclass
class FleetView:
    """Everything read: the rooms, and what could not be read."""

    rooms: dict[str, RoomView] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    def room(self, room_id: str) -> RoomView:
        return self.rooms.setdefault(room_id, RoomView(room_id))

    def take(self, prefix: str, topic: str, payload: bytes) -> None:
        """One retained message (an empty payload is no message)."""
        parts = topic.removeprefix(prefix + "/").split("/")
        if not payload:
            return
        if len(parts) == 3 and parts[0] == "_account":
            self._record(parts[1], parts[2], payload, topic)
        elif len(parts) == 2 and parts[1] == "availability":
            self.room(parts[0]).online = payload == b"online"
        elif len(parts) == 2 and parts[1] == "status" and not parts[0].startswith("_"):
            self._status(parts[0], payload, topic)

    def _record(self, account: str, room_id: str, payload: bytes, topic: str) -> None:
        try:
            record = read_record(payload)
        except ValueError as exc:
            self.unreadable.append(f"{topic}: {exc}")
            return
        view = self.room(room_id)
        view.account, view.record = account, record

    def _status(self, room_id: str, payload: bytes, topic: str) -> None:
        try:
            status = json.loads(payload[:MAX_STATUS_BYTES])
        except (ValueError, RecursionError):
            status = None
        if not isinstance(status, dict):
            self.unreadable.append(f"{topic}: not a JSON object")
            return
        self.room(room_id).status = status

    def accounts(self) -> dict[str, dict[str, Any]]:
        """Per account: its rooms and their sums."""
        found: dict[str, dict[str, Any]] = {}
        for view in self.rooms.values():
            if view.record is None:
                continue
            r = view.record
            total = found.setdefault(
                view.account,
                {"rooms": 0, "limit": r.limits.requests, "sent": 0.0, "asked": 0.0, "rejected": 0},
            )
            total["rooms"] += 1
            total["limit"] = min(total["limit"], r.limits.requests)
            total["sent"] += r.sent.requests
            total["asked"] += r.demand.speech.requests + r.demand.extra.requests
            total["rejected"] += r.rejected
        return found


async def collect(settings: MqttSettings, wait_s: float) -> FleetView:
    """The retained messages the broker holds now (MqttError when it cannot be reached)."""
    view = FleetView()
    prefix = settings.prefix
    client = broker_client(settings, None, keepalive=30, timeout=5.0)
    async with client:
        for topic in (f"{prefix}/+/availability", f"{prefix}/+/status", f"{prefix}/_account/+/+"):
            await client.subscribe(topic, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                async for message in client.messages:
                    if message.retain and isinstance(message.payload, bytes | bytearray):
                        view.take(prefix, message.topic.value, bytes(message.payload))
    return view


COLUMNS = (
    "ROOM",
    "STATE",
    "ACCOUNT",
    "SHARE/MIN",
    "SENT/MIN",
    "ASKED/MIN",
    "SPEECH",
    "SHED S/X",
    "429",
)


def format_view(view: FleetView) -> str:
    """The table (module docstring), its columns as wide as their cells."""
    table = [list(COLUMNS), *(_cells(view.rooms[room]) for room in sorted(view.rooms))]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    for account, total in sorted(view.accounts().items()):
        lines.append(
            f"account {account}: {total['rooms']} room(s) on a limit of "
            f"{total['limit']:g} requests a minute; sent {total['sent']:g}, asked for "
            f"{total['asked']:.1f}, 429s {total['rejected']} in the last minute"
        )
    lines += [f"unreadable: {line}" for line in view.unreadable]
    return "\n".join(lines) + "\n"


def _cells(room: RoomView) -> list[str]:
    state = room.state()
    problems = room.status.get("problems")
    if isinstance(problems, dict) and problems and state != "offline":
        state += f" ({', '.join(sorted(problems))})"
    cells = [room.room_id, state, room.account or "-"]
    r = room.record
    if r is None:
        return cells + ["-"] * 6
    asked = r.demand.speech.requests + r.demand.extra.requests
    return [
        *cells,
        f"{r.share.requests:.1f}",
        f"{r.sent.requests:g}",
        f"{asked:.1f}",
        f"{r.share.speech_fraction:.0%}",
        f"{r.shed.speech}/{r.shed.extra}",
        str(r.rejected),
    ]


def show_fleet(settings: MqttSettings, wait_s: float, as_json: bool) -> tuple[int, str]:
    """(exit status, what to print)."""
    try:
        view = asyncio.run(collect(settings, wait_s))
    except aiomqtt.MqttError as exc:
        return EX_UNAVAILABLE, f"cannot reach the broker {settings.host}:{settings.port}: {exc}\n"
    if as_json:
        document = {
            "rooms": [view.rooms[r].as_json() for r in sorted(view.rooms)],
            "accounts": view.accounts(),
            "unreadable": view.unreadable,
        }
        return 0, json.dumps(document, indent=2) + "\n"
    return 0, format_view(view)
