"""What waits for the link's sender, and in which order it goes.

Publishing only touches memory here; the link's one sender task per connection drains
it with `take()`, in this order: the latest status, `online` (someone said offline while
we are connected), this process's claim, the latest retained document per topic, the
non-retained control messages (`REPLY_LIMIT`, the oldest dropped and counted), then the
captions (`mqtt.outbox_size`). While disconnected, finals wait (the oldest dropped when
full) and partials are dropped. Every drop is counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from daemon.counters import Counters

log = logging.getLogger(__name__)

ONLINE = b"online"
# Non-retained control messages (`publish(retain=False)`) waiting to be sent.
REPLY_LIMIT = 100

JobKind = Literal["final", "partial", "status", "online", "retained", "claim", "reply"]


@dataclass(frozen=True, slots=True)
class Job:
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


@dataclass(frozen=True, slots=True)
class RoomTopics:
    """The room's own topics the outbox publishes on."""

    status: str
    availability: str
    device: str


class Outbox:
    """The sender's queue; see the module docstring. `wake` is set when something was
    queued, `idle` while nothing is queued or in flight."""

    def __init__(
        self,
        counters: Counters,
        size: int,
        topics: RoomTopics,
        claim: Callable[[], bytes] | None,
    ) -> None:
        """`claim` makes this process's `device` claim (None: no claims)."""
        self._counters = counters
        self._size = size
        self._topics = topics
        self._claim = claim
        self._finals: deque[Job] = deque()  # captions: finals and (connected) partials
        self._status: bytes | None = None
        self._status_dirty = False
        self._online_dirty = False
        self._claim_dirty = False
        self._retained: dict[str, bytes] = {}  # topic -> latest document not yet sent
        self._announced: dict[str, bytes] = {}  # topic -> document sent again on every connect
        self._replies: deque[Job] = deque()
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def captions(self) -> int:
        """Captions waiting (not counting one in flight)."""
        return len(self._finals)

    # -- queueing -------------------------------------------------------------------------

    def caption(self, job: Job, connected: bool) -> None:
        """A final waits (the oldest dropped when full); a partial goes only while connected."""
        if job.kind == "final":
            if len(self._finals) >= self._size:
                self._drop(self._finals.popleft())
            self._finals.append(job)
            self._kick()
        elif connected and len(self._finals) < self._size:
            self._finals.append(job)
            self._kick()
        else:
            self._drop(job)

    def status(self, payload: bytes) -> None:
        self._status = payload
        self._status_dirty = True
        self._kick()

    def retained(self, topic: str, payload: bytes, *, announce: bool = False) -> None:
        """The latest document of `topic`; `announce`: sent again on every connect."""
        if announce:
            self._announced[topic] = payload
        self._retained[topic] = payload
        self._kick()

    def reply(self, topic: str, payload: bytes) -> None:
        if len(self._replies) >= REPLY_LIMIT:
            self._replies.popleft()
            self._counters.add("mqtt_replies_dropped")
        self._replies.append(Job("reply", topic, payload))
        self._kick()

    def online(self) -> None:
        """Say `online` again (someone said offline while we are connected)."""
        self._online_dirty = True
        self._kick()

    def claim_again(self) -> None:
        self._claim_dirty = self._claim is not None
        self._kick()

    def connected(self) -> None:
        """A new session announced `online`: queue what every connect sends again."""
        self._online_dirty = False
        self._claim_dirty = self._claim is not None
        self._status_dirty = self._status is not None
        self._retained.update((t, p) for t, p in self._announced.items() if t not in self._retained)

    def disconnected(self) -> None:
        """On a lost connection: partials go, finals wait."""
        finals = deque(job for job in self._finals if job.kind == "final")
        dropped = len(self._finals) - len(finals)
        if dropped:
            self._counters.add("mqtt_partials_dropped", dropped)
        self._finals = finals
        if not self._finals and not self._status_dirty and not self._retained:
            self.idle.set()

    # -- the sender's side ----------------------------------------------------------------

    def take(self) -> Job | None:
        """The next job to send, None when nothing waits."""
        if self._status_dirty and self._status is not None:
            self._status_dirty = False
            return Job("status", self._topics.status, self._status)
        if self._online_dirty:
            self._online_dirty = False
            return Job("online", self._topics.availability, ONLINE)
        if self._claim_dirty and self._claim is not None:
            self._claim_dirty = False
            return Job("claim", self._topics.device, self._claim())
        if self._retained:
            topic = next(iter(self._retained))
            return Job("retained", topic, self._retained.pop(topic))
        if self._replies:
            return self._replies.popleft()
        return self._finals.popleft() if self._finals else None

    def put_back(self, job: Job) -> None:
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
        elif job.kind == "partial" or len(self._finals) >= self._size:
            self._drop(job)
        else:
            self._finals.appendleft(job)

    # -- internals ------------------------------------------------------------------------

    def _kick(self) -> None:
        self.idle.clear()
        self.wake.set()

    def _drop(self, job: Job) -> None:
        if job.kind == "partial":
            self._counters.add("mqtt_partials_dropped")
        else:
            self._counters.add("mqtt_outbox_dropped")
            log.debug("MQTT outbox full: dropped the oldest final caption on %s", job.topic)
