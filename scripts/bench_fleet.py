#!/usr/bin/env python3
"""Fleet benchmark: rooms on one service account, per-room backoff against the shared budget.

Two fleets run side by side in one run on one Mosquitto, each against its own service
simulator enforcing one account's limits (`--limit` requests, 100 by default, and
100,000 tokens a minute; 429 beyond):

- **per-room backoff** (`room.account` unset): each room sends its speech and backs
  off its extra caption languages on its own 429s;
- **shared budget** (every room on `room.account = "bench"`): the rooms split the
  account (daemon/fleet/).

Each fleet has `--rooms` rooms (scripts/fleet_rooms.py) in dense meetings with `--langs`
extra caption languages.
`--daemons` of them are the real daemon (`daemon.app.Daemon`, each in its own process) on
a file source of the shared recordings in real time; the rest run the daemon's own
sequencer, caption lanes, translator (the real openai SDK over HTTP) and, in the shared
fleet, its `SharedBudget`, in this process, fed clips of real speech on a seeded schedule
(`--clips-per-min`, the same in both fleets). One of those rooms in each fleet vanishes
(stopped without a word: its record stays until the others forget it) at 40 % of the run
and comes back at 70 %.

Printed: the requests and 429 answers the simulators counted; each room's share of its
speech translated against its fleet's mean; the 10-second spans in which some room lost
speech while another sent an extra language; how long the other rooms took to count the
vanished room out and the returning room in, and to move their shares; the shared fleet's
`roomtranslate fleet` view at the end.

    .venv/bin/python scripts/bench_fleet.py                # 20 rooms, 3 minutes
    .venv/bin/python scripts/bench_fleet.py --minutes 10   # the figure in docs/testing.md
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from daemon.config import MqttSettings
from daemon.fleet.view import collect, format_view
from scripts.broker import Broker, Recorder
from scripts.fleet_rooms import (
    CAPTION_LANGS,
    DaemonRoom,
    Fleet,
    InProcessRoom,
    RoomFigures,
    Sample,
    meeting,
    room_names,
)
from scripts.soak import load_room_audio, recordings

ACCOUNT = "bench"
SAMPLE_S = 0.5
SPAN_S = 10.0
LEAVE_AT, JOIN_AT = 0.4, 0.7


# ---------------------------------------------------------------------------- the run


async def run_bench(args: argparse.Namespace, workdir: Path) -> None:
    seconds = args.minutes * 60
    speech = np.concatenate(await load_room_audio(recordings()))
    fleets = [
        Fleet(args, "per-room backoff", "baseline", ""),
        Fleet(args, "shared budget", "shared", ACCOUNT),
    ]
    with Broker() as broker, fleets[0].sim, fleets[1].sim:
        for fleet in fleets:
            fleet.port, fleet.speech = broker.port, speech
        recorders = [Recorder(broker, f"{f.prefix}/+/status") for f in fleets]
        async with recorders[0] as rec0, recorders[1] as rec1:
            events = await drive(args, fleets, (rec0, rec1), workdir, seconds)
            await show_view(broker, fleets[1])
            await stop_rooms(fleets)
        for fleet in fleets:
            fleet.sim_stats = fleet.sim.stats()
    report(args, fleets, seconds, events)


async def drive(
    args: argparse.Namespace,
    fleets: list[Fleet],
    recorders: tuple[Recorder, Recorder],
    workdir: Path,
    seconds: float,
) -> dict[str, float]:
    """Run the meetings; the times (s) the moving room left and joined."""
    names = list(room_names(args.rooms))
    schedules = {
        name: meeting(args.seed + i, seconds, args.clips_per_min) for i, name in enumerate(names)
    }
    for fleet in fleets:
        for i, name in enumerate(names):
            fleet.figures[name] = RoomFigures(name)
            if i < args.daemons:
                fleet.daemons.append(DaemonRoom(fleet, name, offset=3 * i))
                await fleet.daemons[-1].start_process(workdir)
    lags: list[float] = []
    probe = asyncio.create_task(lag_probe(lags))
    began = time.monotonic()
    for fleet in fleets:
        for name in names[args.daemons :]:
            fleet.rooms[name] = InProcessRoom(fleet, name, schedules[name])
            fleet.rooms[name].start(began)
    mover = names[-1]
    events = {"leave": LEAVE_AT * seconds, "join": JOIN_AT * seconds}
    print(f"bench_fleet: running {seconds / 60:g} min; {mover} leaves at {events['leave']:.0f} s, "
          f"joins at {events['join']:.0f} s", flush=True)  # fmt: skip
    left = joined = False
    shown = 0.0
    while (t := time.monotonic() - began) < seconds:
        for fleet, rec in zip(fleets, recorders, strict=True):
            for message in rec.messages:
                fleet.on_status(message.topic, message.payload)
            rec.messages.clear()
            fleet.sample(t)
        if not left and t >= events["leave"]:
            left = True
            events["leave"] = t
            for fleet in reversed(fleets):  # the shared one first: its time is measured
                await fleet.rooms.pop(mover).stop()
        if left and not joined and t >= events["join"]:
            joined = True
            events["join"] = t
            for fleet in reversed(fleets):
                fleet.figures[mover].restarted()
                fleet.rooms[mover] = InProcessRoom(fleet, mover, schedules[mover])
                fleet.rooms[mover].start(began)
        if t - shown >= 30:
            shown = t
            progress(fleets, t)
        await asyncio.sleep(SAMPLE_S)
    probe.cancel()
    lags.sort()
    print(
        f"bench_fleet: this process's event loop lagged {lags[len(lags) // 2] * 1000:.0f} ms "
        f"(median), {lags[int(len(lags) * 0.99)] * 1000:.0f} ms (99 %), {lags[-1]:.1f} s (most)"
    )
    return {**events, "mover": names.index(mover)}


async def lag_probe(lags: list[float]) -> None:
    """How late a 0.1 s sleep wakes (the in-process rooms share this loop)."""
    while True:
        start = time.monotonic()
        await asyncio.sleep(0.1)
        lags.append(time.monotonic() - start - 0.1)


def progress(fleets: list[Fleet], t: float) -> None:
    parts = []
    for fleet in fleets:
        lasts = [f.last for f in fleet.figures.values()]
        parts.append(
            f"{fleet.prefix}: {sum(s.translated for s in lasts)} translated, "
            f"{sum(s.lost for s in lasts)} lost, {sum(s.extra_sent for s in lasts)} extra sent"
        )
    print(f"  {t:5.0f} s  " + "; ".join(parts), flush=True)


async def show_view(broker: Broker, fleet: Fleet) -> None:
    settings = MqttSettings(host=broker.host, port=broker.port, prefix=fleet.prefix)
    print(f"\n`roomtranslate fleet` on the {fleet.title} fleet:")
    print(format_view(await collect(settings, 1.0)))


async def stop_rooms(fleets: list[Fleet]) -> None:
    for fleet in fleets:
        for room in fleet.rooms.values():
            if room.budget is not None:
                await room.budget.close()
            await room.stop()
        for daemon in fleet.daemons:
            await daemon.stop()


# ---------------------------------------------------------------------------- report


def report(
    args: argparse.Namespace, fleets: list[Fleet], seconds: float, events: dict[str, float]
) -> None:
    print(
        f"\nbench_fleet: {args.rooms} rooms per fleet ({args.daemons} real daemons, the rest "
        f"in-process), {seconds / 60:g} min, {len(fleets[0].langs)} extra caption languages, "
        f"{args.clips_per_min:g} clips a minute per in-process room; one account of "
        f"{args.limit} requests and 100,000 tokens a minute per fleet\n"
    )
    rows: list[tuple[str, Callable[[Fleet], str]]] = [
        ("requests the service received", lambda f: str(f.sim_stats["requests"])),
        ("429 answers", _share_429),
        ("speech translated", _translated),
        ("a room's share of its speech translated / the mean", _fairness),
        ("extra-language requests sent", _extra_sent),
        ("10-s spans with speech lost while extras were sent", _priority),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"{'':{width}}  {fleets[0].title:>18}  {fleets[1].title:>18}")
    for label, cell in rows:
        print(f"{label:{width}}  {cell(fleets[0]):>18}  {cell(fleets[1]):>18}")
    shared = fleets[1]
    mover = list(shared.figures)[int(events["mover"])]
    for event, what in (("leave", "vanishes: the others count it out"), ("join", "joins: in")):
        counted, moved = settling(shared, events[event], event, mover)
        print(f"{mover} {what} after {counted}, their shares settle after {moved}")


def _extra_sent(fleet: Fleet) -> str:
    return str(sum(r.last.extra_sent for r in fleet.figures.values()))


def _share_429(fleet: Fleet) -> str:
    stats = fleet.sim_stats
    refused = stats["by_status"].get("429", 0)
    return f"{refused} ({100 * refused / max(1, stats['requests']):.1f} %)"


def _translated(fleet: Fleet) -> str:
    lasts = [r.last for r in fleet.figures.values()]
    done = sum(s.translated for s in lasts)
    ended = done + sum(s.lost for s in lasts)
    return f"{done} of {ended} ({100 * done / max(1, ended):.0f} %)"


def _fairness(fleet: Fleet) -> str:
    shares = [r.translated_share() for r in fleet.figures.values()]
    mean = statistics.fmean(shares)
    if mean == 0:
        return "-"
    return f"{min(shares) / mean:.2f}-{max(shares) / mean:.2f}"


def _priority(fleet: Fleet) -> str:
    """Spans in which a room lost speech while another room sent an extra language."""
    spans: dict[int, tuple[set[str], set[str]]] = {}
    for name, figures in fleet.figures.items():
        previous = Sample(0, 0, 0, 0)
        for s in figures.samples:
            span = spans.setdefault(int(s.t // SPAN_S), (set(), set()))
            if s.lost > previous.lost:
                span[0].add(name)
            if s.extra_sent > previous.extra_sent:
                span[1].add(name)
            previous = s
    bad = sum(1 for lost, sent in spans.values() if lost and sent)
    return f"{bad} of {len(spans)}"


def settling(fleet: Fleet, at: float, event: str, mover: str) -> tuple[str, str]:
    """Seconds after `at` until the slowest other room counts the new number of rooms,
    and until the others' mean share has moved half the way from where it was in the
    5 s before to where it is 10-20 s after."""
    others = [f for name, f in fleet.figures.items() if f.samples and name != mover]
    counts = [s.rooms for f in others for s in f.samples if at - 2 <= s.t < at and s.rooms]
    if not counts:
        return "-", "-"
    target = statistics.mode(counts) + (-1 if event == "leave" else 1)
    firsts = []
    for room in others:
        first = next((s.t for s in room.samples if s.t >= at and s.rooms == target), None)
        if first is None:
            return "never", "-"
        firsts.append((first - at, room.name))
    slowest, name = max(firsts)
    means = _mean_shares(others, at - 5)
    before = statistics.fmean(m for t, m in means if t < at)
    after = statistics.fmean(m for t, m in means if at + 10 <= t <= at + 20)
    half = abs(after - before) / 2
    moved = next((t - at for t, m in means if t > at and abs(m - before) >= half), None)
    return f"{slowest:.1f} s ({name})", "never" if moved is None else f"{moved:.1f} s"


def _mean_shares(rooms: list[RoomFigures], since: float) -> list[tuple[float, float]]:
    """(time, the rooms' mean share) from `since` on."""
    by_time: dict[float, list[float]] = {}
    for room in rooms:
        for s in room.samples:
            if s.t >= since and s.share is not None:
                by_time.setdefault(s.t, []).append(s.share)
    return [(t, statistics.fmean(shares)) for t, shares in sorted(by_time.items())]


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=20, help="rooms per fleet (20)")
    parser.add_argument("--daemons", type=int, default=2, help="of them real daemons (2)")
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the run (3)")
    parser.add_argument("--langs", type=int, default=2, help="extra caption languages (2)")
    parser.add_argument("--clips-per-min", type=float, default=8.0, help="speech clips a minute")
    parser.add_argument("--limit", type=int, default=100, help="the account's requests/min")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--confirm", choices=("off", "silero"), default="off")
    args = parser.parse_args(argv)
    if not 1 <= args.langs <= len(CAPTION_LANGS):
        parser.error(f"--langs: 1 to {len(CAPTION_LANGS)}")
    if not 0 <= args.daemons < args.rooms:
        parser.error("--daemons: from 0 to one fewer than --rooms (one room leaves and joins)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="roomtranslate-bench-fleet-"))
    logging.basicConfig(filename=workdir / "bench.log", level=logging.WARNING)
    print(f"bench_fleet: logs in {workdir}")
    asyncio.run(run_bench(args, workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
