#!/usr/bin/env python3
"""Drive `daemon.playback.Playback` on a real output device from a JSON scenario.

Run it in a process whose environment sees the audio rig (PortAudio reads
`$HOME/.asoundrc` when sounddevice is imported):

    python tests/drive_playback.py scenario.json

Prints one JSON object per line on stdout: {"ev": "ready", ...} when the device is open,
every playback event (started / drained / skipped, with "emitted" = monotonic time the
event reached the driver), "fed" when a feed step has queued its last chunk, "probe"
lines (audible_until and state), and at the end {"ev": "done", "drained": ..., "counters":
...}. All times are time.monotonic(), comparable across processes.

Scenario: {"device": "rig_spk", "max_backlog_s": 20, "max_rate": 1.0 (the default: as
           spoken), "drain_timeout": 10,
           "format": {"rate": 48000, "channels": 2} (a profile's [output]; optional),
           "steps": [step, ...]}. Steps run in order:
  {"op": "start", "utt": 1}                 start_utterance
  {"op": "feed", "utt": 1, "freq": 500, "seconds": 0.8, "amp": 0.3,
   "chunk": 1237, "interval": 0.01, "end": true}   a tone, streamed in chunks
  {"op": "end", "utt": 1}                   end_utterance
  {"op": "volume", "volume": 50, "mute": false}
  {"op": "sleep", "s": 0.5}
  {"op": "wait_drained", "utt": 1, "timeout": 5}
  {"op": "spawn", "steps": [...]}           run these steps as a concurrent task
  {"op": "join"}                            wait for the spawned tasks
  {"op": "probe", "every": 0.05}            print audible_until every `every` s until done
  {"op": "stream"}                          print whether the output stream is running
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.counters import Counters
from daemon.playback import (
    Playback,
    PlaybackDrained,
    PlaybackEvent,
    PlaybackSkipped,
    PlaybackStarted,
)
from daemon.profiles import OutputProfile
from daemon.values import OUTPUT_RATE, Pcm


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def tone(freq: float, seconds: float, amp: float) -> Pcm:
    t = np.arange(round(seconds * OUTPUT_RATE)) / OUTPUT_RATE
    return np.round(np.sin(2 * np.pi * freq * t) * amp * 32767).astype(np.int16)


class Driver:
    def __init__(self, scenario: dict[str, Any]) -> None:
        self.scenario = scenario
        self.counters = Counters()
        self.drained: dict[int, asyncio.Event] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.probes: list[asyncio.Task[None]] = []
        self.done = False
        self.playback = Playback(
            scenario.get("device", "rig_spk"),
            self.counters,
            max_backlog_s=float(scenario.get("max_backlog_s", 20.0)),
            max_rate=float(scenario.get("max_rate", 1.0)),
            on_event=self.on_event,
            fmt=OutputProfile(**scenario["format"]) if "format" in scenario else None,
        )

    def on_event(self, event: PlaybackEvent) -> None:
        now = time.monotonic()
        if isinstance(event, PlaybackStarted):
            emit(
                ev="started", utt=event.utt_id, t=event.t, audible_at=event.audible_at, emitted=now
            )
        elif isinstance(event, PlaybackDrained):
            emit(ev="drained", utt=event.utt_id, t=event.t, emitted=now)
            self.flag(event.utt_id).set()
        elif isinstance(event, PlaybackSkipped):
            emit(ev="skipped", utt=event.utt_id, seconds=event.seconds, reason=event.reason)
            self.flag(event.utt_id).set()

    def flag(self, utt: int) -> asyncio.Event:
        return self.drained.setdefault(utt, asyncio.Event())

    async def main(self) -> None:
        runner = asyncio.create_task(self.playback.run())
        deadline = time.monotonic() + 5.0
        while self.playback.state == "unavailable":
            if time.monotonic() > deadline:
                raise RuntimeError("the playback device did not open")
            await asyncio.sleep(0.01)
        pb = self.playback
        emit(
            ev="ready",
            t=time.monotonic(),
            device=pb.device_name,
            rate=pb.rate,
            channels=pb.channels,
            latency=pb.latency,
        )
        await self.steps(self.scenario["steps"])
        await asyncio.gather(*self.tasks)
        ok = await pb.drain(float(self.scenario.get("drain_timeout", 10.0)))
        self.done = True
        await asyncio.gather(*self.probes)
        emit(
            ev="done",
            t=time.monotonic(),
            drained=ok,
            counters=self.counters.snapshot(),
            audible_until=pb.audible_until(),
            state=pb.state,
        )
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        emit(ev="closed", t=time.monotonic())

    async def steps(self, steps: list[dict[str, Any]]) -> None:
        for step in steps:
            await self.step(step)

    async def step(self, step: dict[str, Any]) -> None:
        op = step["op"]
        pb = self.playback
        if op == "start":
            pb.start_utterance(step["utt"])
        elif op == "feed":
            await self.feed(step)
        elif op == "end":
            pb.end_utterance(step["utt"])
        elif op == "volume":
            pb.set_volume(step["volume"], step.get("mute", False))
            emit(ev="volume", t=time.monotonic(), volume=step["volume"], mute=step.get("mute"))
        elif op == "sleep":
            await asyncio.sleep(step["s"])
        elif op == "wait_drained":
            await asyncio.wait_for(self.flag(step["utt"]).wait(), step.get("timeout", 5.0))
        elif op == "spawn":
            self.tasks.append(asyncio.create_task(self.steps(step["steps"])))
        elif op == "join":
            await asyncio.gather(*self.tasks)
            self.tasks.clear()
        elif op == "stream":
            emit(ev="stream", t=time.monotonic(), running=pb.output_running, state=pb.state)
        elif op == "probe":
            self.probes.append(asyncio.create_task(self.probe(step.get("every", 0.05))))
        else:
            raise ValueError(f"unknown op {op!r}")

    async def feed(self, step: dict[str, Any]) -> None:
        pcm = tone(step["freq"], step["seconds"], step.get("amp", 0.3))
        chunk = int(step.get("chunk", 1237))
        interval = float(step.get("interval", 0.01))
        for offset in range(0, len(pcm), chunk):
            self.playback.feed(step["utt"], pcm[offset : offset + chunk])
            await asyncio.sleep(interval)
        emit(ev="fed", utt=step["utt"], t=time.monotonic())
        if step.get("end", True):
            self.playback.end_utterance(step["utt"])

    async def probe(self, every: float) -> None:
        while not self.done:
            now = time.monotonic()
            emit(
                ev="probe", now=now, until=self.playback.audible_until(), state=self.playback.state
            )
            await asyncio.sleep(every)


def main() -> None:
    scenario = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(Driver(scenario).main())


if __name__ == "__main__":
    main()
