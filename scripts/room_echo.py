#!/usr/bin/env python3
"""A room for the sound rig: what the speaker plays reaches the microphone.

The rig of scripts/audio_rig.py has no acoustics: its speaker (`spk`) and microphone
(`micfeed` → `mic`) are separate null sinks. This makes it behave like a meeting room:

    spk.monitor ─▶ room impulse response (reverberation) ─▶ delay ─▶ gain ─▶ micfeed

mixed by PulseAudio with whatever else is played into `micfeed` (the people). The
impulse response is simulated with pyroomacoustics (image source method, a shoebox room,
`rt60` seconds of reverberation, speaker and microphone 1.5–2.5 m apart), normalised to
unit energy, its direct path moved to the start. `--delay-ms` is the whole delay from the
speaker to the microphone: the rig adds `STREAM_DELAY_MS`, the delay line the rest; the
path stays there however busy the machine is (`Streams`).

    python scripts/room_echo.py run --gain-db -3 --delay-ms 60       # with PULSE_SERVER set

Also a module: `room_impulse_response()`, `RoomEcho` (streaming convolution), `echo_of()`
and `run_canceller()` (the daemon's echo stage on an offline room, with device clocks)
serve the offline echo tests and scripts/bench_echo.py. A test
and benchmark helper: needs numpy, scipy, pyroomacoustics and pasimple (the dev extras).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

RATE = 16_000
BLOCK_MS = 10
ROOM_DIM = (6.0, 4.5, 2.8)
LEAD_SAMPLES = 8  # kept before the direct path of the impulse response
STREAM_DELAY_MS = 26.0  # spk.monitor → the room's streams → micfeed → mic, measured on the rig
STREAM_TARGET_MS = 5.0  # what the room's two streams hold (PulseAudio says 2.5-4.5 ms on the rig)
STREAM_BUFFER_BLOCKS = 3  # the feed's buffer: a stall shorter than this does not underrun
CORRECT_EVERY = 25  # blocks between two looks at the streams' latency
CORRECT_SLACK = 320  # samples (20 ms) the streams may hold beyond it: PulseAudio's jitter

Floats = npt.NDArray[np.float64]


def room_impulse_response(rt60: float = 0.45, seed: int = 0, rate: int = RATE) -> Floats:
    """A simulated speaker → microphone impulse response, unit energy, direct path first."""
    import pyroomacoustics as pra

    rng = np.random.default_rng(seed)
    absorption, max_order = pra.inverse_sabine(rt60, list(ROOM_DIM))
    room = pra.ShoeBox(
        list(ROOM_DIM), fs=rate, materials=pra.Material(absorption), max_order=max_order
    )
    mic = np.array([ROOM_DIM[0] / 2, ROOM_DIM[1] / 2, 0.8]) + rng.uniform(-0.5, 0.5, 3) * [1, 1, 0]
    angle = rng.uniform(0, 2 * np.pi)
    distance = rng.uniform(1.5, 2.5)
    offset = np.array([distance * np.cos(angle), distance * np.sin(angle), rng.uniform(0.2, 1.0)])
    speaker = mic + offset
    speaker = np.clip(speaker, 0.3, np.array(ROOM_DIM) - 0.3)
    room.add_source(list(speaker))
    room.add_microphone(list(mic))
    room.compute_rir()
    h = np.asarray(room.rir[0][0], dtype=np.float64)
    direct = int(np.argmax(np.abs(h)))
    h = h[max(0, direct - LEAD_SAMPLES) :]
    return h / np.sqrt(np.sum(h * h))


def echo_of(played: Floats, h: Floats, *, delay_s: float, gain_db: float) -> Floats:
    """Offline: what the microphone hears of `played` (same length, same rate)."""
    from scipy.signal import fftconvolve

    wet = fftconvolve(played, h)[: len(played)]
    shift = round(delay_s * RATE)
    out = np.zeros(len(played))
    out[shift:] = wet[: len(played) - shift]
    return out * 10.0 ** (gain_db / 20.0)


class RoomEcho:
    """Streaming convolution (FFT overlap-add) with `h`, then a delay line and a gain."""

    def __init__(self, h: Floats, block: int, *, delay: int, gain_db: float) -> None:
        self._block = block
        self._nfft = 1 << int(np.ceil(np.log2(block + len(h) - 1)))
        self._spectrum = np.fft.rfft(h, self._nfft)
        self._acc = np.zeros(self._nfft + delay)
        self._delay = delay
        self._gain = 10.0 ** (gain_db / 20.0)

    def process(self, x: Floats) -> Floats:
        """One block in, one block out (`delay` samples later)."""
        y = np.fft.irfft(np.fft.rfft(x, self._nfft) * self._spectrum, self._nfft)
        self._acc[self._delay : self._delay + self._nfft] += y
        out = self._acc[: self._block].copy()
        self._acc[: -self._block] = self._acc[self._block :]
        self._acc[-self._block :] = 0.0
        return out * self._gain


# ------------------------------------------------------------------- the offline room


def run_canceller(
    mic: Floats,
    played: Floats,
    *,
    stage: Any = None,
    mic_ppm: float = 0.0,
    played_rate: int = 24_000,
    lead_s: float = 0.04,
    frame: int = 480,
    reference: bool = True,
    stamp_offset_s: float = 0.0,
    offset_until_s: float = float("inf"),
    after: Callable[[Any, Any], None] | None = None,
) -> tuple[Floats, Any]:
    """The daemon's echo stage over a room, as the live daemon drives it.

    `mic` (16 kHz, float, full scale 1.0) is what the microphone hears; `played`
    (`played_rate`, float) what the speaker played, sample 0 sounding at time 0. The
    microphone's crystal runs `mic_ppm` fast (its samples are resampled here and stamped
    with true times, as Capture's time model does); the playback callback writes its
    blocks `lead_s` before they sound, as PortAudio does, stamped `stamp_offset_s` late
    until `offset_until_s` (a device that misreports its latency), or not at all without
    a `reference`; the
    stage's `audible_until` is the end of the non-silent audio written so far. Returns
    the cleaned 16 kHz signal and the stage (an `EchoCanceller` unless one is given).
    `after(stage, frame)` sees each frame the stage returned, as it is returned (a live
    segmenter screening its clips as they are cut).
    """
    import soxr

    from daemon.counters import Counters
    from daemon.echo import EchoCanceller, PlayedAudio
    from daemon.echo.reference import ReferenceAligner

    counters = Counters()
    played_audio = PlayedAudio(counters)
    played_audio.open(played_rate)
    audible = [0.0]
    if stage is None:
        stage = EchoCanceller(
            ReferenceAligner(played_audio, counters), counters, lambda: audible[0]
        )
    rate = RATE * (1.0 + mic_ppm * 1e-6)
    if mic_ppm:
        mic = soxr.resample(mic, RATE, rate)
    mic16 = _int16(mic)
    ref = _int16(played)
    block = played_rate // 100
    written = 0
    out = np.zeros(len(mic16) // frame * frame, dtype=np.int16)
    from daemon.values import Frame

    for start in range(0, len(out), frame):
        captured_at = start / rate
        while (
            written + block <= len(ref) and (written + block) / played_rate <= captured_at + lead_s
        ):
            chunk = ref[written : written + block].reshape(-1, 1)
            end = (written + block) / played_rate
            if reference:
                played_audio.write(chunk, end + (stamp_offset_s if end < offset_until_s else 0.0))
            if chunk.any():
                audible[0] = end
            written += block
        result = stage.process(Frame(start, mic16[start : start + frame]), captured_at)
        out[start : start + frame] = result.pcm
        if after is not None:
            after(stage, result)
    return out.astype(np.float64) / 32768.0, stage


def _int16(x: Floats) -> npt.NDArray[np.int16]:
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------------- the rig process


class Streams:
    """The room's two PulseAudio streams (the simple API: `pasimple`): the speaker's
    monitor in, the microphone's feed out, and their latencies.

    Both run on the server's one clock, so nothing drifts; but a stall of this process
    (a busy machine) underruns the feed, and the silence PulseAudio plays meanwhile
    would stay in the path for good (in and out then run at one rate: the backlog never
    drains). `backlog()` says how much longer the two streams hold the room's sound than
    STREAM_TARGET_MS, which `run` takes back out: the room's path stays where it was set.
    """

    def __init__(self, block: int) -> None:
        from pasimple import PA_SAMPLE_S16LE, PA_STREAM_PLAYBACK, PA_STREAM_RECORD, PaSimple

        size = block * 2
        self.record = PaSimple(
            PA_STREAM_RECORD, PA_SAMPLE_S16LE, 1, RATE, "room", device_name="spk.monitor",
            fragsize=size,
        )  # fmt: skip
        self.play = PaSimple(
            PA_STREAM_PLAYBACK, PA_SAMPLE_S16LE, 1, RATE, "room", device_name="micfeed",
            tlength=size * STREAM_BUFFER_BLOCKS, prebuf=size, minreq=size,
        )  # fmt: skip
        self._size = size

    def read(self) -> Floats:
        return np.frombuffer(self.record.read(self._size), dtype="<i2").astype(np.float64)

    def write(self, y: Floats) -> None:
        self.play.write(np.clip(np.rint(y), -32768, 32767).astype("<i2").tobytes())

    def backlog(self) -> int:
        """Samples the streams hold beyond STREAM_TARGET_MS + CORRECT_SLACK (0 when
        within it, or while PulseAudio has no timing to tell)."""
        from pasimple import PaSimpleError

        try:
            held_us = self.record.get_latency() + self.play.get_latency()
        except PaSimpleError:
            return 0
        excess = round((held_us / 1e6 - STREAM_TARGET_MS / 1000) * RATE)
        if excess <= CORRECT_SLACK:
            return 0
        print(f"room: {excess / RATE * 1000:.0f} ms backlog in the streams, left out", flush=True)
        return excess

    def close(self) -> None:
        self.record.close()
        self.play.close()


def _realtime() -> None:
    """A real-time priority where allowed (root, as in CI): a busy machine must not stall
    the room, or its streams' buffers grow and the echo path with them (a rig artefact,
    not a room's: a room's path moves only when a sound server's buffer grows, which
    `--jump-ms` models)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (PermissionError, OSError):
        with contextlib.suppress(OSError):
            os.nice(-10)


def run(gain_db: float, delay_ms: float, rt60: float, seed: int, jump_ms: float = 0.0) -> int:
    """Speaker monitor → room → microphone feed, until SIGTERM. SIGUSR1 makes the echo
    path `jump_ms` longer (a sound server's buffer that grew: the echo pauses that long)."""
    block = RATE * BLOCK_MS // 1000
    line = max(0.0, delay_ms - STREAM_DELAY_MS)
    room = RoomEcho(
        room_impulse_response(rt60, seed), block, delay=round(line * RATE / 1000), gain_db=gain_db
    )
    stop = False
    jumps = 0  # asked for (SIGUSR1)
    made = 0
    pending = np.zeros(0)  # a jump's silence, still to be played before the echo

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    def on_jump(signum: int, frame: Any) -> None:
        nonlocal jumps
        jumps += 1

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, on_jump)
    _realtime()
    streams = Streams(block)
    print("room: running", flush=True)
    blocks = 0
    debt = 0  # samples of the room's output still to leave out (a backlog given back)
    try:
        while not stop:
            x = streams.read()
            if made < jumps:
                made += 1
                pending = np.concatenate((pending, np.zeros(round(jump_ms * RATE / 1000))))
                print(f"room: the echo path is {jump_ms:.0f} ms longer", flush=True)
            pending = np.concatenate((pending, room.process(x)))
            blocks += 1
            if blocks % CORRECT_EVERY == 0 and not debt:
                debt = streams.backlog()
            out, pending = pending[:block], pending[block:]
            left_out = min(debt, block)
            debt -= left_out
            if left_out < block:
                streams.write(out[left_out:])
    except KeyboardInterrupt:
        pass
    finally:
        streams.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="make the rig a room (until SIGTERM)")
    go.add_argument("--gain-db", type=float, default=-3.0)
    go.add_argument("--delay-ms", type=float, default=60.0)
    go.add_argument("--rt60", type=float, default=0.45)
    go.add_argument("--seed", type=int, default=1)
    go.add_argument("--jump-ms", type=float, default=0.0, help="on SIGUSR1: this much longer")
    args = parser.parse_args(argv)
    return run(args.gain_db, args.delay_ms, args.rt60, args.seed, args.jump_ms)


if __name__ == "__main__":
    sys.exit(main())
