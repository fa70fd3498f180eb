"""The MQTT link: availability, status and captions for the caption displays.

Topics live under `<prefix>/<room_id>/`:

- `availability`: retained `online` on every (re)connect, retained `offline` as the will
  and on a clean shutdown. The link subscribes to it: an `offline` while it is connected
  (another device on the same `room_id` stopped, or its will) is answered with `online`
  again, so the room reads online while any of its devices runs.
- `status`: retained JSON, the latest one given (QoS 1).
- `captions/<target_lang>`: JSON events, never retained; partial updates QoS 0, finals
  QoS 1. The link adds `"final": true|false` to each event.
- `captions/<lang>/recent` (and any other document given to `publish_retained()`):
  retained JSON, QoS 1, the latest per topic; an empty payload clears it.
- `device`: retained JSON claim `{"device_id", "host", "at", "instance", "pid"}` of the
  process serving the room (`instance`: random, made per process), published on every
  connect and again every `status_interval_s`. The link subscribes to it: a claim with
  another device id (live, or retained and fresh) means a second device uses the same
  `room_id`; both devices see it, log it and report it (`other_devices`) until no claim
  of the other was seen for `CLAIM_STALE_INTERVALS` status intervals. The client id
  carries the device id, so two devices never kick each other off the broker.
- Two processes of one device on one room (a stray `roomtranslate run` beside the
  service) share the client id: the broker drops one whenever the other connects. Each
  sees the other's claim (same device id, another instance, made after this process
  started) when it reconnects, logs it and reports it (`conflict()`), and while it lasts
  waits between attempts from `CONFLICT_RETRY_S`, doubling up to `status_interval_s`,
  instead of `reconnect_min_s`: the two take turns instead of kicking each other off.

`run()` owns the connection: aiomqtt's documented reconnect loop with a jittered,
doubling back-off. A broker that is down or goes away never raises out of `run()` and
never blocks the callers: `publish_caption()` and `publish_status()` only touch memory.
One sender task per connection drains a bounded outbox in order; while disconnected,
finals wait in the outbox (oldest dropped when full) and partials are dropped. Every
drop is counted. Incoming messages go to `on_message` as they are read, so nothing waits
in (or is discarded by) aiomqtt's queue; `on_message` bounds and counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiomqtt

from daemon.backoff import Backoff
from daemon.config import MqttSettings
from daemon.counters import Counters

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
# Seconds aiomqtt waits for a CONNACK, PUBACK or SUBACK before giving up on the connection.
OPERATION_TIMEOUT_S = 10.0
# Seconds to publish `offline` when run() is cancelled rather than closed.
CANCEL_OFFLINE_TIMEOUT_S = 1.0
# Non-retained control messages (`publish(retain=False)`) waiting to be sent.
REPLY_LIMIT = 100

# A claim of another device not seen for this many status intervals is forgotten.
CLAIM_STALE_INTERVALS = 3
# Seconds between attempts when another process of this device holds the connection,
# doubling up to `status_interval_s`.
CONFLICT_RETRY_S = 2.0

# on_message(topic, payload, retained): `retained` is True for a message the broker had
# stored (delivered because we subscribed), False for one published while we listen.
MessageHandler = Callable[[str, bytes, bool], None]
JobKind = Literal["final", "partial", "status", "online", "retained", "claim", "reply"]


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON, non-ASCII text kept as is."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def check_topic_level(value: str, name: str) -> str:
    """`value` if it is usable as one topic level, else ValueError."""
    if not value or any(c in value for c in "+#/\0"):
        raise ValueError(f"{name} must be a non-empty topic level without + # /: {value!r}")
    return value


def broker_client(
    settings: MqttSettings,
    identifier: str | None,
    *,
    keepalive: int,
    timeout: float,
    **options: Any,
) -> aiomqtt.Client:
    """An aiomqtt client for `[mqtt]`: host, port, credentials and TLS; the daemon's link
    and `check` both connect through it."""
    return aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username or None,
        password=settings.password.get_secret_value() or None,
        identifier=identifier,
        keepalive=keepalive,
        timeout=timeout,
        tls_params=tls_parameters(settings),
        **options,
    )


def tls_parameters(settings: MqttSettings) -> aiomqtt.TLSParameters | None:
    """aiomqtt's TLS settings for `[mqtt]` (None without TLS)."""
    if not settings.tls:
        return None
    return aiomqtt.TLSParameters(
        ca_certs=str(settings.ca_file) if settings.ca_file else None,
        certfile=str(settings.cert_file) if settings.cert_file else None,
        keyfile=str(settings.key_file) if settings.key_file else None,
    )


@dataclass(frozen=True, slots=True)
class _Twin:
    """Another process with this device id: where it runs and its latest claim (wall time)."""

    host: str
    pid: int
    at: float


@dataclass(frozen=True, slots=True)
class _Job:
    """One message waiting for the sender."""

    kind: JobKind
    topic: str
    payload: bytes

    @property
    def qos(self) -> int:
        return 0 if self.kind == "partial" else 1

    @property
    def retain(self) -> bool:
        return self.kind in ("status", "online", "retained", "claim")


class MqttLink:
    """The daemon's connection to the broker; see the module docstring."""

    def __init__(
        self,
        settings: MqttSettings,
        counters: Counters,
        *,
        client_id: str | None = None,
        subscriptions: Sequence[str] = (),
        on_message: MessageHandler | None = None,
        device_id: str = "",
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """`subscriptions` are full topic filters, subscribed (QoS 1) on every connect;
        `on_message(topic, payload, retained)` is called in the event loop for each message
        the moment it is read: it must only keep it (bounded) and return.
        `device_id` enables the `device` claim (see the module docstring); `wall_clock`
        stamps the claims and judges their age."""
        self._settings = settings
        self._counters = counters
        self._client_id = client_id or settings.client_id or None
        self._device_id = device_id
        self._claim_dirty = False
        self._online_dirty = False  # someone said offline while this link is connected
        self._others: dict[str, tuple[str, float]] = {}  # device id -> (host, last seen)
        self._wall = wall_clock
        self._instance = secrets.token_hex(4)  # this process, in the claims
        self._started_at = wall_clock()
        self._twins: dict[str, _Twin] = {}  # instance -> another process of this device
        self._subscriptions = tuple(subscriptions)
        self._on_message = on_message
        self._outbox: deque[_Job] = deque()
        self._status: bytes | None = None
        self._status_dirty = False
        self._retained: dict[str, bytes] = {}  # topic -> latest document not yet sent
        self._announced: dict[str, bytes] = {}  # topic -> document sent again on every connect
        self._replies: deque[_Job] = deque()
        self._wake = asyncio.Event()  # something was queued for the sender
        self._idle = asyncio.Event()  # nothing is queued or in flight
        self._idle.set()
        self._stop = asyncio.Event()  # close() asks run() to say offline and return
        self._finished = asyncio.Event()  # run() has returned
        self._finished.set()
        self._run_task: asyncio.Task[None] | None = None
        self._cancelled_by_close = False
        self._connected = False
        self._failing = False  # the last attempt failed: log the next failures quietly
        self._offline_timeout = CANCEL_OFFLINE_TIMEOUT_S
        self._rng = random.Random()

    # -- public API -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a session is up (online announced, subscriptions made)."""
        return self._connected

    @property
    def pending(self) -> int:
        """Captions waiting in the outbox (not counting one in flight)."""
        return len(self._outbox)

    @property
    def device_id(self) -> str:
        return self._device_id

    def other_devices(self) -> dict[str, str]:
        """Other devices seen claiming this room recently: device id -> host."""
        stale = CLAIM_STALE_INTERVALS * self._settings.status_interval_s
        now = time.monotonic()
        for device, (host, seen) in list(self._others.items()):
            if now - seen > stale:
                del self._others[device]
                log.info("device %s (%s) no longer claims room %r", device, host, self.room)
        return {device: host for device, (host, _) in self._others.items()}

    def conflict(self) -> str | None:
        """Why another process of this device on this room keeps taking the connection
        (see the module docstring), None when there is none."""
        stale = CLAIM_STALE_INTERVALS * self._settings.status_interval_s
        for instance, twin in list(self._twins.items()):
            if self._wall() - twin.at > stale:
                del self._twins[instance]
                log.info(
                    "the other process (pid %d on %s) no longer claims room %r",
                    twin.pid,
                    twin.host,
                    self.room,
                )
        if not self._twins:
            return None
        who = ", ".join(f"pid {t.pid} on {t.host}" for t in self._twins.values())
        return (
            f"another roomtranslate process ({who}) serves room_id {self.room!r} with this "
            f"device id: both use the MQTT client id {self._client_id or ''!r}, so the broker "
            "disconnects one whenever the other connects; stop one of them, or give each "
            "its own device_id and room_id"
        )

    @property
    def room(self) -> str:
        return self._settings.room_id

    def topic(self, *parts: str) -> str:
        """`<prefix>/<room_id>/<parts...>`."""
        return "/".join((self._settings.prefix, self._settings.room_id, *parts))

    def publish_caption(self, target_lang: str, payload: Mapping[str, Any], final: bool) -> None:
        """Queue one caption event for `captions/<target_lang>`; never blocks."""
        topic = self.topic("captions", check_topic_level(target_lang, "target_lang"))
        job = _Job("final" if final else "partial", topic, encode_json({**payload, "final": final}))
        if final:
            self._enqueue_final(job)
        elif self._connected and len(self._outbox) < self._settings.outbox_size:
            self._outbox.append(job)
            self._kick()
        else:
            self._drop(job)

    def publish_retained(self, parts: Sequence[str], payload: Mapping[str, Any] | None) -> None:
        """Replace the retained document of `<prefix>/<room>/<parts>` (None clears it);
        only the latest one per topic is sent. Never blocks."""
        topic = self.topic(*(check_topic_level(part, "topic level") for part in parts))
        self._retained[topic] = b"" if payload is None else encode_json(payload)
        self._kick()

    def publish_status(self, payload: Mapping[str, Any]) -> None:
        """Replace the status to publish (retained, QoS 1); never blocks."""
        self._status = encode_json(payload)
        self._status_dirty = True
        self._kick()

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """Queue a message for any topic (QoS 1); never blocks. A retained one replaces the
        topic's previous payload and goes out again on every connect; others wait in a
        bounded queue (`REPLY_LIMIT`, the oldest dropped and counted)."""
        if retain:
            self._announced[topic] = payload
            self._retained[topic] = payload
        else:
            if len(self._replies) >= REPLY_LIMIT:
                self._replies.popleft()
                self._counters.add("mqtt_replies_dropped")
            self._replies.append(_Job("reply", topic, payload))
        self._kick()

    async def run(self) -> None:
        """Connect, publish, reconnect until close(); a cancellation from outside
        says `offline` (if connected) and is re-raised."""
        if not self._finished.is_set():
            raise RuntimeError("MqttLink.run() is already running")
        self._finished.clear()
        self._run_task = asyncio.current_task()
        self._cancelled_by_close = False
        try:
            await self._reconnect_loop()
        except asyncio.CancelledError:
            if not self._cancelled_by_close or _uncancel() > 0:
                raise
        finally:
            self._connected = False
            self._run_task = None
            self._finished.set()

    async def close(self, timeout: float = 3.0) -> None:  # noqa: ASYNC109 (the budget is split)
        """Flush what can be flushed within `timeout`, publish `offline`, disconnect."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        reserve = min(1.0, timeout / 3)
        if not self._finished.is_set():
            await _wait(self._idle, timeout - reserve)
        self._offline_timeout = max(0.1, deadline - loop.time())
        self._stop.set()
        if not await _wait(self._finished, max(0.0, deadline - loop.time())):
            await self._cancel_run()
        if self._outbox:
            log.warning("MQTT closed with %d caption(s) not delivered", len(self._outbox))

    # -- queueing ---------------------------------------------------------------------

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    def _enqueue_final(self, job: _Job) -> None:
        if len(self._outbox) >= self._settings.outbox_size:
            self._drop(self._outbox.popleft())
        self._outbox.append(job)
        self._kick()

    def _drop(self, job: _Job) -> None:
        if job.kind == "partial":
            self._counters.add("mqtt_partials_dropped")
        else:
            self._counters.add("mqtt_outbox_dropped")
            log.debug("MQTT outbox full: dropped the oldest final caption on %s", job.topic)

    def _take_job(self) -> _Job | None:
        if self._status_dirty and self._status is not None:
            self._status_dirty = False
            return _Job("status", self.topic("status"), self._status)
        if self._online_dirty:
            self._online_dirty = False
            return _Job("online", self.topic("availability"), ONLINE)
        if self._claim_dirty:
            self._claim_dirty = False
            return _Job("claim", self.topic("device"), self._claim())
        if self._retained:
            topic = next(iter(self._retained))
            return _Job("retained", topic, self._retained.pop(topic))
        if self._replies:
            return self._replies.popleft()
        return self._outbox.popleft() if self._outbox else None

    def _put_back(self, job: _Job) -> None:
        """A job whose publish did not complete: finals return to the head of the outbox
        (an `online` job is not kept: the next connect says online anyway)."""
        if job.kind == "online":
            return
        if job.kind == "status":
            self._status_dirty = True  # the latest status goes out again
        elif job.kind == "retained":
            self._retained.setdefault(job.topic, job.payload)  # unless a newer one waits
        elif job.kind == "claim":
            self._claim_dirty = True
        elif job.kind == "reply":
            self._replies.appendleft(job)
        elif job.kind == "partial" or len(self._outbox) >= self._settings.outbox_size:
            self._drop(job)
        else:
            self._outbox.appendleft(job)

    def _drop_partials(self) -> None:
        """On a lost connection: partials go, finals wait."""
        finals = deque(job for job in self._outbox if job.kind == "final")
        dropped = len(self._outbox) - len(finals)
        if dropped:
            self._counters.add("mqtt_partials_dropped", dropped)
        self._outbox = finals
        if not self._outbox and not self._status_dirty and not self._retained:
            self._idle.set()

    # -- connection -------------------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        return broker_client(
            self._settings,
            self._client_id,
            keepalive=self._settings.keepalive_s,
            timeout=OPERATION_TIMEOUT_S,
            will=aiomqtt.Will(self.topic("availability"), OFFLINE, qos=1, retain=True),
            queue_type=_inbox(self._deliver),
        )

    async def _reconnect_loop(self) -> None:
        """aiomqtt's reconnect loop: one session after another, backing off between."""
        backoff = Backoff(
            self._settings.reconnect_min_s,
            self._settings.reconnect_max_s,
            jitter=0.5,
            rng=self._rng,
        )
        interval = self._settings.status_interval_s
        turns = Backoff(min(CONFLICT_RETRY_S, interval), interval, jitter=0.5, rng=self._rng)
        while not self._stop.is_set():
            if await self._session(backoff):
                return
            if self.conflict() is None:
                turns.reset()
                await self._pause(backoff.next())
            else:
                delay = turns.next()
                log.info("MQTT: the other process has the connection; next turn in %.1f s", delay)
                await self._pause(delay)

    async def _session(self, backoff: Backoff) -> bool:
        """One connection: True once closed on request, False when it failed."""
        reached = False
        try:
            async with self._new_client() as client:
                reached = True
                backoff.reset()
                await self._serve(client)
        except aiomqtt.MqttError as exc:
            self._note_failure(exc, reached)
            return False
        return True

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Announce, then send and receive until close() (returns) or failure (raises)."""
        try:
            await self._announce(client)
            self._connected = True
            self._failing = False
            self._counters.add("mqtt_connects")
            log.info("MQTT connected to %s:%d", self._settings.host, self._settings.port)
            await self._pump(client)
            await self._say_offline(client, self._offline_timeout)
        except asyncio.CancelledError:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._say_offline(client, CANCEL_OFFLINE_TIMEOUT_S)
            raise
        finally:
            self._connected = False

    async def _announce(self, client: aiomqtt.Client) -> None:
        await client.publish(self.topic("availability"), ONLINE, qos=1, retain=True)
        self._online_dirty = False
        await client.subscribe(self.topic("availability"), qos=1)
        if self._device_id:
            await client.subscribe(self.topic("device"), qos=1)
            self._claim_dirty = True
        for topic_filter in self._subscriptions:
            await client.subscribe(topic_filter, qos=1)
        self._status_dirty = self._status is not None
        self._retained.update((t, p) for t, p in self._announced.items() if t not in self._retained)

    # -- the device claim -------------------------------------------------------------

    def _claim(self) -> bytes:
        return encode_json(
            {
                "device_id": self._device_id,
                "host": socket.gethostname(),
                "at": self._wall(),
                "instance": self._instance,
                "pid": os.getpid(),
            }
        )

    async def _claim_loop(self) -> None:
        """Claim the room again every status interval, so another device sees it live."""
        while True:
            await asyncio.sleep(self._settings.status_interval_s)
            self._claim_dirty = True
            self._kick()

    def _on_claim(self, payload: bytes, retained: bool) -> None:
        try:
            claim = json.loads(payload)
            device, host, at = str(claim["device_id"]), str(claim["host"]), float(claim["at"])
            instance, pid = str(claim.get("instance", "")), int(claim.get("pid", 0))
        except (ValueError, KeyError, TypeError):
            self._counters.add("mqtt_bad_claims")
            return
        if device == self._device_id:
            if instance and instance != self._instance and at > self._started_at:
                self._on_twin(instance, _Twin(host, pid, at))
            return  # else this process's own claim, or one of an earlier run of it
        stale = CLAIM_STALE_INTERVALS * self._settings.status_interval_s
        if retained and abs(self._wall() - at) > stale:
            return  # an old claim: that device is gone (or was replaced by this one)
        if device not in self._others:
            log.warning(
                "another device (%s, id %s) also uses room_id %r: give each room its own",
                host,
                device,
                self.room,
            )
        self._others[device] = (host, time.monotonic())

    def _on_availability(self, payload: bytes) -> None:
        if payload != OFFLINE or not self._connected or self._stop.is_set():
            return
        self._counters.add("mqtt_online_restored")
        log.info("room %r was said to be offline (another device stopped): online again", self.room)
        self._online_dirty = True
        self._kick()

    def _on_twin(self, instance: str, twin: _Twin) -> None:
        """A claim of another process with this device id, made while this one runs."""
        new = instance not in self._twins
        self._twins[instance] = twin
        if new:
            log.warning("%s", self.conflict())

    async def _say_offline(self, client: aiomqtt.Client, limit_s: float) -> None:
        self._connected = False  # its own `offline` coming back is not answered
        await client.publish(
            self.topic("availability"), OFFLINE, qos=1, retain=True, timeout=limit_s
        )

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Run the sender and the receiver until one fails (raise) or stop is asked."""
        sender = asyncio.create_task(self._send_loop(client), name="mqtt-send")
        receiver = asyncio.create_task(self._receive_loop(client), name="mqtt-receive")
        stopper = asyncio.create_task(self._stop.wait(), name="mqtt-stop")
        tasks: tuple[asyncio.Task[Any], ...] = (sender, receiver, stopper)
        if self._device_id:
            tasks += (asyncio.create_task(self._claim_loop(), name="mqtt-claim"),)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in (sender, receiver):
            if task in done:
                task.result()  # raises what ended the connection

    def _note_failure(self, exc: aiomqtt.MqttError, was_connected: bool) -> None:
        self._drop_partials()
        where = f"{self._settings.host}:{self._settings.port}"
        if was_connected:
            self._counters.add("mqtt_disconnects")
            level = logging.INFO if self._twins else logging.WARNING  # the conflict is told
            log.log(level, "MQTT connection to %s lost: %s; reconnecting", where, exc)
            return
        self._counters.add("mqtt_connect_failures")
        log.log(
            logging.DEBUG if self._failing else logging.WARNING,
            "MQTT cannot connect to %s: %s; retrying",
            where,
            exc,
        )
        self._failing = True  # further failures in a row are logged at DEBUG

    async def _pause(self, seconds: float) -> None:
        await _wait(self._stop, seconds)

    async def _cancel_run(self) -> None:
        task = self._run_task
        if task is None or task.done():
            return
        log.warning("MQTT link did not stop in time; cancelling it")
        self._cancelled_by_close = True  # run() returns instead of raising
        task.cancel()
        await asyncio.wait([task])

    # -- per-connection tasks ---------------------------------------------------------

    async def _send_loop(self, client: aiomqtt.Client) -> None:
        while True:
            self._wake.clear()
            while (job := self._take_job()) is not None:
                await self._send(client, job)
            self._idle.set()
            await self._wake.wait()

    async def _send(self, client: aiomqtt.Client, job: _Job) -> None:
        try:
            await client.publish(job.topic, job.payload, qos=job.qos, retain=job.retain)
        except BaseException:
            self._put_back(job)
            raise
        if job.kind in ("final", "partial"):
            self._counters.add("mqtt_captions_published")

    async def _receive_loop(self, client: aiomqtt.Client) -> None:
        """Wait for the end of the connection (raises MqttError); the messages themselves
        are handed to `_deliver()` as they are read (see `_inbox`)."""
        async for message in client.messages:
            self._deliver(message)

    def _deliver(self, message: aiomqtt.Message) -> None:
        """One incoming message, in the event loop, as paho reads it (inside its callback:
        nothing may raise out of here)."""
        payload = message.payload
        data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
        topic = message.topic.value
        try:
            if topic == self.topic("device") and self._device_id:
                self._on_claim(data, bool(message.retain))
            elif topic == self.topic("availability"):
                self._on_availability(data)
            elif self._on_message is not None:
                self._on_message(topic, data, bool(message.retain))
        except Exception:
            self._counters.add("mqtt_handler_errors")
            log.exception("MQTT message handler failed on %s", topic)


async def _wait(event: asyncio.Event, limit_s: float) -> bool:
    """Wait for `event` at most `limit_s` seconds; True if it is set."""
    if limit_s > 0 and not event.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), limit_s)
    return event.is_set()


def _inbox(deliver: Callable[[aiomqtt.Message], None]) -> type[asyncio.Queue[aiomqtt.Message]]:
    """An aiomqtt `queue_type` that holds nothing: each message goes to `deliver` the moment
    paho has read it. aiomqtt's own queue would fill (and discard, uncounted) whenever
    paho reads faster than its iterator hands messages out; the receiver's structures
    (the control plane's) bound and count instead."""

    class Inbox(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            deliver(item)

    return Inbox


def _uncancel() -> int:
    """Withdraw one cancellation request of the current task; the number left."""
    task = asyncio.current_task()
    return task.uncancel() if task is not None else 0
