#!/usr/bin/env python3
"""Benchmark: what remote configuration costs the daemon's event loop.

Feeds `config/set` messages straight into the control plane (no broker, so only our own
work is measured) and times, per message: a rejected request (unknown key and a value
out of range), an unchanged request (validated, nothing to save) and an applied change
(validated, applied to LiveRoom, saved with fsync in a thread). The baseline, in the same
run: `json.loads` + `RoomSettings.model_validate` of the same payload, the least any
validation can cost. Also the time the event loop is held at most by one message.

    .venv/bin/python scripts/bench_control.py [--count N] [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from daemon.config import LiveRoom, RoomSettings, Settings
from daemon.control import ControlPlane
from daemon.counters import Counters

SET = "roomtranslate/room-1/config/set"


class Sink:
    """Counts what the control plane publishes; `answered` is set by each answer."""

    def __init__(self) -> None:
        self.count = 0
        self.answered = asyncio.Event()

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        self.count += 1
        if topic.endswith("/config/response"):
            self.answered.set()


async def lag_probe(stop: asyncio.Event, lags: list[float]) -> None:
    """How late a 1 ms timer fires: the longest time the loop was held."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        began = loop.time()
        await asyncio.sleep(0.001)
        lags.append(loop.time() - began - 0.001)


async def run_kind(plane: ControlPlane, sink: Sink, payloads: list[bytes]) -> tuple[float, float]:
    """Seconds per message (one at a time, until its answer) and the worst loop lag."""
    worker = asyncio.create_task(plane.run())
    stop, lags = asyncio.Event(), []
    probe = asyncio.create_task(lag_probe(stop, lags))
    await asyncio.sleep(0.01)
    began = time.perf_counter()
    for payload in payloads:
        sink.answered.clear()
        plane.receive(SET, payload, False)
        await sink.answered.wait()
    elapsed = time.perf_counter() - began
    stop.set()
    await probe
    worker.cancel()
    await asyncio.gather(worker, return_exceptions=True)
    return elapsed / len(payloads), max(lags, default=0.0)


async def idle_lag(seconds: float) -> float:
    """The worst lag of the probe on an idle loop: the machine's own noise."""
    stop, lags = asyncio.Event(), []
    probe = asyncio.create_task(lag_probe(stop, lags))
    await asyncio.sleep(seconds)
    stop.set()
    await probe
    return max(lags, default=0.0)


def baseline(payloads: list[bytes]) -> float:
    began = time.perf_counter()
    for payload in payloads:
        data: dict[str, Any] = json.loads(payload)
        data.pop("transaction", None)
        with contextlib.suppress(ValueError):
            RoomSettings.model_validate({**RoomSettings().model_dump(), **data})
    return (time.perf_counter() - began) / len(payloads)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-control-") as tmp:
        state = args.state_dir or Path(tmp)
        settings = Settings(
            state_dir=state, mqtt={"room_id": "room-1"}, remote_config={"changes_per_s": 1000.0}
        )
        room = LiveRoom(settings.room)
        plane = ControlPlane(settings, room, Counters(), lambda what, why: None)
        sink = Sink()
        plane.attach(sink)
        n = args.count
        kinds = {
            "rejected": [
                json.dumps({"volume": 500, "loudness": 1, "transaction": i}).encode()
                for i in range(n)
            ],
            "unchanged": [json.dumps({"volume": 80, "transaction": i}).encode() for i in range(n)],
            "applied": [
                json.dumps({"volume": i % 100, "mute": i % 2 == 0, "transaction": i}).encode()
                for i in range(n)
            ],
        }
        print(f"control plane, {n} config/set messages per kind, state in {state}")
        for kind, payloads in kinds.items():
            per, lag = await run_kind(plane, sink, payloads)
            base = baseline(payloads)
            print(
                f"  {kind:9s}: {per * 1e6:8.1f} µs per message (baseline json+pydantic "
                f"{base * 1e6:6.1f} µs, ratio {per / base:6.1f}×); "
                f"longest loop hold {lag * 1e3:.2f} ms"
            )
        print(f"  idle loop (no messages), longest hold {await idle_lag(1.0) * 1e3:.2f} ms")
        size = statistics.mean([len(p) for p in kinds["applied"]])
        print(f"  payload {size:.0f} bytes; {sink.count} messages published")


if __name__ == "__main__":
    asyncio.run(main())
