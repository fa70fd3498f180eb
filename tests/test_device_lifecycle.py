"""The audio devices' one lifecycle (daemon/device_lifecycle.py) with a fake device: what
is counted, when the device is closed, when it gives way to a rescan."""

from __future__ import annotations

import asyncio
import threading

import pytest

import daemon.device_lifecycle as lifecycle_module
from daemon.counters import Counters
from daemon.device_lifecycle import (
    DeviceLifecycle,
    DeviceOpenError,
    DeviceState,
    LifecyclePolicy,
    SessionEnd,
)
from daemon.devices import DeviceHost

FAST = LifecyclePolicy("playback", "output", reopen_min_s=0.001, reopen_max_s=0.002, stall_s=1.0)


class FakeDevice:
    """Sessions are numbers; `fail_opens` / `fail_starts` refuse that many attempts."""

    def __init__(self) -> None:
        self.fail_opens = 0
        self.fail_starts = 0
        self.opens = 0
        self.active: list[int] = []
        self.closed: list[int] = []
        self.aborted: list[int] = []
        self.gate: threading.Event | None = None  # open_session waits for it
        self.close_gate: threading.Event | None = None  # close_session waits for it
        self.abort_hangs = False  # ... and abort_session too

    def open_session(self) -> int:
        if self.gate is not None:
            self.gate.wait(5)
        self.opens += 1
        if self.fail_opens:
            self.fail_opens -= 1
            raise DeviceOpenError("no such device")
        return self.opens

    def activate_session(self, session: int) -> None:
        if self.fail_starts:
            self.fail_starts -= 1
            raise DeviceOpenError("cannot start")
        self.active.append(session)

    def close_session(self, session: int) -> None:
        if self.close_gate is not None:
            self.close_gate.wait(5)
        self.closed.append(session)

    def abort_session(self, session: int) -> None:
        self.aborted.append(session)
        if self.close_gate is not None and self.abort_hangs:
            self.close_gate.wait(5)


def make(
    policy: LifecyclePolicy = FAST, host: DeviceHost | None = None, allow: bool = True
) -> tuple[DeviceLifecycle[int], FakeDevice, Counters]:
    device, counters = FakeDevice(), Counters()
    lifecycle = DeviceLifecycle(
        device,
        policy,
        host if host is not None else DeviceHost.fixed(),
        counters,
        may_yield=lambda: allow,
    )
    return lifecycle, device, counters


async def test_open_failures_are_counted_and_retried_until_the_device_opens() -> None:
    lifecycle, device, counters = make()
    device.fail_opens = 2
    session = await lifecycle.open()
    assert session == 3 and device.active == [3]
    assert lifecycle.state is DeviceState.OPEN
    assert counters.get("playback_open_failures") == 2
    assert counters.get("playback_reopens") == 0  # the first open is not a reopen


async def test_a_start_that_fails_closes_the_session_and_counts_an_open_failure() -> None:
    lifecycle, device, counters = make()
    device.fail_starts = 1
    session = await lifecycle.open()
    assert device.closed == [1] and device.active == [session] == [2]
    assert counters.get("playback_open_failures") == 1


async def test_an_open_after_a_loss_is_a_reopen_and_after_a_rescan_yield_it_is_not() -> None:
    lifecycle, device, counters = make()
    first = await lifecycle.open()
    await lifecycle.close(first)
    assert lifecycle.state is DeviceState.CLOSED
    await lifecycle.ended(SessionEnd.LOST, worked=True, why="stream stopped")
    second = await lifecycle.open()
    assert counters.get("playback_device_lost") == 1
    assert counters.get("playback_reopens") == 1
    await lifecycle.close(second)
    await lifecycle.ended(SessionEnd.YIELDED, worked=True)
    await lifecycle.open()
    assert counters.get("playback_rescan_yields") == 1
    assert counters.get("playback_reopens") == 1
    assert counters.get("playback_device_lost") == 1
    assert device.closed == [first, second]


async def test_a_session_that_did_not_work_lets_the_backoff_grow() -> None:
    delays: list[float] = []
    lifecycle, _, _ = make(LifecyclePolicy("capture", "input", 0.001, 0.004))

    async def pause(seconds: float, tick: object = None) -> None:
        delays.append(seconds)

    lifecycle.pause = pause  # type: ignore[method-assign]
    for worked in (False, False, False, True):
        await lifecycle.ended(SessionEnd.LOST, worked=worked)
    assert delays == [0.001, 0.002, 0.004, 0.001]


def test_no_callback_for_the_stall_time_is_a_stall() -> None:
    lifecycle, _, counters = make()
    assert not lifecycle.stalled(last_callback=10.0, now=10.9)
    assert lifecycle.stalled(last_callback=10.0, now=11.1)
    assert counters.get("playback_stalls") == 1


def test_it_gives_way_only_when_the_other_device_is_missing_and_the_stage_allows() -> None:
    host = DeviceHost(None, interval_s=0.0, signature=lambda: 0)
    busy, _, _ = make(host=host, allow=False)
    idle, _, _ = make(host=host, allow=True)
    rare, _, _ = make(LifecyclePolicy("capture", "input", yield_every_s=60.0), host=host)
    assert not idle.should_yield()  # nothing is missing
    host.missing("output")
    assert not idle.should_yield()  # its own device missing: nothing to give way for
    host.missing("input")
    assert idle.should_yield()
    assert not busy.should_yield()
    assert not rare.should_yield()  # it gave way (or started) less than a minute ago


async def test_a_hung_close_is_aborted_and_a_hung_stream_keeps_rescans_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lifecycle_module, "CLOSE_TIMEOUT_S", 0.05)
    host = DeviceHost(None, interval_s=0.0, signature=lambda: 0)
    lifecycle, device, _ = make(host=host)
    device.close_gate = threading.Event()
    first = await lifecycle.open()
    await lifecycle.close(first)  # close hangs, abort works: closed
    assert device.aborted == [first] and device.closed == []
    assert "output" not in host._open
    device.abort_hangs = True
    second = await lifecycle.open()
    await lifecycle.close(second)  # both hang: abandoned, still open for PortAudio
    assert device.aborted == [first, second]
    assert "output" in host._open  # no rescan may run
    device.close_gate.set()


async def test_a_task_cancelled_while_the_device_opens_closes_what_it_opened() -> None:
    lifecycle, device, _ = make()
    device.gate = threading.Event()
    task = asyncio.create_task(lifecycle.open())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    device.gate.set()
    for _ in range(100):
        if device.closed:
            break
        await asyncio.sleep(0.01)
    assert device.closed == [1] and device.active == []
