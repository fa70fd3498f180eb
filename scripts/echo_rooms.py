"""The rooms of the echo matrix (`bench_echo.py --matrix`, run by `echo_matrix`): each drawn
from its seed, composed from the shared recordings, with the echo path from our loudspeaker
to the microphone.

A room is drawn from its seed alone (`draw_room`), so room 17 is the same room in a run
of 20 rooms or of 200, in today's code and in the next. Each is a short dense meeting
(30-40 s of turns 1.5-6 s long, 0.2-1.0 s apart, two to four people of one language,
each at -24 dBFS ±3 dB, through one impulse response of the room); our voice is real
speech in another language, reaching the microphone through the same room (`EchoPath`).
Drawn per room, uniformly:

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

The people's speech (`Composed.truth`, what "people's speech sent" is a share of) is where
a turn's dry recording is both voiced (`voiced`: its level) and speech to Silero VAD
(`speech`): a level alone counts the clicks, knocks and breaths some recordings hold
between their words (`ru_silero_60s` 24-29 s, the far-field AMI excerpts) as speech.
"""

from __future__ import annotations

import csv
import itertools
import os
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
MAX_TAIL_S = 20.0  # a room runs at most this long after its last turn
PEOPLE_DBFS, OURS_DBFS = -24.0, -20.0
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
    truth: npt.NDArray[np.bool_]  # per sample: a person speaks (`voiced` and `speech`)
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


SPEECH_PROBABILITY = 0.5  # Silero's own default threshold
SPEECH_MARGIN_S = 0.2  # around what Silero hears: onsets and word ends it scores low


@cache
def _silero() -> Any:
    """One Silero VAD model per process (loading it takes ~0.1 s)."""
    from daemon.segmenter.detectors import SileroScorer

    return SileroScorer()


def speech(dry: Floats) -> npt.NDArray[np.bool_]:
    """Per sample: within `SPEECH_MARGIN_S` of a 32 ms chunk Silero VAD scores as speech
    (the recording peak-normalised to -6 dBFS, one fresh model state per turn)."""
    scorer = _silero()
    scorer.reset()
    pcm = np.round(dry / max(float(np.max(np.abs(dry))), 1e-9) * 0.5 * 32767).astype(np.int16)
    chunk, margin = 512, round(SPEECH_MARGIN_S * RATE)
    out = np.zeros(len(dry), dtype=bool)
    for i in range(0, len(pcm) - chunk + 1, chunk):
        if scorer.score(pcm[i : i + chunk]) >= SPEECH_PROBABILITY:
            out[max(0, i - margin) : i + chunk + margin] = True
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
        truth[at : at + length] = voiced(dry) & speech(dry)
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
