#!/usr/bin/env python3
"""Accelerated soak: a day of a busy room through the live pipeline in minutes.

The real `daemon.app.Daemon` runs with a file source instead of the microphone: the
shared recordings (with pauses between them, looped) are fed `--speed` times faster
than real time through the echo stage, segmenter, sequencer, budget and translator
(the real `openai` SDK over HTTP) to the service simulator (`daemon.simulator`, its own
process), and the captions and status go to a real Mosquitto (its own process). While
it runs, the simulator's faults cycle (429, 500, cuts, stream errors, stalls, garbage,
401) and the broker is restarted every `--broker-restart-s`. The figures of the daemon
process — RSS, open files, asyncio tasks, threads — are printed over time; at the end
every utterance cut must be accounted for: translated + failed + dropped = cut.

    .venv/bin/python scripts/soak.py                  # 24 h of room audio at 100×, ~15 min
    .venv/bin/python scripts/soak.py --hours 1 --speed 60   # a quick one

The soak re-executes itself on glibc's malloc, as `roomtranslate run` does, and the
daemon's heap trim runs every 30 s of room time (daemon/heap.py). There is no playback
device here: playback keeps trying its device (and the device re-enumeration with it),
which is part of what is soaked. Exit status 0 when the
accounting holds and the figures stayed flat (RSS growth under `--max-rss-growth-mb`
after the warm-up, open files and threads back to their warm-up level), else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.app import Daemon
from daemon.config import Settings, apply_overrides
from daemon.filesource import FileSource
from daemon.heap import TRIM_EVERY_S, exec_with_system_malloc, malloc_trim
from daemon.values import SAMPLE_RATE, Frame, Pcm
from scripts.broker import Broker
from scripts.paths import AUDIO_DIR
from scripts.simproc import Simulator
from scripts.soak_memory import HeapTrace, MemoryDetail

FAULT_CYCLE = ["429", "500", "cut", "cut0", "stream_error", "stall", "garbage", "401"]
FRAME_MS = 30
PACE_FRAMES = 32  # frames between pacing sleeps
RSS_MEDIAN_OF = 5  # reports
QUIET_RMS = 30  # the room's noise between the recordings (int16)
AT_REST = (0.2, 0.4, 0.6, 0.8)  # of the room audio: where the room falls quiet to be measured
QUIET_FIRST_S = 5.0  # room time, for the clip being spoken to end
REST_WAIT_S = 60.0  # at most, for what was cut to finish


# ------------------------------------------------------------------------------- audio


def recordings() -> list[Path]:
    """The shared speech recordings (not the noise ones)."""
    return sorted(p for p in AUDIO_DIR.glob("*.wav") if not p.name.startswith("noise_"))


async def load_room_audio(paths: list[Path]) -> list[Pcm]:
    """The recordings as 16 kHz mono int16, each followed by a pause of 1-3 s."""
    frame = SAMPLE_RATE * FRAME_MS // 1000
    rng = np.random.default_rng(7)
    pieces: list[Pcm] = []
    for path in paths:
        source = FileSource(path, frame)
        pcm = np.concatenate([frame.pcm async for frame in source.frames()])
        pause = (rng.standard_normal(int(rng.uniform(1.0, 3.0) * SAMPLE_RATE)) * QUIET_RMS).astype(
            np.int16
        )
        pieces.append(np.concatenate((pcm, pause)))
    if not pieces:
        raise SystemExit(f"soak: no recordings in {AUDIO_DIR}")
    return pieces


class PacedSource:
    """The room audio looped for `seconds` of room time, `speed` times real time.

    Provides what the daemon's listener reads from a capture: frames on a 16 kHz clock,
    and the clock's mapping to (room) wall time and monotonic time.
    """

    device_name = "soak-file"

    def __init__(self, pieces: list[Pcm], seconds: float, speed: float) -> None:
        self._pieces = pieces
        self._samples = round(seconds * SAMPLE_RATE)
        self._speed = speed
        self._frame = SAMPLE_RATE * FRAME_MS // 1000
        self._t0 = time.time()
        self._m0 = time.monotonic()
        self.position = 0
        self.done = asyncio.Event()
        self._lull = False
        quiet = np.random.default_rng(3).standard_normal(self._frame) * QUIET_RMS
        self._quiet: Pcm = quiet.astype(np.int16)

    def wall_time(self, sample: int) -> float:
        return self._t0 + sample / SAMPLE_RATE

    def monotonic_time(self, sample: int) -> float:
        return self._m0 + sample / SAMPLE_RATE / self._speed

    @property
    def speed(self) -> float:
        return self._speed

    def lull(self, on: bool) -> None:
        """While on, the room is quiet (its noise floor, as between the recordings)."""
        self._lull = on

    async def frames(self) -> AsyncIterator[Frame]:
        self._t0, self._m0 = time.time(), time.monotonic()
        speech = self._speech_frames()
        count = 0
        while self.position < self._samples:
            yield Frame(self.position, self._quiet if self._lull else next(speech))
            self.position += self._frame
            count += 1
            if count % PACE_FRAMES == 0:
                due = self._m0 + self.position / SAMPLE_RATE / self._speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        self.done.set()
        await asyncio.Event().wait()  # a microphone never ends; the soak stops the daemon

    def _speech_frames(self) -> Iterator[Pcm]:
        n = self._frame
        while True:
            for pcm in self._pieces:
                for offset in range(0, len(pcm) - n + 1, n):
                    yield pcm[offset : offset + n]


# ----------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Sample:
    wall_s: float
    room_h: float
    rss_mb: float
    fds: int
    tasks: int
    threads: int
    cut: int
    translated: int
    failed: int
    dropped: int

    def line(self) -> str:
        return (
            f"{self.wall_s:7.0f} s  room {self.room_h:5.2f} h  RSS {self.rss_mb:6.1f} MB  "
            f"fds {self.fds:3d}  tasks {self.tasks:3d}  threads {self.threads:2d}  "
            f"cut {self.cut:6d}  translated {self.translated:6d}  failed {self.failed:5d}  "
            f"dropped {self.dropped:5d}"
        )


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sample(daemon: Daemon, source: PacedSource, began: float) -> Sample:
    c = daemon.counters
    return Sample(
        wall_s=time.monotonic() - began,
        room_h=source.position / SAMPLE_RATE / 3600,
        rss_mb=rss_mb(),
        fds=len(os.listdir("/proc/self/fd")),
        tasks=len(asyncio.all_tasks()),
        threads=threading.active_count(),
        cut=round(c.get("utterances")),
        translated=round(c.get("outcomes.translated")),
        failed=round(c.get("outcomes.failed")),
        dropped=round(c.get("outcomes.dropped")),
    )


# -------------------------------------------------------------------------------- soak


def soak_settings(args: argparse.Namespace, sim: Simulator, broker: Broker) -> Settings:
    base = Settings()
    return apply_overrides(
        base,
        {
            "room": {"target_lang": "zh", "daily_audio_s": 0.0},
            # Silero's clip confirmation costs ~12 ms of CPU per second of audio: a day of
            # it alone would take longer than the soak. `--confirm silero` keeps it.
            "segmenter": {"confirm": args.confirm},
            "api": {
                "base_url": sim.base_url,
                "read_timeout_s": 1.0,
                "fatal_pause_s": 0.2,
                "retry_after_max_s": 2.0,
                "backoff_base_s": 0.05,
                "backoff_max_s": 0.2,
                "check_key_at_start": True,
            },
            "pipeline": {"max_in_flight": 8, "queue_size": 16},
            "audio": {"echo_guard": "off", "output_device": "soak-no-such-speaker"},
            "mqtt": {
                "host": "127.0.0.1",
                "port": broker.port,
                "room_id": "soak-room",
                "device_id": "50a550a550a5",
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 1.0,
                "status_interval_s": 5.0,
            },
        },
    ).model_copy(update={"state_dir": args.workdir / "state"})


async def faults_loop(sim: Simulator, every_s: float, stop: asyncio.Event) -> int:
    cycles = 0
    rng = random.Random(1)
    while not stop.is_set():
        faults = FAULT_CYCLE[:]
        rng.shuffle(faults)
        await asyncio.to_thread(sim.control, faults=faults)
        cycles += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
    await asyncio.to_thread(sim.control, faults=[])
    return cycles


async def broker_loop(broker: Broker, every_s: float, stop: asyncio.Event) -> int:
    restarts = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if not stop.is_set():
            await asyncio.to_thread(broker.restart)
            restarts += 1
    return restarts


async def run_soak(args: argparse.Namespace) -> int:
    pieces = await load_room_audio(recordings())
    sim = Simulator(
        "--first-text-ms", "20", "--first-audio-ms", "20", "--chunk-ms", "1",
        "--jitter-ms", "30", "--retry-after", "0.2", "--stall-s", "2",
        "--audio-chunk-ms", "500",
    )  # fmt: skip
    with Broker() as broker, sim:
        settings = soak_settings(args, sim, broker)
        source = PacedSource(pieces, args.hours * 3600, args.speed)
        daemon = Daemon(
            settings,
            "soak",
            None,
            settings.audio.output_device,
            source=source,
            trim_every_s=TRIM_EVERY_S / args.speed,  # every 30 s of room time, as in a room
        )
        return await drive(args, daemon, source, sim, broker)


async def drive(
    args: argparse.Namespace,
    daemon: Daemon,
    source: PacedSource,
    sim: Simulator,
    broker: Broker,
) -> int:
    stop = asyncio.Event()
    began = time.monotonic()
    run = asyncio.create_task(daemon.run())
    faults = asyncio.create_task(faults_loop(sim, args.fault_every_s, stop))
    restarts = asyncio.create_task(broker_loop(broker, args.broker_restart_s, stop))
    samples: list[Sample] = []
    trace = HeapTrace(args.trace_malloc, args.trace_frames) if args.trace_malloc else None
    detail = MemoryDetail()
    rests: list[Sample] = []
    total = args.hours * 3600 * SAMPLE_RATE
    print(f"soak: {args.hours:g} h of room audio at {args.speed:g}× real time")
    while not source.done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(source.done.wait(), args.report_s)
        if len(rests) < len(AT_REST) and source.position >= AT_REST[len(rests)] * total:
            rests.append(await at_rest(daemon, source, began))
            print(rests[-1].line(), "(at rest)", flush=True)
        if args.malloc_trim:
            malloc_trim()
        samples.append(sample(daemon, source, began))
        print(samples[-1].line(), flush=True)
        if args.memory_detail:
            print(detail.line(), flush=True)
        if trace is not None:
            if len(samples) == args.trace_after:
                trace.mark()
            else:
                trace.report()
    # The source is done: let what was cut finish, then stop as systemd would.
    await until_settled(daemon)
    stop.set()
    cycles = await faults
    broker_restarts = await restarts
    malloc_trim()
    final = sample(daemon, source, began)
    final_detail = detail.line() if args.memory_detail else ""
    daemon.stop()
    await run
    after = sample(daemon, source, began)  # shutdown dropped what was left (counted)
    print(final.line())
    if args.memory_detail:
        print(final_detail)
    return report(
        samples=samples,
        rests=rests,
        final=final,
        after=after,
        cycles=cycles,
        restarts=broker_restarts,
        requests=int(sim.stats()["requests"]),
        daemon=daemon,
        args=args,
    )


async def at_rest(daemon: Daemon, source: PacedSource, began: float) -> Sample:
    """The room falls quiet until what was cut is translated (or failed), the heap is
    trimmed, and the figures are taken: memory the daemon keeps, not what is in flight."""
    source.lull(True)
    try:
        await asyncio.sleep(QUIET_FIRST_S / source.speed)  # the clip being spoken ends
        await until_settled(daemon)
        malloc_trim()
        return sample(daemon, source, began)
    finally:
        source.lull(False)


async def until_settled(daemon: Daemon) -> None:
    for _ in range(round(REST_WAIT_S / 0.2)):
        if settled(daemon):
            return
        await asyncio.sleep(0.2)


def settled(daemon: Daemon) -> bool:
    c = daemon.counters
    ended = c.get("outcomes.translated") + c.get("outcomes.failed") + c.get("outcomes.dropped")
    return ended >= c.get("utterances") and daemon.sequencer.in_flight == 0


def report(
    *,
    samples: list[Sample],
    rests: list[Sample],
    final: Sample,
    after: Sample,
    cycles: int,
    restarts: int,
    requests: int,
    daemon: Daemon,
    args: argparse.Namespace,
) -> int:
    at = min(len(samples) - 1, max(1, len(samples) // 5))  # the warm-up is over
    warm = samples[at]
    # Growth is judged at rest: the room quiet, what was cut translated, the heap trimmed
    # (`at_rest`), at a fifth of the run against the end. A report taken while the room
    # talks moves ±3 MB with what is in flight (clips, replies, queues through a fault
    # or a broker restart); the medians of a few such reports are printed beside it.
    n = min(RSS_MEDIAN_OF, max(1, len(samples) // 10))
    warm_rss = statistics.median(s.rss_mb for s in samples[at : at + n])
    end_rss = statistics.median(s.rss_mb for s in [*samples, final][-n:])
    rest_from = rests[0].rss_mb if rests else warm_rss
    peak_rss = max(s.rss_mb for s in samples)
    # Open files move by the connections the HTTP pool keeps alive and the broker's socket
    # (10-16 in one smoke); a leak grows past the most the warm-up saw.
    fds_ceiling = max(s.fds for s in samples[: at + n])
    accounted = after.translated + after.failed + after.dropped
    c = daemon.counters
    cpu = os.times()
    print(
        f"room audio {final.room_h:.1f} h in {final.wall_s / 60:.1f} min "
        f"({final.room_h * 3600 / final.wall_s:.0f}× real time, "
        f"CPU {cpu.user + cpu.system:.0f} s in the daemon's process); "
        f"{requests} requests; {cycles} fault cycles ({len(FAULT_CYCLE)} faults each); "
        f"{restarts} broker restarts; {round(c.get('mqtt_connects'))} MQTT connects; "
        f"{round(c.get('device_rescans'))} device rescans; "
        f"{daemon.heap.trims} heap trims (longest {daemon.heap.longest_ms:.0f} ms)"
    )
    at_rest_mb = " → ".join(f"{s.rss_mb:.1f}" for s in [*rests, final])
    print(
        f"RSS at rest {at_rest_mb} MB (from a fifth of the run on; growth "
        f"{final.rss_mb - rest_from:+.1f} MB); while the room talks {samples[0].rss_mb:.1f} MB "
        f"at the first report, {warm_rss:.1f} after warm-up, {end_rss:.1f} at the end "
        f"(medians of {n} reports), peak {peak_rss:.1f}; "
        f"open files at most {fds_ceiling} in the warm-up → {final.fds}; "
        f"tasks {warm.tasks} → {final.tasks}; "
        f"threads {warm.threads} → {final.threads}"
    )
    dropped = {k: round(v) for k, v in c.group("dropped").items()}
    failed = {k: round(v) for k, v in c.group("failed").items()}
    print(
        f"accounting: cut {after.cut} = translated {after.translated} + failed {after.failed} "
        f"+ dropped {after.dropped} ({accounted}); failed {failed}; dropped {dropped}; "
        f"MQTT outbox dropped {round(c.get('mqtt_outbox_dropped'))}, "
        f"partials dropped {round(c.get('mqtt_partials_dropped'))}"
    )
    flat = (
        final.rss_mb - rest_from <= args.max_rss_growth_mb
        and final.fds <= fds_ceiling + 2
        and final.threads <= warm.threads + 1
    )
    ok = accounted == after.cut and flat
    print("soak: OK" if ok else "soak: FAILED (accounting or growth)")
    return 0 if ok else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=24.0, help="room audio to feed")
    parser.add_argument("--speed", type=float, default=100.0, help="times real time")
    parser.add_argument("--report-s", type=float, default=30.0, help="seconds between figures")
    parser.add_argument("--fault-every-s", type=float, default=20.0)
    parser.add_argument("--broker-restart-s", type=float, default=90.0)
    parser.add_argument("--max-rss-growth-mb", type=float, default=2.0)
    parser.add_argument("--confirm", choices=("off", "silero"), default="off")
    parser.add_argument("--log", type=Path, help="the daemon's log (default: in the workdir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    diagnose = parser.add_argument_group("diagnosis (slower)")
    diagnose.add_argument(
        "--trace-malloc",
        type=int,
        default=0,
        metavar="N",
        help="print the N allocation sites and object types grown most since --trace-after",
    )
    diagnose.add_argument(
        "--trace-frames", type=int, default=1, help="traceback depth kept per allocation"
    )
    diagnose.add_argument(
        "--trace-after", type=int, default=3, help="the report taken as the baseline"
    )
    diagnose.add_argument(
        "--memory-detail", action="store_true", help="where the RSS is, at each figure"
    )
    diagnose.add_argument(
        "--malloc-trim", action="store_true", help="malloc_trim(0) before each figure"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exec_with_system_malloc()  # as `roomtranslate run` does
    if shutil.which("mosquitto") is None:
        print("soak: mosquitto is not installed (scripts/setup.sh installs it)", file=sys.stderr)
        return 2
    args.workdir = Path(tempfile.mkdtemp(prefix="roomtranslate-soak-"))
    log_path = args.log or args.workdir / "daemon.log"
    logging.basicConfig(
        filename=log_path, level=logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    print(f"soak: daemon log in {log_path}")
    try:
        return asyncio.run(run_soak(args))
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
