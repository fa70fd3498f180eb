#!/usr/bin/env python3
"""Benchmark: the daemon's own added latency, CPU, memory and billing on the sound rig.

    .venv/bin/python scripts/bench_latency.py [--quick] [--soak-minutes 10] [--utterances 10]

Runs `roomtranslate run` on the private PulseAudio rig against the simulator with FIXED
service delays (scripts/e2e_harness.py: rig + Mosquitto + simulator + daemon), plays a
scenario of real recordings into the microphone in real time and reports:

- added latency per utterance, p50 / p95, target ≤ 20 ms at p95 (PASS/FAIL):
  (i)   speech end detected → request sent             (daemon timeline)
  (ii)  first text delta → first caption at a subscriber (timeline vs MQTT receive time)
  (iii) first audio delta → first sample to the device  (daemon timeline)
- CPU share of the daemon process (utime+stime from /proc/<pid>/stat) while listening to
  silence and while translating the scenario; while listening to silence also per thread
  (/proc/<pid>/task/*/schedstat) with its wake-ups per second (context switches), the
  threads named from the daemon's log (event loop, capture and playback callbacks);
- VmRSS after a soak (`--soak-minutes`, 1 with `--quick`) with the scenario looped into
  the microphone;
- billed input audio seconds (status counters) per second of placed speech.

Exit status 0 whatever the verdict (non-zero only if the harness itself fails).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from scripts.e2e_harness import (
    Harness,
    Scene,
    Session,
    first_partials,
    missing_programs,
    percentile,
)

TARGET_MS = 20.0
TARGET_IDLE_CPU = 0.02  # share of one core while nobody speaks and nothing plays
CALLBACK_THREAD_RE = re.compile(r"(capture|playback): callback thread (\d+)")
CLIPS = (
    "en_sr_english",
    "fr_sr_french",
    "ko_pv_leopard",
    "pt_pv_leopard",
    "zh_wenet_aishell",
    "yue_funasrggml_yue",
    "zh_funasr_mid",
    "ja_pv_leopard",
    "de_pv_leopard",
    "it_pv_leopard",
)
GAP_S = 2.0


@dataclass(frozen=True)
class Latency:
    name: str
    samples_ms: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p95(self) -> float:
        return percentile(self.samples_ms, 95)

    @property
    def verdict(self) -> str:
        return "PASS" if self.samples_ms and self.p95 <= TARGET_MS else "FAIL"


@dataclass(frozen=True)
class ThreadUse:
    tid: int
    name: str
    cpu: float  # share of one core
    wakeups: float  # context switches per second


@dataclass(frozen=True)
class Usage:
    cpu_idle: float  # share of one core
    cpu_busy: float
    rss_start_kb: int
    rss_end_kb: int
    soak_s: float
    soak_utterances: int
    billed_per_speech_s: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--utterances", type=int, default=10, help="clips in the scenario")
    p.add_argument("--soak-minutes", type=float, default=10.0)
    p.add_argument("--quick", action="store_true", help="a 1 minute soak")
    p.add_argument("--idle-s", type=float, default=10.0, help="silence for the idle CPU")
    p.add_argument("--first-text-ms", type=float, default=300.0)
    p.add_argument("--first-audio-ms", type=float, default=150.0)
    p.add_argument("--chunk-ms", type=float, default=20.0)
    p.add_argument("--workdir", type=Path, help="keep logs and recordings here")
    return p.parse_args(argv)


def scenario_parts(count: int) -> list[tuple[str, float]]:
    return [(CLIPS[i % len(CLIPS)], 1.0 if i == 0 else GAP_S) for i in range(count)]


def cpu_share(session: Session, seconds: float) -> float:
    """The daemon's CPU time over `seconds` of wall time, as a share of one core."""
    cpu, began = session.daemon.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (session.daemon.cpu_seconds() - cpu) / (time.monotonic() - began)


def _task_figures(task: Path) -> tuple[str, float, int]:
    """(comm, CPU seconds, context switches) of one thread; ("", 0, 0) if it is gone."""
    try:
        comm = (task / "comm").read_text().strip()
        schedstat = (task / "schedstat").read_text().split()
        status = (task / "status").read_text()
    except OSError:
        return "", 0.0, 0
    switches = sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)
    return comm, int(schedstat[0]) / 1e9, switches


Snapshot = tuple[float, dict[int, tuple[str, float, int]]]


def thread_snapshot(session: Session) -> Snapshot:
    tasks = Path(f"/proc/{session.daemon.pid}/task")
    return time.monotonic(), {int(t.name): _task_figures(t) for t in tasks.iterdir()}


def thread_use(session: Session, seconds: float) -> list[ThreadUse]:
    """Per-thread CPU share and wake-ups per second over `seconds` of wall time."""
    start = thread_snapshot(session)
    time.sleep(seconds)
    return threads_since(session, start)


def threads_since(session: Session, start: Snapshot) -> list[ThreadUse]:
    """Per-thread CPU share and wake-ups per second since the `start` snapshot."""
    began, before = start
    ended, after = thread_snapshot(session)
    wall = ended - began
    names = _thread_names(session, session.daemon.pid)
    use = []
    for tid, (comm, cpu, switches) in after.items():
        _, cpu0, switches0 = before.get(tid, (comm, 0.0, 0))
        name = names.get(tid, comm)
        use.append(ThreadUse(tid, name, (cpu - cpu0) / wall, (switches - switches0) / wall))
    return sorted(use, key=lambda u: -u.cpu)


def _thread_names(session: Session, pid: int) -> dict[int, str]:
    names = {pid: "event loop (main thread)"}
    for kind, tid in CALLBACK_THREAD_RE.findall(session.daemon.log_text()):
        names[int(tid)] = f"{kind} callback (PortAudio)"
    return names


def billed_input_s(session: Session) -> float:
    return float(session.status()["counters"]["billed_audio_s"]["input"])


def run_scenario(h: Harness, s: Session, scene: Scene) -> tuple[float, float, list[ThreadUse]]:
    """Play the scene, wait for every final and drain; (CPU share, billed input s, the
    threads over the scenario)."""
    count = len(scene.truth)
    billed = billed_input_s(s)
    cpu, began = s.daemon.cpu_seconds(), time.monotonic()
    start = thread_snapshot(s)
    h.play(scene).wait()
    s.wait_finals(count, 15.0)
    s.wait_timelines(count, 15.0)
    share = (s.daemon.cpu_seconds() - cpu) / (time.monotonic() - began)
    threads = threads_since(s, start)
    s.wait_status(lambda st: st["counters"]["translated"] >= count, 3.0)
    return share, billed_input_s(s) - billed, threads


def latencies(s: Session) -> list[Latency]:
    timelines = s.daemon.timelines()
    first = first_partials(s.captions())
    request, caption, audio = [], [], []
    for utt_id, t in sorted(timelines.items()):
        if "request_sent" in t:
            request.append((t["request_sent"] - t["speech_end_detected"]) * 1000)
        if "first_text" in t and utt_id in first:
            caption.append((first[utt_id].at - t["first_text"]) * 1000)
        if "first_audio" in t and "first_sample_to_device" in t:
            audio.append((t["first_sample_to_device"] - t["first_audio"]) * 1000)
    return [
        Latency("(i) speech end -> request sent", request),
        Latency("(ii) first text -> caption received", caption),
        Latency("(iii) first audio -> first sample to device", audio),
    ]


def soak(h: Harness, s: Session, scene: Scene, seconds: float) -> tuple[int, int, int]:
    """Loop the scene into the microphone for `seconds`; (RSS before, after, utterances)."""
    rss_start = s.daemon.rss_kb()
    utterances = len(s.finals())
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        playing = h.play(scene)
        while not playing.done() and time.monotonic() < deadline:
            time.sleep(0.1)
        playing.stop()
    time.sleep(3.0)  # the last translations finish
    return rss_start, s.daemon.rss_kb(), len(s.finals()) - utterances


def print_report(args: argparse.Namespace, scene: Scene, lat: list[Latency], use: Usage) -> None:
    print(
        f"service delays: first_text {args.first_text_ms:.0f} ms, first_audio "
        f"{args.first_audio_ms:.0f} ms, chunk {args.chunk_ms:.0f} ms; scenario "
        f"{len(scene.truth)} utterances, {scene.speech_s:.1f} s speech in {scene.seconds:.1f} s"
    )
    print(f"{'added latency (ms)':<46}{'n':>4}{'p50':>8}{'p95':>8}{'max':>8}  target ≤ 20")
    for item in lat:
        top = max(item.samples_ms, default=0.0)
        print(
            f"{item.name:<46}{len(item.samples_ms):>4}{item.p50:>8.1f}{item.p95:>8.1f}"
            f"{top:>8.1f}  {item.verdict}"
        )
    verdict = "PASS" if use.cpu_idle <= TARGET_IDLE_CPU else "FAIL"
    print(
        f"{'CPU, listening to silence':<46}{use.cpu_idle * 100:>8.1f} % of one core"
        f"  target ≤ {TARGET_IDLE_CPU * 100:.0f} %: {verdict}"
    )
    print(f"{'CPU, translating the scenario':<46}{use.cpu_busy * 100:>8.1f} % of one core")
    print(
        f"{'RSS (VmRSS) before / after soak':<46}{use.rss_start_kb / 1024:>8.1f} /"
        f"{use.rss_end_kb / 1024:.1f} MiB after {use.soak_s / 60:.1f} min "
        f"({use.soak_utterances} utterances)"
    )
    print(f"{'billed input audio s per s of speech':<46}{use.billed_per_speech_s:>8.2f}")


def print_threads(threads: list[ThreadUse], what: str) -> None:
    print(f"{'  per thread, ' + what:<46}{'% core':>8}{'wake-ups/s':>12}")
    for t in threads:
        if t.cpu < 0.0005 and t.wakeups < 0.5:
            continue
        print(f"{'    ' + t.name + f' [{t.tid}]':<46}{t.cpu * 100:>8.2f}{t.wakeups:>12.1f}")
    print(f"{'    all threads':<46}{sum(t.cpu for t in threads) * 100:>8.2f}")


def bench(args: argparse.Namespace, workdir: Path) -> int:
    sim = {
        "first_text_ms": args.first_text_ms,
        "first_audio_ms": args.first_audio_ms,
        "chunk_ms": args.chunk_ms,
        "jitter_ms": 0.0,
    }
    soak_s = 60.0 if args.quick else args.soak_minutes * 60.0
    with Harness(workdir, sim_settings=sim) as h:
        scene = h.compose(scenario_parts(args.utterances), "bench", tail_s=1.0)
        with h.session() as s:
            time.sleep(2.0)  # start-up work (model loading, first status) is over
            cpu_idle = cpu_share(s, args.idle_s)
            threads = thread_use(s, args.idle_s)
            cpu_busy, billed, busy_threads = run_scenario(h, s, scene)
            lat = latencies(s)
            rss_start, rss_end, soak_utts = soak(h, s, scene, soak_s)
    use = Usage(cpu_idle, cpu_busy, rss_start, rss_end, soak_s, soak_utts, billed / scene.speech_s)
    print_report(args, scene, lat, use)
    print_threads(threads, "listening to silence")
    print_threads(busy_threads, "translating the scenario")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if missing := missing_programs():
        print(f"bench_latency: not installed: {', '.join(missing)}", file=sys.stderr)
        return 1
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return bench(args, args.workdir)
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        return bench(args, Path(tmp))


if __name__ == "__main__":
    raise SystemExit(main())
