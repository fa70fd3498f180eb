"""One account, many rooms: this room's part in sharing the account's limits.

What it does for the rooms: docs/mqtt.md, "One account, many rooms". While
`room.account` (a live setting, read every tick) is set, `SharedBudget` keeps the room's
record (daemon/fleet/record.py) on `<prefix>/_account/<account>/<room_id>` over a
connection of its own, whose will clears it, reads the records of the account's rooms,
and every tick (a quarter heartbeat) allocates the account among the rooms alive
(daemon/fleet/share.py) and hands this room's part to the service load's pacer
(daemon/fleet/pacer.py). A room is alive while its record is refreshed (forgotten after
`STALE_HEARTBEATS` heartbeats, or when it is cleared); a retained record older than
that, found at connect, is not counted. While the broker cannot be reached, or the
room's own record does not come back, the allocation is not recomputed: the pacer
keeps the last share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from daemon.backoff import Backoff
from daemon.config import ApiSettings, MqttSettings
from daemon.counters import Counters
from daemon.fleet.pacer import Pacer
from daemon.fleet.record import (
    HEARTBEAT_S,
    AmountDoc,
    DemandDoc,
    Record,
    ShareDoc,
    ShedDoc,
    account_topics,
    read_record,
    record_topic,
)
from daemon.fleet.share import Amount, allocate, capacity
from daemon.mqtt.client import broker_client, deliver_at_once
from daemon.ratelimit import ServiceLoad

log = logging.getLogger(__name__)

TICKS_PER_HEARTBEAT = 4
STALE_HEARTBEATS = 3
MAX_ROOMS = 2000  # records kept of one account; more are counted and ignored
KEEPALIVE_S = 10  # the will clears the record within 1.5 × this of a silent death
OPERATION_TIMEOUT_S = 5.0


class _Seen:
    """Another room's latest record and when it arrived (monotonic)."""

    __slots__ = ("at", "record")

    def __init__(self, record: Record, at: float) -> None:
        self.record = record
        self.at = at


class SharedBudget:
    """The room's side of its account's shared budget; `run()` is its task."""

    def __init__(
        self,
        mqtt: MqttSettings,
        api: ApiSettings,
        load: ServiceLoad,
        account: Callable[[], str],
        counters: Counters,
        *,
        device_id: str = "",
        client_id: str | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`account()` is read every tick (the live room setting); `load` gets the pacer
        while the room shares an account."""
        self._mqtt = mqtt
        self._load = load
        self._account = account
        self._counters = counters
        self._device_id = device_id
        self._client_id = client_id or f"roomtranslate-{mqtt.room_id}-{device_id}-account"
        self._heartbeat_s = heartbeat_s
        self._stale_s = STALE_HEARTBEATS * heartbeat_s
        self._tick_s = heartbeat_s / TICKS_PER_HEARTBEAT
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self._limits = Amount(api.requests_per_minute, api.tokens_per_minute)
        self.pacer = Pacer(self._limits, clock=clock, sleep=sleep)
        self._others: dict[str, _Seen] = {}
        self._joined = ""  # the account of the current session
        self._connected = False
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._published_rejected = 0
        self._echo_at = 0.0  # when this room's own record last came back

    # -- public ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def rooms(self) -> list[str]:
        """The rooms of the account this room counts (itself included)."""
        return sorted([self._mqtt.room_id, *self._others])

    def figures(self) -> dict[str, Any]:
        """The status's `fleet` section."""
        account = self._account()
        if not account:
            return {"account": ""}
        share = self.pacer.share
        rejected = self.pacer.rejected_per_min()
        return {
            "account": account,
            "connected": self._connected,
            "rooms": share.rooms,
            "share": ShareDoc.of(share).model_dump(),
            "demand": DemandDoc.of(self.pacer.demand()).model_dump(),
            "sent": AmountDoc.of(self.pacer.sent()).model_dump(),
            "shed": self.pacer.shed(),
            "rejected": {"room": rejected, "account": rejected + self._others_rejected()},
            "bad_records": round(self._counters.get("fleet_bad_records")),
            "rooms_ignored": round(self._counters.get("fleet_rooms_ignored")),
            "disconnects": round(self._counters.get("fleet_disconnects")),
        }

    async def run(self) -> None:
        """Share while `room.account` is set, until close(); reconnects like the link."""
        self._done.clear()
        try:
            await self._share_while_set()
        finally:
            self._load.pacer = None
            self._done.set()

    async def close(self, timeout_s: float = 2.0) -> None:
        """Leave the account (the record cleared, so the others share at once) and end
        `run()`, waiting at most `timeout_s`."""
        self._stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout_s)

    async def _share_while_set(self) -> None:
        backoff = Backoff(self._mqtt.reconnect_min_s, self._mqtt.reconnect_max_s, jitter=0.5)
        while not self._stop.is_set():
            account = self._account()
            self._load.pacer = self.pacer if account else None
            if not account:
                await self._pause(self._tick_s)
                continue
            try:
                await self._session(account)
                backoff.reset()
            except aiomqtt.MqttError as exc:
                self._counters.add("fleet_disconnects")
                log.log(
                    logging.DEBUG if self._joined != account else logging.WARNING,
                    "account %r: broker unreachable (%s): pacing by the last share",
                    account,
                    exc,
                )
                self._joined = ""
                await self._pause(backoff.next())

    # -- the session ----------------------------------------------------------------------

    async def _session(self, account: str) -> None:
        """One connection to the account, until it changes or close() (raises MqttError)."""
        topic = record_topic(self._mqtt.prefix, account, self._mqtt.room_id)
        client = broker_client(
            self._mqtt,
            self._client_id,
            keepalive=min(self._mqtt.keepalive_s, KEEPALIVE_S),
            timeout=OPERATION_TIMEOUT_S,
            will=aiomqtt.Will(topic, b"", qos=1, retain=True),
            queue_type=deliver_at_once(lambda message: self._receive(account, message)),
        )
        async with client:
            self._others.clear()
            self._echo_at = self._clock()
            await client.subscribe(account_topics(self._mqtt.prefix, account), qos=1)
            if self._joined != account:
                log.info("account %r: sharing its limits with the rooms of it", account)
            self._joined = account
            self._connected = True
            try:
                await self._serve(client, account, topic)
            finally:
                self._connected = False
            await client.publish(topic, b"", qos=1, retain=True, timeout=OPERATION_TIMEOUT_S)

    async def _serve(self, client: aiomqtt.Client, account: str, topic: str) -> None:
        """Publish the record, then (the others' retained records read) recompute every
        tick and publish every heartbeat, at once after a 429 of this room."""
        receiver = asyncio.create_task(_drain(client), name="fleet-receive")
        try:
            last = self._clock()
            await client.publish(topic, self._record().encode(), qos=1, retain=True)
            await self._pause(self._tick_s)
            while not self._stop.is_set() and self._account() == account:
                if receiver.done():
                    receiver.result()  # the connection ended: raises MqttError
                self._recompute()
                now = self._clock()
                if now - last >= self._heartbeat_s or self._new_rejection():
                    await client.publish(topic, self._record().encode(), qos=1, retain=True)
                    last = now
                await self._pause(self._tick_s)
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await receiver

    # -- the records ------------------------------------------------------------------------

    def _receive(self, account: str, message: aiomqtt.Message) -> None:
        """One record of the account, as it is read (nothing may raise out of here)."""
        try:
            self._read(account, message)
        except Exception:
            self._counters.add("fleet_handler_errors")
            log.exception("account %r: reading a record failed", account)

    def _read(self, account: str, message: aiomqtt.Message) -> None:
        room = message.topic.value.rsplit("/", 1)[-1]
        if room == self._mqtt.room_id:
            self._echo_at = self._clock()  # our own record came back: the broker carries
            return
        raw = message.payload
        payload = bytes(raw) if isinstance(raw, bytes | bytearray) else b""
        if not payload:
            if self._others.pop(room, None) is not None:
                log.info("account %r: room %s left", account, room)
            return
        try:
            record = read_record(payload)
        except ValueError as exc:
            self._counters.add("fleet_bad_records")
            log.debug("account %r: bad record of room %s: %s", account, room, exc)
            return
        if message.retain and abs(self._wall() - record.at) > self._stale_s:
            return  # left behind by a room that is gone
        if room not in self._others:
            if len(self._others) >= MAX_ROOMS:
                self._counters.add("fleet_rooms_ignored")
                return
            log.info("account %r: room %s joined", account, room)
        self._others[room] = _Seen(record, self._clock())
        if record.hold_s > 0:
            self.pacer.hold(record.hold_s, f"room {room} of the account got a 429")

    def _recompute(self) -> None:
        """Forget the rooms gone silent; pace by this room's part of the allocation. Not
        while this room's own record does not come back (a broker gone silent before
        the connection is known to be lost): the last share stays."""
        now = self._clock()
        if now - self._echo_at > self._stale_s:
            return
        for room, seen in list(self._others.items()):
            if now - seen.at > self._stale_s:
                del self._others[room]
                log.info("account %r: room %s went silent: forgotten", self._joined, room)
        demands = {room: seen.record.demand.demand for room, seen in self._others.items()}
        demands[self._mqtt.room_id] = self.pacer.demand()
        limits = self._limits
        for seen in self._others.values():
            theirs = seen.record.limits.amount
            limits = Amount(
                min(limits.requests, theirs.requests), min(limits.tokens, theirs.tokens)
            )
        rejected = self.pacer.rejected_per_min() + self._others_rejected()
        shares = allocate(demands, capacity(limits, rejected))
        self.pacer.set_share(shares[self._mqtt.room_id])

    def _others_rejected(self) -> int:
        return sum(seen.record.rejected for seen in self._others.values())

    def _new_rejection(self) -> bool:
        rejected = self.pacer.rejected_per_min()
        new = rejected > self._published_rejected
        self._published_rejected = rejected
        return new

    def _record(self) -> Record:
        pacer = self.pacer
        return Record(
            room_id=self._mqtt.room_id,
            device_id=self._device_id,
            at=self._wall(),
            heartbeat_s=self._heartbeat_s,
            limits=AmountDoc.of(self._limits),
            demand=DemandDoc.of(pacer.demand()),
            sent=AmountDoc.of(pacer.sent()),
            share=ShareDoc.of(pacer.share),
            shed=ShedDoc(**pacer.shed()),
            rejected=pacer.rejected_per_min(),
            hold_s=round(pacer.hold_left(), 2),
        )

    async def _pause(self, seconds: float) -> None:
        if not self._stop.is_set():
            await self._sleep(seconds)


async def _drain(client: aiomqtt.Client) -> None:
    """Until the connection ends (raises MqttError); the messages go to the inbox."""
    async for _ in client.messages:
        pass
