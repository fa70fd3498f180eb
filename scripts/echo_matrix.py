#!/usr/bin/env python3
"""The room matrix of `bench_echo.py --matrix`: composed meetings, run in closed loop.

A room is drawn from its seed alone (`draw_room`), so room 17 is the same room in a run
of 20 rooms or of 200, in today's code and in the next. Each is a short dense meeting
(30-40 s of turns 1.5-6 s long, 0.2-1.0 s apart, two to four people of one language,
each at -24 dBFS ±3 dB, through one impulse response of the room) with our translation
of every sent clip (real speech in another language, as long as the clip, 0.3 s after
the clip was cut) reaching the microphone through the same room. The room runs on
until the last turn and our last translation have been heard (2 s and RT60 after them),
at most 20 s past the last turn: a room that feeds back stops there. Drawn per room,
uniformly:

- RT60 0.2-1.2 s in steps of 0.05 s, and one of three placements of the people, the
  loudspeaker and the microphone (`room_echo.room_impulse_response`: simulating them is
  the slow part, so rooms of one RT60 and placement share them);
- our echo -12 to +6 dB relative to the people;
- a bulk delay of 5-800 ms of the echo path beyond what the devices report;
- in half the rooms (seeds 2, 3 of every 4) a jump of the echo path of 20-500 ms
  mid-meeting: the path grows (an underrun: silence is inserted) or shrinks (samples are
  skipped) at 35-65% of the meeting;
- the speaker's clock ±200 ppm off the microphone's (its samples sound at
  `i / (16000 (1 + ppm))`, as its DAC stamps say);
- in a third of the rooms a loudspeaker that clips softly (`tanh(d x) / d`, d 1.5-6);
- a noise recording at 10-40 dB SNR to the people.

The daemon's echo stage (built only by `daemon.echo.make_echo_stage`), segmenter and
guard run frame by frame (`ClosedLoop`). Per clip the segmenter cut it records the truth
(seconds of a person's speech inside, voiced 10 ms frames of the dry turns) and our
echo's energy share (`echo_share`); `figures` turns clips into the matrix's rates.

Also runnable (`main`: seeds in, one JSON line per room out), so that `bench_echo.py
--matrix` can run the rooms against the daemon package of another checkout: the
`daemon` imported is the first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import copy
import csv
import itertools
import json
import logging
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scripts import room_echo
from scripts.paths import AUDIO_DIR

RATE = 16_000
FRAME = 480  # the daemon's VAD frame
CHUNK = 8 * FRAME  # the room's echo is computed this far ahead of the microphone
LATENCY_S = 0.3  # clip cut → our translation starts playing
LEAD_S = 0.04  # the playback callback writes this far ahead
MAX_TAIL_S = 20.0  # a room runs at most this long after its last turn ...
SETTLE_S = 2.0  # ... else until this long (plus RT60) after the last turn and our last sound
PEOPLE_DBFS, OURS_DBFS = -24.0, -20.0
OWN_SHARE = 0.1  # a request with more of its energy our echo carries our speech
ALONE_S = 0.1  # a clip with less of a person's speech is our voice alone
PERSON_S = 0.2  # a clip with at least this much of a person's speech has a person
# Recordings not used for the people: radio noise, and mostly silence.
NOT_PEOPLE = {"en_apollo11_radio", "en_ami_tst01"}
PEOPLE_MIN_S = 20.0  # a language with less recorded speech is used only for our voice
RT60_STEP = 0.05  # RT60 is drawn on this grid ...
PLACEMENTS = 3  # ... and the room's layout among these: rooms share impulse responses
RANGES = {
    "rt60_s": (0.2, 1.2),
    "echo_db": (-12.0, 6.0),
    "bulk_ms": (5.0, 800.0),
    "jump_ms": (20.0, 500.0),
    "ppm": (-200.0, 200.0),
    "clip_drive": (1.5, 6.0),
    "snr_db": (10.0, 40.0),
    "gap_s": (0.2, 1.0),
    "turn_s": (1.5, 6.0),
    "meeting_s": (30.0, 40.0),
}
RT60_GRID = np.arange(RANGES["rt60_s"][0], RANGES["rt60_s"][1] + RT60_STEP / 2, RT60_STEP)
Floats = npt.NDArray[np.float64]


# ------------------------------------------------------------------ recordings


def load(name: str, seconds: float | None = None) -> Floats:
    """A recording, mono 16 kHz, its leading and trailing silence cut (do not modify)."""
    mono = _recording(name)
    return mono[: round(seconds * RATE)] if seconds else mono


@cache
def _recording(name: str) -> Floats:
    import soundfile as sf
    import soxr

    data, rate = sf.read(str(AUDIO_DIR / f"{name}.wav"), dtype="float64", always_2d=True)
    mono = data.mean(axis=1)
    if rate != RATE:
        mono = soxr.resample(mono, rate, RATE)
    level = np.abs(mono) > np.abs(mono).max() * 0.02
    first, last = int(np.argmax(level)), len(mono) - int(np.argmax(level[::-1]))
    out: Floats = mono[first:last]
    out.flags.writeable = False
    return out


def rms(x: Floats) -> float:
    return float(np.sqrt(np.mean(x * x) + 1e-20))


def to_pcm(x: Floats) -> npt.NDArray[np.int16]:
    return np.clip(np.rint(x * 32768), -32768, 32767).astype(np.int16)


@cache
def catalogue() -> dict[str, list[tuple[str, float]]]:
    """Speech recordings (name, seconds) by language, and "noise"; from manifest.csv."""
    by_lang: dict[str, list[tuple[str, float]]] = {}
    with open(AUDIO_DIR / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            name = row["file"].removesuffix(".wav")
            lang = "noise" if name.startswith("noise_") else row["language"].split()[0]
            by_lang.setdefault(lang.rstrip("?").rstrip(","), []).append(
                (name, float(row["seconds"] or 0.0))
            )
    return by_lang


def people_languages() -> list[str]:
    return sorted(
        lang
        for lang, recs in catalogue().items()
        if lang != "noise" and sum(s for n, s in recs if n not in NOT_PEOPLE) >= PEOPLE_MIN_S
    )


def voice_languages() -> list[str]:
    return sorted(lang for lang in catalogue() if lang != "noise")


# ------------------------------------------------------------------ a room, drawn


@dataclass(frozen=True)
class Turn:
    recording: str
    offset: float  # where in the recording, as a share of what is left after `seconds`
    seconds: float
    gap_s: float  # silence before it
    person: int


@dataclass(frozen=True)
class RoomParams:
    seed: int
    people_lang: str
    voice_lang: str
    turns: tuple[Turn, ...]
    person_db: tuple[float, ...]  # each person's level against PEOPLE_DBFS
    rt60_s: float
    placement: int  # where the people, the loudspeaker and the microphone are
    echo_db: float  # our echo against the people, at the microphone
    bulk_ms: float
    jump_ms: float  # 0: none; > 0 the path grows, < 0 it shrinks
    jump_at_s: float
    ppm: float  # the speaker's clock against the microphone's
    clip_drive: float  # 0: a linear loudspeaker
    noise: str
    snr_db: float

    @property
    def half(self) -> str:
        return "calibration" if self.seed % 2 == 0 else "held-out"

    @property
    def meeting_s(self) -> float:
        return sum(t.gap_s + t.seconds for t in self.turns)

    def summary(self) -> dict[str, Any]:
        """The drawn figures (without the turns), for the dump."""
        d = asdict(self)
        d["turns"] = len(self.turns)
        d["half"] = self.half
        return d


def draw_room(seed: int) -> RoomParams:
    """Room `seed`'s parameters: a function of the seed alone."""
    rng = np.random.default_rng([0xEC40, seed])

    def u(name: str) -> float:
        lo, hi = RANGES[name]
        return float(rng.uniform(lo, hi))

    people_lang = str(rng.choice(people_languages()))
    voice_lang = str(rng.choice([x for x in voice_languages() if x != people_lang]))
    recordings = [(n, s) for n, s in catalogue()[people_lang] if n not in NOT_PEOPLE]
    weights = np.array([s for _, s in recordings])
    people = int(rng.integers(2, 5))
    target, at, turns = u("meeting_s"), 0.0, list[Turn]()
    while True:
        gap, seconds = u("gap_s"), u("turn_s")
        if turns and at + gap + seconds > target:
            break
        name = recordings[int(rng.choice(len(recordings), p=weights / weights.sum()))][0]
        turns.append(Turn(name, float(rng.uniform()), seconds, gap, int(rng.integers(people))))
        at += gap + seconds
    bulk = u("bulk_ms")
    jump = 0.0
    if (seed // 2) % 2 == 1:
        jump = u("jump_ms")
        if rng.uniform() < 0.5 and bulk - jump >= RANGES["bulk_ms"][0]:
            jump = -jump
    return RoomParams(
        seed=seed,
        people_lang=people_lang,
        voice_lang=voice_lang,
        turns=tuple(turns),
        person_db=tuple(float(x) for x in rng.uniform(-3.0, 3.0, people)),
        rt60_s=round(float(rng.choice(RT60_GRID)), 2),
        placement=int(rng.integers(PLACEMENTS)),
        echo_db=u("echo_db"),
        bulk_ms=bulk,
        jump_ms=jump,
        jump_at_s=float(rng.uniform(0.35, 0.65)) * at,
        ppm=u("ppm"),
        clip_drive=u("clip_drive") if rng.uniform() < 1 / 3 else 0.0,
        noise=str(rng.choice([n for n, _ in catalogue()["noise"]])),
        snr_db=u("snr_db"),
    )


# ------------------------------------------------------------------ a room, composed


def impulse_responses(params: RoomParams, cache_dir: Path) -> tuple[Floats, Floats]:
    """The people's and the loudspeaker's impulse response: slow to simulate (up to 4 s
    for RT60 1.2 s), so kept in `cache_dir` and shared by the rooms of one RT60 and
    placement."""
    path = cache_dir / f"rir-v1-{params.rt60_s:.2f}-{params.placement}.npz"
    if path.exists():
        with np.load(path) as f:
            return f["people"].astype(np.float64), f["speaker"].astype(np.float64)
    seed = 1000 + 2 * params.placement
    people = room_echo.room_impulse_response(params.rt60_s, seed)
    speaker = room_echo.room_impulse_response(params.rt60_s, seed + 1)
    tmp = path.with_suffix(f".{os.getpid()}.npz")
    np.savez(tmp, people=people.astype(np.float32), speaker=speaker.astype(np.float32))
    tmp.rename(path)
    return people, speaker


@dataclass
class Composed:
    """What does not depend on what we send: the people, the noise, our voice, the room."""

    params: RoomParams
    people: Floats  # at the microphone, the whole run
    truth: npt.NDArray[np.bool_]  # per sample: a person speaks (voiced frames of the turns)
    noise: Floats
    voice: Floats  # our translations are read from here, one after the other
    speaker_h: Floats
    meeting_end: int  # the sample after the last turn


def voiced(x: Floats) -> npt.NDArray[np.bool_]:
    """Per sample: inside a 10 ms frame within 30 dB of the turn's loud frames (95th
    percentile), gaps under 0.2 s filled."""
    n = len(x) // 160
    frames = x[: n * 160].reshape(n, 160)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    on = level >= np.percentile(level, 95) - 30.0
    idx = np.flatnonzero(on)
    for a, b in itertools.pairwise(idx):
        if b - a <= 20:
            on[a:b] = True
    out = np.zeros(len(x), dtype=bool)
    out[: n * 160] = np.repeat(on, 160)
    return out


def compose(params: RoomParams, cache_dir: Path) -> Composed:
    from scipy.signal import fftconvolve

    h_people, h_speaker = impulse_responses(params, cache_dir)
    rng = np.random.default_rng([0xEC41, params.seed])
    n = round((params.meeting_s + MAX_TAIL_S) * RATE) // FRAME * FRAME
    people, truth, at = np.zeros(n), np.zeros(n, dtype=bool), 0
    for turn in params.turns:
        src = load(turn.recording)
        length = min(round(turn.seconds * RATE), len(src))
        first = round(turn.offset * (len(src) - length))
        dry = src[first : first + length]
        wet = fftconvolve(dry, h_people)[:length]
        level = PEOPLE_DBFS + params.person_db[turn.person]
        at += round(turn.gap_s * RATE)
        people[at : at + length] = wet / rms(dry) * 10 ** (level / 20)
        truth[at : at + length] = voiced(dry)
        at += round(turn.seconds * RATE)
    noise = load(params.noise)
    noise = np.tile(noise, n // len(noise) + 2)
    start = int(rng.integers(len(noise) - n))
    noise = noise[start : start + n]
    noise *= 10 ** ((PEOPLE_DBFS - params.snr_db) / 20) / rms(noise)
    voice = np.concatenate([load(name) for name, _ in catalogue()[params.voice_lang]])
    voice = voice / rms(voice) * 10 ** (OURS_DBFS / 20)
    return Composed(params, people, truth, noise, voice, h_speaker, at)


# ------------------------------------------------------------------ the echo path


PHASES = 4096  # fractional positions of the interpolation table


@cache
def _sinc_table(taps: int) -> Floats:
    """Windowed-sinc kernels (raised cosine window) for PHASES + 1 fractional offsets."""
    frac = np.arange(PHASES + 1) / PHASES
    dist = frac[:, None] - np.arange(-taps + 1, taps + 1)[None, :]
    window = 0.5 + 0.5 * np.cos(np.pi * np.clip(dist / taps, -1.0, 1.0))
    return np.asarray(np.sinc(dist) * window, dtype=np.float64)


def drifted(x: Floats, first: int, count: int, ratio: float, taps: int = 16) -> Floats:
    """`x` read at positions (first + i) * ratio, i < count: windowed-sinc interpolation."""
    pos = (first + np.arange(count)) * ratio
    base = np.floor(pos).astype(np.int64)
    kernel = _sinc_table(taps)[np.rint((pos - base) * PHASES).astype(np.int64)]
    idx = base[:, None] + np.arange(-taps + 1, taps + 1)[None, :]
    padded = np.concatenate([np.zeros(taps), x, np.zeros(taps + 1)])
    values = padded[np.clip(idx + taps, 0, len(padded) - 1)]
    out: Floats = np.einsum("ij,ij->i", values, kernel)
    return out


class EchoPath:
    """Our played samples → what the microphone hears of them, computed chunk by chunk.

    The speaker's sample `j` sounds at `j / (RATE * ratio)` (its clock), then `bulk`
    samples later (what the devices do not report; `jump` more from `jump_at` on), soft
    clipped, through the room (`speaker_h`) at `gain_db`.
    """

    def __init__(self, params: RoomParams, speaker_h: Floats, n: int) -> None:
        self.ratio = 1.0 + params.ppm * 1e-6
        self.bulk = round(params.bulk_ms * RATE / 1000)
        self.jump = round(params.jump_ms * RATE / 1000)
        self.jump_at = round(params.jump_at_s * RATE) if self.jump else n
        self.drive = params.clip_drive
        gain = params.echo_db + PEOPLE_DBFS - OURS_DBFS
        self.room = room_echo.RoomEcho(speaker_h, CHUNK, delay=0, gain_db=gain)

    def speaker_needs(self, upto: int) -> int:
        """The speaker samples that must be final to compute the echo up to `upto`."""
        return int(np.ceil(upto * self.ratio)) + 20

    def process(self, ours: Floats, first: int) -> Floats:
        """The echo at the microphone of samples first .. first + CHUNK."""
        t = np.arange(first, first + CHUNK)
        delay = np.where(t < self.jump_at, self.bulk, self.bulk + self.jump)
        src = t - delay
        sounding = np.zeros(CHUNK)
        ok = src >= 0
        if self.jump > 0:  # grown: the inserted silence
            ok &= ~((t >= self.jump_at) & (t < self.jump_at + self.jump))
        if np.any(ok):
            lo = int(src[ok].min())
            part = drifted(ours, lo, int(src[ok].max()) - lo + 1, self.ratio)
            sounding[ok] = part[src[ok] - lo]
        if self.drive:
            sounding = np.tanh(self.drive * sounding) / self.drive
        return self.room.process(sounding)


# ------------------------------------------------------------------ the closed loop


def echo_share(clip: Floats, echo: Floats, start: int, max_lag: int = 256, step: int = 1) -> float:
    """The share of `clip`'s energy that is our echo: the best ρ² of the clip against the
    known echo at the microphone (`echo`, the clip starting at sample `start`), over the
    lags 0, `step`, ... `max_lag` samples by which the cleaned clip may lag it."""
    from scipy.signal import correlate

    n = len(clip)
    first = max(0, start - max_lag)
    window = echo[first : start + n]
    if len(window) < n or not np.any(window):
        return 0.0
    dots = correlate(window, clip, mode="valid", method="fft")[::-1]  # lag 0, 1, ...
    power = np.concatenate([[0.0], np.cumsum(window * window)])
    energies = (power[n:] - power[: len(power) - n])[::-1]
    r = dots**2 / (np.maximum(energies, 1e-20) * (float(np.dot(clip, clip)) + 1e-20))
    return float(np.max(r[::step]))


@dataclass(frozen=True)
class Clip:
    """One clip the segmenter cut, and what became of it."""

    start: int
    end: int
    person_s: float  # a person's (voiced) speech inside it
    echo_share: float
    sent: bool
    judgement: Any = None  # the stage's `last_judgement`, where it has one


@dataclass
class RoomRun:
    seed: int
    clips: list[Clip]
    truth_s: float  # the people's voiced speech in the room
    cut_truth_s: float  # of it, inside clips the segmenter cut
    sent_truth_s: float  # of it, inside sent clips
    stage_cpu_s: float  # the echo stage's CPU time (process and screen)
    frames_10ms: int
    daemon: str  # where the daemon package came from


class ClosedLoop:
    """One room: what we play depends on what the segmenter cut and the guard let pass."""

    def __init__(self, room: Composed) -> None:
        from daemon.config import AudioSettings, LiveRoom, RoomSettings, SegmenterSettings
        from daemon.counters import Counters
        from daemon.echo import PlayedAudio, make_echo_stage
        from daemon.segmenter import Segmenter

        self.room = room
        self.n = len(room.people)
        self.ours = np.zeros(round(self.n * 1.01) + 30 * RATE)  # on the speaker's clock
        self.echo = np.zeros(self.n)
        self.path = EchoPath(room.params, room.speaker_h, self.n)
        self.final = 0  # speaker samples below this are already heard: never written
        self.counters = Counters()
        self.played = PlayedAudio(self.counters)
        self.played.open(RATE)
        self.written = 0
        self.busy_until = 0  # speaker sample where our current translation ends
        self.voice_at = 0
        self.stage = make_echo_stage(
            AudioSettings(echo_guard="aec"),
            None,
            self.audible_until,
            self.counters,
            self.played,
        )
        self.segmenter = Segmenter(
            SegmenterSettings(), LiveRoom(RoomSettings()), self.counters, lambda s: s / RATE
        )
        self.clips: list[Clip] = []
        self.cpu = 0.0

    def audible_until(self) -> float:
        return self.busy_until / (RATE * self.path.ratio)

    def run(self) -> RoomRun:
        from daemon.values import Frame, Utterance

        mic = self.room.people + self.room.noise
        end = 0
        for start in range(0, self.n - FRAME + 1, FRAME):
            if start >= self._settled_at():
                break
            if start % CHUNK == 0:
                self.final = self.path.speaker_needs(start + CHUNK)
                self.echo[start : start + CHUNK] = self.path.process(self.ours, start)[
                    : self.n - start
                ]
            now = start / RATE
            self._write_reference(now)
            pcm = to_pcm(mic[start : start + FRAME] + self.echo[start : start + FRAME])
            t = time.thread_time()
            frame = self.stage.process(Frame(start, pcm), now)
            self.cpu += time.thread_time() - t
            for event in self.segmenter.push(frame):
                if isinstance(event, Utterance):
                    self._clip(event, (start + FRAME) / RATE)
            end = start + FRAME
        for event in self.segmenter.flush():
            if isinstance(event, Utterance):
                self._clip(event, end / RATE)
        import daemon

        return RoomRun(
            seed=self.room.params.seed,
            clips=self.clips,
            truth_s=float(np.sum(self.room.truth)) / RATE,
            cut_truth_s=truth_in(self.room.truth, self.clips),
            sent_truth_s=truth_in(self.room.truth, [c for c in self.clips if c.sent]),
            stage_cpu_s=self.cpu,
            frames_10ms=end // (RATE // 100),
            daemon=str(Path(daemon.__file__).parent),
        )

    def _settled_at(self) -> int:
        """The sample from which the room is quiet: no turn left, our last sound heard."""
        path = self.path
        last_sound = self.busy_until / path.ratio + path.bulk + max(path.jump, 0)
        rest = round((SETTLE_S + self.room.params.rt60_s) * RATE)
        return max(self.room.meeting_end, round(last_sound)) + rest

    def _write_reference(self, now: float) -> None:
        block = RATE // 100
        clock = RATE * self.path.ratio
        while (self.written + block) / clock <= now + LEAD_S:
            chunk = to_pcm(self.ours[self.written : self.written + block]).reshape(-1, 1)
            self.played.write(chunk, (self.written + block) / clock)
            self.written += block

    def _clip(self, utt: Any, now: float) -> None:
        from daemon.values import Utterance

        t = time.thread_time()
        screened = self.stage.screen(utt)
        self.cpu += time.thread_time() - t
        clip = utt.pcm.astype(np.float64) / 32768.0
        self.clips.append(
            Clip(
                start=utt.start,
                end=utt.end,
                person_s=float(np.sum(self.room.truth[utt.start : utt.end])) / RATE,
                echo_share=echo_share(clip, self.echo, utt.start),
                sent=isinstance(screened, Utterance),
                judgement=copy.deepcopy(getattr(self.stage, "last_judgement", None)),
            )
        )
        if not isinstance(screened, Utterance):
            return
        start = max(round((now + LATENCY_S) * RATE * self.path.ratio), self.busy_until)
        if start < self.final:
            raise AssertionError("a translation would start in what was already heard")
        voice = np.tile(self.room.voice, 3)[self.voice_at : self.voice_at + len(clip)]
        self.voice_at = (self.voice_at + len(clip)) % len(self.room.voice)
        self.ours[start : start + len(voice)] += voice
        self.busy_until = start + len(voice)


# ------------------------------------------------------------------ figures


def truth_in(truth: npt.NDArray[np.bool_], clips: Iterable[Clip]) -> float:
    """Seconds of the people's speech (`truth`, per sample) inside `clips`."""
    inside = np.zeros(len(truth), dtype=bool)
    for c in clips:
        inside[c.start : c.end] = True
    return float(np.sum(truth & inside)) / RATE


def figures(runs: Sequence[RoomRun]) -> dict[str, float]:
    """The matrix's rates over `runs` (pooled: sums of counts over sums of counts)."""
    clips = [c for r in runs for c in r.clips]
    alone = [c for c in clips if c.person_s < ALONE_S]
    with_person = [c for c in clips if c.person_s >= PERSON_S]
    sent = [c for c in clips if c.sent]
    truth = sum(r.truth_s for r in runs)
    return {
        "rooms": len(runs),
        "people_cut": sum(r.cut_truth_s for r in runs) / truth if truth else 1.0,
        "people_sent": sum(r.sent_truth_s for r in runs) / truth if truth else 1.0,
        "alone_clips": len(alone),
        "alone_sent": sum(c.sent for c in alone),
        "person_clips": len(with_person),
        "person_dropped": sum(not c.sent for c in with_person),
        "requests": len(sent),
        "own_speech_requests": sum(c.echo_share > OWN_SHARE for c in sent),
        "us_per_10ms": sum(r.stage_cpu_s for r in runs)
        / max(sum(r.frames_10ms for r in runs), 1)
        * 1e6,
    }


# ------------------------------------------------------------------ running rooms


def run_seed(seed: int, cache_dir: Path) -> tuple[RoomRun, float]:
    """Room `seed` in closed loop, and this process's peak RSS (MB) after it."""
    run = ClosedLoop(compose(draw_room(seed), cache_dir)).run()
    return run, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(params: RoomParams, cache_dir: Path) -> None:
    impulse_responses(params, cache_dir)


def run_rooms(seeds: Sequence[int], cache_dir: Path, jobs: int) -> tuple[list[RoomRun], float]:
    """Rooms in closed loop on `jobs` processes; the runs and the peak RSS of a process."""
    args = [(s, cache_dir) for s in seeds]
    if jobs <= 1:
        results = [run_seed(*a) for a in args]
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            results = pool.starmap(run_seed, args, chunksize=1)
    return [r for r, _ in results], max((m for _, m in results), default=0.0)


def prepare_rooms(seeds: Sequence[int], cache_dir: Path, jobs: int) -> None:
    """The impulse responses of `seeds`, into `cache_dir` (shared by later runs)."""
    rooms = {(p.rt60_s, p.placement): p for p in map(draw_room, seeds)}
    with multiprocessing.get_context("fork").Pool(max(jobs, 1)) as pool:
        pool.starmap(prepare, [(p, cache_dir) for p in rooms.values()], chunksize=1)


def json_value(value: Any) -> Any:
    """What json cannot write itself (numpy scalars and arrays, anything else as text)."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run matrix rooms; JSON lines out")
    parser.add_argument("seeds", type=int, nargs="+")
    parser.add_argument("--cache", type=Path, required=True, help="impulse responses")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the daemon's warnings, once per room: quiet
    runs, rss = run_rooms(args.seeds, args.cache, args.jobs)
    with open(args.out, "w") as f:
        f.write(json.dumps({"peak_rss_mb": rss}) + "\n")
        for r in runs:
            f.write(json.dumps(asdict(r), default=json_value) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
