"""The one lifecycle of an audio device stage: the microphone (`capture.py`) and the
speaker (`daemon/playback/`).

    CLOSED ─open()─▶ OPENING ─▶ OPEN ─(lost | yield)─▶ CLOSING ─▶ CLOSED
                        └─ fails ─▶ BACKING_OFF ─▶ OPENING …

- `open()` tries until the device opens: each attempt runs in a worker thread (PortAudio
  may take a while to open a device) under the shared `DeviceHost`'s lock, after the
  host's re-enumeration if one is due; a failure is counted (`<stage>_open_failures`),
  tells the host the device is missing and waits the next delay of the reconnect policy
  (daemon/backoff.py: `reopen_min_s` doubling to `reopen_max_s`). A task cancelled while
  a worker opens the device closes what it opens.
- The stage serves the open session and reports how it ended (`ended()`): `LOST` (the
  stream finished, stalled or failed: `<stage>_device_lost`, then the next delay; a
  session that worked resets the policy) or `YIELDED` (closed for a rescan the other
  device needs: `<stage>_rescan_yields`, reopened at once). A successful open after a loss
  is a reopen (`<stage>_reopens`).
- Stall check: no callback for `stall_s` (the callback stamps the time) = lost
  (`<stage>_stalls`).
- Rescan yield: an open stage gives way (`should_yield()`) when the host needs a rescan
  for the other device, the stage's `may_yield()` allows it (the microphone: nobody
  speaks; the speaker: nothing queued) and its last yield is `yield_every_s` ago.
- `close()` runs the device's close in a daemon thread with a time limit (a hung
  PortAudio call must not block the loop or the exit), then its abort; a stream that
  stays hung is abandoned and still counts as open for the host (no rescan may run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Generic, Protocol, TypeVar

from daemon.backoff import Backoff
from daemon.counters import Counters
from daemon.devices import DeviceHost, Kind

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0
TICK_S = 0.05  # the tick while waiting between attempts (see `DeviceLifecycle.pause`)

S = TypeVar("S")


class DeviceState(StrEnum):
    """Where a device stage is in its lifecycle."""

    CLOSED = "closed"  # not opened yet, or closed after a session
    OPENING = "opening"  # an attempt runs in a worker thread
    BACKING_OFF = "backing_off"  # waiting before the next attempt
    OPEN = "open"  # a session is served
    CLOSING = "closing"


class SessionEnd(Enum):
    """Why a session ended."""

    LOST = "lost"  # the stream finished, stalled or failed: reopen after a delay
    YIELDED = "yielded"  # closed for a device rescan: reopen at once


class DeviceOpenError(Exception):
    """The device could not be opened (missing, busy, unsupported settings)."""


class AudioDevice(Protocol[S]):
    """What a stage gives the lifecycle: how to open, start and close one session."""

    def open_session(self) -> S:
        """Open a session (worker thread, host lock held); raise `DeviceOpenError`."""
        ...

    def activate_session(self, session: S) -> None:
        """The event loop, right after the open; raise `DeviceOpenError` if it fails."""
        ...

    def close_session(self, session: S) -> None:
        """Close the session (any thread); must not raise."""
        ...

    def abort_session(self, session: S) -> None:
        """Stop the session at once (after `close` hung); must not raise."""
        ...


@dataclass(frozen=True, slots=True)
class LifecyclePolicy:
    """The timings of one device stage."""

    stage: str  # counter prefix and log name: "capture", "playback"
    kind: Kind
    reopen_min_s: float = 1.0
    reopen_max_s: float = 10.0
    stall_s: float = 3.0
    yield_every_s: float = 0.0  # at most one rescan yield per this many seconds


def always() -> bool:
    return True


class DeviceLifecycle(Generic[S]):
    """One device stage's open / serve / lose / reopen cycle (see the module docstring)."""

    def __init__(
        self,
        device: AudioDevice[S],
        policy: LifecyclePolicy,
        host: DeviceHost,
        counters: Counters,
        *,
        may_yield: Callable[[], bool] = always,
        logger: logging.Logger = log,
    ) -> None:
        self._log = logger  # the stage's own (`check` collects its warnings)
        self._device = device
        self._policy = policy
        self._host = host
        self._counters = counters
        self._may_yield = may_yield
        self._backoff = Backoff(policy.reopen_min_s, policy.reopen_max_s)
        self._lost = False  # the last session was lost: the next open is a reopen
        self._last_yield = time.monotonic()
        self.state = DeviceState.CLOSED
        self.opened_at = 0.0  # monotonic time of the current session's open

    @property
    def policy(self) -> LifecyclePolicy:
        return self._policy

    def _count(self, what: str) -> None:
        self._counters.add(f"{self._policy.stage}_{what}")

    # -- opening ------------------------------------------------------------------------

    async def open(self, tick: Callable[[], None] | None = None) -> S:
        """Open the device, retrying with the backoff until it opens."""
        while True:
            session = await self._attempt()
            if session is not None:
                if self._lost:
                    self._count("reopens")
                self._lost = False
                self.state = DeviceState.OPEN
                self.opened_at = time.monotonic()
                return session
            await self.pause(self._backoff.next(), tick)

    async def _attempt(self) -> S | None:
        self.state = DeviceState.OPENING
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._open_blocking)
        try:
            session = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._close_abandoned)
            self.state = DeviceState.CLOSED
            raise
        except DeviceOpenError as exc:
            self._failed(exc)
            return None
        try:
            self._device.activate_session(session)
        except DeviceOpenError as exc:
            await self._close(session)
            self._host.missing(self._policy.kind)
            self._failed(exc)
            return None
        return session

    def _failed(self, exc: DeviceOpenError) -> None:
        self._count("open_failures")
        self._log.warning("cannot open the %s device: %s", self._policy.kind, exc)
        self.state = DeviceState.BACKING_OFF

    def _open_blocking(self) -> S:
        """Rescan if due, then open (under the host's lock, in a worker thread)."""
        with self._host.lock:
            self._host.rescan_if_due()
            try:
                session = self._device.open_session()
            except DeviceOpenError:
                self._host.missing(self._policy.kind)
                raise
            self._host.opened(self._policy.kind)
            return session

    def _close_abandoned(self, future: asyncio.Future[S]) -> None:
        with contextlib.suppress(BaseException):
            self._device.close_session(future.result())
            self._host.closed(self._policy.kind)

    # -- serving ------------------------------------------------------------------------

    def stalled(self, last_callback: float, now: float) -> bool:
        """No callback since `last_callback` for `stall_s`: counted and logged."""
        silent = now - last_callback
        if silent <= self._policy.stall_s:
            return False
        self._count("stalls")
        self._log.warning(
            "no audio callback from the %s device for %.0f s", self._policy.kind, silent
        )
        return True

    def should_yield(self) -> bool:
        """Give way to a rescan the other device needs: rarely, and when the stage allows."""
        now = time.monotonic()
        if now - self._last_yield < self._policy.yield_every_s or not self._may_yield():
            return False
        if not self._host.should_yield(self._policy.kind):
            return False
        self._last_yield = now
        return True

    # -- ending -------------------------------------------------------------------------

    async def close(self, session: S) -> None:
        """Close the session (in a thread, with a time limit) and tell the host."""
        self.state = DeviceState.CLOSING
        await self._close(session)
        self.state = DeviceState.CLOSED

    async def _close(self, session: S) -> None:
        kind = self._policy.kind
        if await _call_in_thread(lambda: self._device.close_session(session), CLOSE_TIMEOUT_S):
            self._host.closed(kind)
            return
        self._log.error("closing the %s stream hung; aborting it", kind)
        if await _call_in_thread(lambda: self._device.abort_session(session), CLOSE_TIMEOUT_S):
            self._host.closed(kind)
        else:  # still open as far as PortAudio knows: no rescan may run now
            self._log.error("aborting the %s stream hung too; abandoned", kind)

    async def ended(
        self,
        end: SessionEnd,
        *,
        worked: bool,
        why: str = "",
        tick: Callable[[], None] | None = None,
    ) -> None:
        """The session is closed; wait as the policy says before the next `open()`."""
        stage, kind = self._policy.stage, self._policy.kind
        if end is SessionEnd.YIELDED:
            self._count("rescan_yields")
            self._log.info("%s stream closed for a device rescan; reopening", stage)
            return
        self._lost = True
        self._count("device_lost")
        if worked:
            self._backoff.reset()
        delay = self._backoff.next()
        self._log.warning("%s device lost (%s); reopening in %.1f s", kind, why, delay)
        await self.pause(delay, tick)

    async def pause(self, seconds: float, tick: Callable[[], None] | None = None) -> None:
        """Wait `seconds` (BACKING_OFF), calling `tick` every `TICK_S` meanwhile."""
        self.state = DeviceState.BACKING_OFF
        if tick is None:
            await asyncio.sleep(seconds)
            return
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            tick()
            await asyncio.sleep(min(TICK_S, left))


async def _call_in_thread(fn: Callable[[], object], limit_s: float) -> bool:
    """Run `fn` in a daemon thread (a hung PortAudio call must not block exit); True if it
    returned (or raised) within `limit_s`."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def runner() -> None:
        try:
            fn()
        except Exception:
            log.exception("audio stream call failed")
        with contextlib.suppress(RuntimeError):  # the loop may be closed by now
            loop.call_soon_threadsafe(finish)

    threading.Thread(target=runner, name="audio-close", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), limit_s)
    except TimeoutError:
        return False
    return True
