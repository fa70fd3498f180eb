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
- `device`: the claim of the process serving the room (daemon/mqtt/claims.py). While
  another process of this device holds the connection (`conflict()`), the link waits
  between attempts from `CONFLICT_RETRY_S`, doubling up to `status_interval_s`, instead
  of `reconnect_min_s`: the two take turns instead of kicking each other off.

`run()` owns the connection: aiomqtt's documented reconnect loop with a jittered,
doubling back-off. A broker that is down or goes away never raises out of `run()` and
never blocks the callers: publishing only touches memory (daemon/mqtt/outbox.py), and
one sender task per connection drains the outbox in order. Incoming messages go to
`on_message` as they are read, so nothing waits in (or is discarded by) aiomqtt's queue;
`on_message` bounds and counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiomqtt

from daemon.backoff import Backoff
from daemon.config import MqttSettings
from daemon.counters import Counters
from daemon.mqtt.claims import Claims
from daemon.mqtt.client import broker_client, check_topic_level, deliver_at_once, encode_json
from daemon.mqtt.outbox import ONLINE, Job, Outbox, RoomTopics

log = logging.getLogger(__name__)

OFFLINE = b"offline"
# Seconds aiomqtt waits for a CONNACK, PUBACK or SUBACK before giving up on the connection.
OPERATION_TIMEOUT_S = 10.0
# Seconds to publish `offline` when run() is cancelled rather than closed.
CANCEL_OFFLINE_TIMEOUT_S = 1.0
# Seconds between attempts when another process of this device holds the connection,
# doubling up to `status_interval_s`.
CONFLICT_RETRY_S = 2.0

# on_message(topic, payload, retained): `retained` is True for a message the broker had
# stored (delivered because we subscribed), False for one published while we listen.
MessageHandler = Callable[[str, bytes, bool], None]


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
        `device_id` enables the `device` claim (daemon/mqtt/claims.py); `wall_clock`
        stamps the claims and judges their age."""
        self._settings = settings
        self._counters = counters
        self._client_id = client_id or settings.client_id or None
        self._device_id = device_id
        self._claims = Claims(
            settings.room_id, device_id, settings.status_interval_s, counters, wall_clock
        )
        self._subscriptions = tuple(subscriptions)
        self._on_message = on_message
        topics = RoomTopics(self.topic("status"), self.topic("availability"), self.topic("device"))
        claim = self._claims.payload if device_id else None
        self._outbox = Outbox(counters, settings.outbox_size, topics, claim)
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
        return self._outbox.captions

    @property
    def device_id(self) -> str:
        return self._device_id

    def other_devices(self) -> dict[str, str]:
        """Other devices seen claiming this room recently: device id -> host."""
        return self._claims.other_devices()

    def conflict(self) -> str | None:
        """Why another process of this device on this room keeps taking the connection,
        None when there is none."""
        return self._claims.conflict(self._client_id or "")

    @property
    def room(self) -> str:
        return self._settings.room_id

    def topic(self, *parts: str) -> str:
        """`<prefix>/<room_id>/<parts...>`."""
        return "/".join((self._settings.prefix, self._settings.room_id, *parts))

    def publish_caption(self, target_lang: str, payload: Mapping[str, Any], final: bool) -> None:
        """Queue one caption event for `captions/<target_lang>`; never blocks."""
        topic = self.topic("captions", check_topic_level(target_lang, "target_lang"))
        job = Job("final" if final else "partial", topic, encode_json({**payload, "final": final}))
        self._outbox.caption(job, self._connected)

    def publish_retained(self, parts: Sequence[str], payload: Mapping[str, Any] | None) -> None:
        """Replace the retained document of `<prefix>/<room>/<parts>` (None clears it);
        only the latest one per topic is sent. Never blocks."""
        topic = self.topic(*(check_topic_level(part, "topic level") for part in parts))
        self._outbox.retained(topic, b"" if payload is None else encode_json(payload))

    def publish_status(self, payload: Mapping[str, Any]) -> None:
        """Replace the status to publish (retained, QoS 1); never blocks."""
        self._outbox.status(encode_json(payload))

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """Queue a message for any topic (QoS 1); never blocks. A retained one replaces the
        topic's previous payload and goes out again on every connect; others wait in a
        bounded queue (the oldest dropped and counted)."""
        if retain:
            self._outbox.retained(topic, payload, announce=True)
        else:
            self._outbox.reply(topic, payload)

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
            await _wait(self._outbox.idle, timeout - reserve)
        self._offline_timeout = max(0.1, deadline - loop.time())
        self._stop.set()
        if not await _wait(self._finished, max(0.0, deadline - loop.time())):
            await self._cancel_run()
        if self._outbox.captions:
            log.warning("MQTT closed with %d caption(s) not delivered", self._outbox.captions)

    # -- connection -------------------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        return broker_client(
            self._settings,
            self._client_id,
            keepalive=self._settings.keepalive_s,
            timeout=OPERATION_TIMEOUT_S,
            will=aiomqtt.Will(self.topic("availability"), OFFLINE, qos=1, retain=True),
            queue_type=deliver_at_once(self._deliver),
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
        await client.subscribe(self.topic("availability"), qos=1)
        if self._device_id:
            await client.subscribe(self.topic("device"), qos=1)
        for topic_filter in self._subscriptions:
            await client.subscribe(topic_filter, qos=1)
        self._outbox.connected()

    async def _claim_loop(self) -> None:
        """Claim the room again every status interval, so another device sees it live."""
        while True:
            await asyncio.sleep(self._settings.status_interval_s)
            self._outbox.claim_again()

    def _on_availability(self, payload: bytes) -> None:
        if payload != OFFLINE or not self._connected or self._stop.is_set():
            return
        self._counters.add("mqtt_online_restored")
        log.info("room %r was said to be offline (another device stopped): online again", self.room)
        self._outbox.online()

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
        self._outbox.disconnected()
        where = f"{self._settings.host}:{self._settings.port}"
        if was_connected:
            self._counters.add("mqtt_disconnects")
            # the conflict is told by the claims
            level = logging.INFO if self._claims.has_twins else logging.WARNING
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
        outbox = self._outbox
        while True:
            outbox.wake.clear()
            while (job := outbox.take()) is not None:
                await self._send(client, job)
            outbox.idle.set()
            await outbox.wake.wait()

    async def _send(self, client: aiomqtt.Client, job: Job) -> None:
        try:
            await client.publish(job.topic, job.payload, qos=job.qos, retain=job.retain)
        except BaseException:
            self._outbox.put_back(job)
            raise
        if job.kind in ("final", "partial"):
            self._counters.add("mqtt_captions_published")

    async def _receive_loop(self, client: aiomqtt.Client) -> None:
        """Wait for the end of the connection (raises MqttError); the messages themselves
        are handed to `_deliver()` as they are read (see `deliver_at_once`)."""
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
                self._claims.receive(data, bool(message.retain), self._client_id or "")
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


def _uncancel() -> int:
    """Withdraw one cancellation request of the current task; the number left."""
    task = asyncio.current_task()
    return task.uncancel() if task is not None else 0
