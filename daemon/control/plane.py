"""The control plane: remote configuration of the room over MQTT.

Topics (`base` = `<prefix>/<room_id>`):

- `base/config/set` in: a JSON object of room keys (null = remove this room's override)
  and an optional `transaction`; answered on `base/config/response` (QoS 1, not
  retained) with `status` ok/error, one error per bad field and the effective settings.
- `<prefix>/_fleet/config`, `<prefix>/_site/<site>/config` in (retained, from whoever
  manages the fleet): the fleet and site layers. An invalid document is rejected as a
  whole (status `problems`, a `config/response` with transaction "fleet"/"site"); the last
  valid one stays. An empty payload (the retained document deleted) clears the layer.
- `base/config` out (retained): the effective settings, `version` and each key's layer.
  Also read: the retained one the broker holds at connect has a higher `version` when
  changes of an earlier run could not be saved (a read-only state directory) or another
  device shares the room_id; the version then continues above it (the same settings keep
  that version), so it never goes back.
- `<discovery_prefix>/status` in (`[homeassistant]`): `online` re-publishes the discovery
  document.

Messages are handled one at a time by `run()`, so nothing that arrives can stall the event
loop or the other stages. Each fleet, site and Home Assistant document waits in its
topic's slot, where a newer one replaces it (`config.superseded`): a flood of requests
never pushes one out, and they are handled before the waiting requests. Requests wait in a
bounded queue (`QUEUE_LIMIT`; the excess is counted as `config.dropped_queue_full`).
A change is applied to `LiveRoom` at once (the pipeline and playback follow it), then the
room layer is saved (in a thread), then `config` and the answer go out: "ok" means it is
on disk.
At most `remote_config.changes_per_s` changes are applied per second; excess requests are
rejected with that reason. Every message is answered or counted (`config.*` counters).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from daemon.config import LiveRoom, RoomSettings, Settings
from daemon.control.homeassistant import discovery_document, discovery_topic
from daemon.control.layers import (
    FieldError,
    Layer,
    Rejected,
    Stack,
    Transaction,
    apply_request,
    parse_request,
    read_json_object,
    transaction_of,
)
from daemon.control.state import SavedState, StateFile
from daemon.counters import Counters

log = logging.getLogger(__name__)

QUEUE_LIMIT = 128  # incoming control messages waiting to be handled
MAX_ERRORS = 20  # errors listed in one response
PROBLEM_ERRORS = 3  # errors quoted in a status problem
PROBLEM_CHARS = 300

ProblemReporter = Callable[[str, str | None], None]


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None: ...


def encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Topics:
    """The control plane's topics for one room."""

    base: str
    set: str
    response: str
    config: str
    fleet: str
    site: str | None
    ha_status: str | None
    ha_discovery: str | None

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        mqtt, site, ha = settings.mqtt, settings.remote_config.site, settings.homeassistant
        base = f"{mqtt.prefix}/{mqtt.room_id}"
        return cls(
            base=base,
            set=f"{base}/config/set",
            response=f"{base}/config/response",
            config=f"{base}/config",
            fleet=f"{mqtt.prefix}/_fleet/config",
            site=f"{mqtt.prefix}/_site/{site}/config" if site else None,
            ha_status=f"{ha.discovery_prefix}/status" if ha.discovery else None,
            ha_discovery=discovery_topic(ha.discovery_prefix, mqtt.room_id)
            if ha.discovery
            else None,
        )

    @property
    def subscriptions(self) -> list[str]:
        """`config` first: its retained document arrives before the other subscriptions
        are made, so before the link sends this run's."""
        topics = (self.config, self.set, self.fleet, self.site, self.ha_status)
        return [t for t in topics if t is not None]


class TokenBucket:
    """At most `rate` takes per second on average, bursts of up to max(1, rate)."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._clock = clock
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class ControlPlane:
    """Layers, validation, persistence and Home Assistant discovery of the room settings.

    Created before the broker is reached: the saved room layer is applied to `room` in
    the constructor. `attach()` gives it the MQTT link; `receive` is the link's
    `on_message`; `run()` is its task.
    """

    def __init__(
        self,
        settings: Settings,
        room: LiveRoom,
        counters: Counters,
        report: ProblemReporter,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.topics = Topics.of(settings)
        self._room_id = settings.mqtt.room_id
        self._rate = settings.remote_config.changes_per_s
        self._room = room
        self._counters = counters
        self._report = report
        self._store = StateFile(settings.state_dir)
        self._stack = Stack(settings.room)
        self._version = 0
        self._queue: deque[tuple[str, bytes, bool]] = deque()  # requests, oldest first
        self._slots: dict[str, tuple[bytes, bool]] = {}  # group topic -> newest document
        self._wake = asyncio.Event()
        self._bucket = TokenBucket(self._rate, clock or time.monotonic)
        self._publisher: Publisher | None = None
        self._device_id = ""
        self._restore()

    # -- public ---------------------------------------------------------------------------

    @property
    def subscriptions(self) -> list[str]:
        return self.topics.subscriptions

    @property
    def version(self) -> int:
        return self._version

    @property
    def stack(self) -> Stack:
        return self._stack

    def attach(self, publisher: Publisher, *, device_id: str = "") -> None:
        """Publish through `publisher` from now on: the retained config and discovery
        (`device_id`, the physical device, becomes the Home Assistant serial number)."""
        self._publisher = publisher
        self._device_id = device_id
        self._publish_config()
        self._publish_discovery()

    def receive(self, topic: str, payload: bytes, retained: bool) -> None:
        """The MQTT link's `on_message`: keep the message for `run()` (never blocks)."""
        if topic == self.topics.config:
            if retained:
                self._resume_version(payload)
            return  # else this run's own document (or another device's) coming back
        if topic in (self.topics.fleet, self.topics.site, self.topics.ha_status):
            if self._slots.pop(topic, None) is not None:
                self._counters.add("config.superseded")
            self._slots[topic] = (payload, retained)
        elif len(self._queue) >= QUEUE_LIMIT:
            self._counters.add("config.dropped_queue_full")
            return
        else:
            self._queue.append((topic, payload, retained))
        self._wake.set()

    async def run(self) -> None:
        """Handle the waiting messages, one at a time, forever."""
        while True:
            self._wake.clear()
            while (message := self._next()) is not None:
                topic, payload, retained = message
                try:
                    await self._handle(topic, payload, retained)
                except Exception:
                    self._counters.add("config.handler_errors")
                    log.exception("remote configuration: handling a message on %s failed", topic)
                await asyncio.sleep(0)  # a burst never holds the loop for long
            await self._wake.wait()

    def _next(self) -> tuple[str, bytes, bool] | None:
        """The oldest group document waiting, else the oldest request."""
        if self._slots:
            topic = next(iter(self._slots))
            return (topic, *self._slots.pop(topic))
        return self._queue.popleft() if self._queue else None

    # -- start ----------------------------------------------------------------------------

    def _restore(self) -> None:
        """Apply the saved room layer, before the broker is reached."""
        loaded = self._store.load()
        if loaded.problem:
            self._counters.add("config.state_unusable")
            self._report("config.state", loaded.problem)
            return
        self._version = loaded.state.version
        if not loaded.state.room:
            return
        try:
            request = parse_request(loaded.state.room)
            stack = self._stack.with_layer("room", apply_request({}, request.changes))
            effective = stack.validate(request.errors)
        except Rejected as exc:
            self._counters.add("config.state_unusable")
            self._report("config.state", self._store.set_aside(_summary(exc.errors)))
            return
        self._stack = stack
        self._room.update(**effective.model_dump())
        log.info(
            "remote configuration: room settings restored from %s (version %d): %s",
            self._store.path,
            self._version,
            _changes(stack.room),
        )

    def _resume_version(self, payload: bytes) -> None:
        """The broker's retained config: continue above its version (module docstring)."""
        try:
            found = read_json_object(payload)
        except Rejected:
            return
        version = found.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version <= self._version:
            return
        same = found == {**self._config_document(), "version": version}
        log.info(
            "remote configuration: the broker holds version %d of this room's config "
            "(unsaved changes of an earlier run, or another device); continuing at %d",
            version,
            version if same else version + 1,
        )
        self._counters.add("config.version_resumed")
        self._version = version if same else version + 1
        self._publish_config()

    # -- handling -------------------------------------------------------------------------

    async def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic == self.topics.set:
            await self._handle_set(payload, retained)
        elif topic == self.topics.fleet:
            await self._handle_group("fleet", payload)
        elif topic == self.topics.site:
            await self._handle_group("site", payload)
        elif topic == self.topics.ha_status:
            self._handle_ha_status(payload)
        else:
            self._counters.add("config.unexpected_topic")

    async def _handle_set(self, payload: bytes, retained: bool) -> None:
        transaction: Transaction = None
        try:
            if retained:
                raise Rejected("retained", [_RETAINED])
            data = read_json_object(payload)
            transaction = transaction_of(data)
            request = parse_request(data)
            stack = self._stack.with_layer("room", apply_request(self._stack.room, request.changes))
            effective = stack.validate(request.errors)
            changed = stack != self._stack
            if changed and not self._bucket.take():
                raise Rejected("rate_limited", [self._rate_error()])
        except Rejected as exc:
            self._counters.add(f"config.rejected.{exc.kind}")
            log.debug("remote configuration rejected (%s): %s", exc.kind, exc)
            self._respond(transaction, exc.errors)
            return
        saved = True
        if changed:
            saved = await self._commit(stack, effective, "room")
        else:
            self._counters.add("config.unchanged")
        self._respond(transaction, [], saved=saved)

    async def _handle_group(self, layer: Layer, payload: bytes) -> None:
        try:
            overrides: dict[str, Any] = {}
            errors: tuple[FieldError, ...] = ()
            if payload:  # empty: the retained document was deleted, the layer goes
                request = parse_request(read_json_object(payload))
                overrides = {k: v for k, v in request.changes.items() if v is not None}
                errors = request.errors
            stack = self._stack.with_layer(layer, overrides)
            effective = stack.validate(errors)
        except Rejected as exc:
            self._counters.add(f"config.{layer}_rejected")
            self._report(
                f"config.{layer}",
                f"{layer} configuration rejected ({_summary(exc.errors)}); "
                "the last valid one stays in force",
            )
            self._respond(layer, exc.errors)
            return
        self._report(f"config.{layer}", None)
        if stack == self._stack:
            self._counters.add(f"config.{layer}_unchanged")
            return
        self._counters.add(f"config.{layer}_applied")
        await self._commit(stack, effective, layer)

    def _handle_ha_status(self, payload: bytes) -> None:
        if payload.strip() == b"online":
            self._counters.add("config.ha_online")
            self._publish_discovery()
        else:
            self._counters.add("config.ha_status_other")

    async def _commit(self, stack: Stack, effective: RoomSettings, layer: Layer) -> bool:
        """Apply live, save, publish the config; True when the room layer is on disk."""
        before = self._room.current
        self._stack = stack
        self._version += 1
        self._room.update(**effective.model_dump())
        self._counters.add("config.changes")
        log.info(
            "remote configuration version %d (%s layer): %s",
            self._version,
            layer,
            _changes(stack.layer(layer)) or "(cleared)",
        )
        saved = await self._save()
        self._publish_config()  # after the save: the retained config is what a restart keeps
        if before.target_lang != effective.target_lang:
            self._publish_discovery()
        return saved

    async def _save(self) -> bool:
        state = SavedState(self._version, dict(self._stack.room))
        try:
            await asyncio.to_thread(self._store.save, state)
        except OSError as exc:
            self._counters.add("config.save_failures")
            self._report(
                "config.state",
                f"cannot save room settings to {self._store.path}: {exc.strerror}; "
                "they apply until the daemon restarts",
            )
            return False
        self._report("config.state", None)
        return True

    def _rate_error(self) -> FieldError:
        return FieldError(
            "config",
            f"rate limit: at most {self._rate:g} changes per second are applied; try again",
        )

    # -- publishing -----------------------------------------------------------------------

    def _respond(
        self, transaction: Transaction, errors: list[FieldError], *, saved: bool = True
    ) -> None:
        listed = [e.as_json() for e in errors[:MAX_ERRORS]]
        if len(errors) > MAX_ERRORS:
            listed.append({"field": "", "message": f"… and {len(errors) - MAX_ERRORS} more"})
        doc: dict[str, Any] = {
            "transaction": transaction,
            "status": "error" if errors else "ok",
            "errors": listed,
            "config": self._room.current.model_dump(mode="json"),
        }
        if not errors and not saved:
            doc["saved"] = False
        self._counters.add("config.responses")
        self._publish(self.topics.response, doc, retain=False)

    def _config_document(self) -> dict[str, Any]:
        return {
            "version": self._version,
            "config": self._room.current.model_dump(mode="json"),
            "layers": self._stack.sources(),
        }

    def _publish_config(self) -> None:
        self._publish(self.topics.config, self._config_document(), retain=True)

    def _publish_discovery(self) -> None:
        if self.topics.ha_discovery is None:
            return
        target = self._room.current.target_lang
        doc = discovery_document(self.topics.base, self._room_id, target, self._device_id)
        self._publish(self.topics.ha_discovery, doc, retain=True)

    def _publish(self, topic: str, doc: Mapping[str, Any], *, retain: bool) -> None:
        if self._publisher is not None:
            self._publisher.publish(topic, encode(doc), retain=retain)


_RETAINED = FieldError(
    "payload",
    "a retained config/set is ignored (it would apply again on every reconnect); "
    "publish requests without retain and clear this one with an empty retained message",
)


def _summary(errors: list[FieldError]) -> str:
    text = "; ".join(f"{e.field}: {e.message}" for e in errors[:PROBLEM_ERRORS])
    if len(errors) > PROBLEM_ERRORS:
        text += f"; … {len(errors) - PROBLEM_ERRORS} more"
    return text if len(text) <= PROBLEM_CHARS else text[: PROBLEM_CHARS - 1] + "…"


def _changes(layer: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in layer.items())
