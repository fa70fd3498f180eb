"""The echo canceller stage offline: real speech through a simulated room, device clocks.

Our translation (German and Chinese recordings) plays from the speaker; the room
(pyroomacoustics impulse response, RT60 0.45 s, -3 dB, 60 ms) brings it to the
microphone with the people (English, French, Italian recordings through another
response), noise and clipping. `room_echo.run_canceller` drives the daemon's own
`EchoCanceller` as the live daemon does: the playback callback writes 10 ms blocks
(24 kHz) 40 ms before they sound, the microphone's frames arrive stamped with their
capture times. Each test fails if the canceller (or the guard) is taken out.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import soxr
import webrtcvad

from daemon.config import AudioSettings, SegmenterSettings
from daemon.counters import Counters
from daemon.echo import EchoCanceller, EchoGate, PlayedAudio, Verdict, make_echo_stage
from daemon.echo.canceller import AEC_DELAY_SAMPLES, DT_PRE_ROLL_S
from daemon.echo.reference import ReferenceAligner
from daemon.values import SAMPLE_RATE, Frame, Utterance, UtteranceStats
from scripts import room_echo
from scripts.scenario import load, make_segmenter, segment_pcm, to_float, trim

pytestmark = pytest.mark.slow  # rooms simulated offline: seconds each
Floats = npt.NDArray[np.float64]
RATE = SAMPLE_RATE
ECHO = {"delay_s": 0.060, "gain_db": -3.0}
NOISE_DBFS = -65.0


def speech(*names: str) -> Floats:
    return np.concatenate([to_float(trim(load(n))).astype(np.float64) for n in names])


def rms(x: Floats) -> float:
    return float(np.sqrt(np.mean(x * x) + 1e-20))


def level(x: Floats, dbfs: float) -> Floats:
    return x / rms(x) * 10 ** (dbfs / 20)


def to_pcm(x: Floats) -> npt.NDArray[np.int16]:
    return np.clip(np.rint(x * 32768), -32768, 32767).astype(np.int16)


def erle_db(mic: Floats, out: Floats, start_s: float, end_s: float) -> float:
    a, b = round(start_s * RATE), round(end_s * RATE)
    return float(10 * np.log10(np.sum(mic[a:b] ** 2) / max(np.sum(out[a:b] ** 2), 1e-20)))


class Room:
    """Our speech and the people in one room: what the microphone hears."""

    def __init__(self, seconds: float, seed: int = 3) -> None:
        self.n = round(seconds * RATE)
        self.ours = np.zeros(self.n)
        self.people = np.zeros(self.n)
        self.h_speaker = room_echo.room_impulse_response(0.45, seed)
        self.h_person = room_echo.room_impulse_response(0.45, seed + 100)
        self.spans: list[tuple[float, float]] = []

    def play(self, x: Floats, at_s: float) -> None:
        a = round(at_s * RATE)
        self.ours[a : a + len(x)] += x[: self.n - a]

    def talk(self, x: Floats, at_s: float, dbfs: float) -> None:
        wet = level(np.convolve(x, self.h_person)[: len(x)], dbfs)
        a = round(at_s * RATE)
        self.people[a : a + len(wet)] += wet[: self.n - a]
        self.spans.append((at_s, at_s + len(wet) / RATE))

    @property
    def echo(self) -> Floats:
        return room_echo.echo_of(self.ours, self.h_speaker, **ECHO)

    def mic(self, *, clip_at: float = 1.0, echo: Floats | None = None) -> Floats:
        """What the microphone hears; `echo` instead of the room's own (a shifted path)."""
        noise = np.random.default_rng(0).standard_normal(self.n) * 10 ** (NOISE_DBFS / 20)
        heard = self.echo if echo is None else echo
        return np.clip(heard + self.people + noise, -clip_at, clip_at)

    def played24(self) -> Floats:
        return soxr.resample(self.ours, RATE, 24_000)


def vad_frames(x: Floats) -> npt.NDArray[np.bool_]:
    vad = webrtcvad.Vad(2)
    pcm = to_pcm(x)
    return np.array(
        [vad.is_speech(pcm[k : k + 480].tobytes(), RATE) for k in range(0, len(pcm) - 479, 480)]
    )


# ------------------------------------------------------------------------------ ERLE


def test_canceller_removes_our_speech_with_noise_and_clipping() -> None:
    room = Room(20.0)
    room.play(level(speech("de_silero_60s")[: 19 * RATE], -14.0), 0.5)
    mic = room.mic(clip_at=0.35)  # a loud passage clips the microphone
    assert np.mean(np.abs(mic) >= 0.35) > 1e-4
    out, stage = room_echo.run_canceller(mic, room.played24())
    erle = erle_db(mic, out, 3.0, 19.0)
    assert erle >= 20.0, erle
    # Converged within 2 s of our first word: every 0.5 s window after it in which our
    # echo is audible (above -45 dBFS) has >= 10 dB of it removed (a clipped passage's
    # echo is not linear), most of them far more.
    echo = room.echo
    windows = [
        erle_db(mic, out, t, t + 0.5)
        for t in np.arange(2.5, 19.0, 0.5)
        if rms(echo[round(t * RATE) : round((t + 0.5) * RATE)]) > 10 ** (-45 / 20)
    ]
    assert len(windows) > 20 and min(windows) >= 10.0, windows
    assert float(np.median(windows)) >= 25.0, windows
    assert stage.describe()["canceller"] == "active"


def test_without_the_canceller_the_echo_stays() -> None:
    """The same room through the gate's "off" mode: nothing is removed (the ERLE test above
    measures the canceller, not the room)."""
    room = Room(8.0)
    room.play(level(speech("de_silero_60s")[: 7 * RATE], -14.0), 0.5)
    mic = room.mic()
    out, _ = room_echo.run_canceller(
        mic, room.played24(), stage=EchoGate(lambda: 0.0, Counters(), mode="off")
    )
    assert abs(erle_db(mic, out, 2.0, 7.5)) < 1.0


# ------------------------------------------------------------------------ double talk


@pytest.mark.parametrize("ser_db", [0.0, -6.0])
def test_double_talk_keeps_the_person(ser_db: float) -> None:
    """A person talks over our translation (as loud as our echo, or 6 dB quieter)."""
    room = Room(16.0)
    room.play(level(speech("de_silero_60s")[: 15 * RATE], -20.0), 0.5)
    room.talk(speech("en_pv_librispeech"), 8.0, dbfs=-23.0 + ser_db)
    mic = room.mic()
    out, stage = room_echo.run_canceller(mic, room.played24())
    start, end = room.spans[0]
    a, b = round(start * RATE), round(end * RATE)
    person = room.people[a:b]
    # The person is kept: correlation with the clean talker (best lag within 20 ms) ...
    lags = range(0, 2 * AEC_DELAY_SAMPLES + 1, 4)
    corr = max(abs(np.corrcoef(out[a + lag : b + lag], person)[0, 1]) for lag in lags)
    assert corr >= 0.3, corr
    # ... the VAD still hears most of their voiced frames ...
    voiced = vad_frames(person)
    recall = float(np.sum(voiced & vad_frames(out[a:b])) / np.sum(voiced))
    assert recall >= (0.6 if ser_db == 0 else 0.35), recall
    # ... the segmenter cuts them as speech, sent by the guard and widened, from the first word.
    sent = [
        s
        for s in map(stage.screen, segment_pcm(to_pcm(out)).utterances)
        if isinstance(s, Utterance)
    ]
    covered = sum(max(0.0, min(end, u.end / RATE) - max(start, u.start / RATE)) for u in sent)
    # 6 dB under our echo, the canceller's suppression leaves a tail the segmenter's Silero
    # confirmation does not believe (README, known limits).
    assert covered / (end - start) >= (0.9 if ser_db == 0 else 0.5), [
        (u.start / RATE, u.end / RATE) for u in sent
    ]
    # And our speech before the person came was removed.
    assert erle_db(mic, out, 3.0, start) >= 20.0


# ------------------------------------------------------------------------------ guard


Screened = list[tuple[tuple[float, float], Utterance | Verdict]]


def screened(room: Room, mic: Floats) -> tuple[Screened, Screened, EchoCanceller]:
    """The canceller over `mic`, with a live segmenter (Silero confirmation off) cutting
    its output and each clip screened by the stage as it is cut, as the daemon does:
    (ours alone, with a person), as (span, verdict or clip), and the stage."""
    own: Screened = []
    people: Screened = []
    segmenter = make_segmenter(SegmenterSettings(confirm="off"))

    def after(stage: EchoCanceller, frame: Frame) -> None:
        for utt in segmenter.push(frame):
            if isinstance(utt, Utterance):
                span = (utt.start / RATE, utt.end / RATE)
                heard = sum(max(0.0, min(e, span[1]) - max(s, span[0])) for s, e in room.spans)
                (own if heard < 0.2 else people).append((span, stage.screen(utt)))

    _, stage = room_echo.run_canceller(mic, room.played24(), after=after)
    return own, people, stage


@pytest.mark.parametrize(("seed", "people_dbfs"), [(3, -23.0), (5, -29.0)])
def test_guard_drops_our_own_speech_and_sends_every_person(seed: int, people_dbfs: float) -> None:
    """Our first translation meets a fresh canceller: its first second comes through and
    is cut into a clip; later the people talk between and over our speech (as loud as
    our echo, or 6 dB quieter). Every clip of ours alone is judged ours and dropped, no
    clip with a person in it is. (The segmenter's Silero confirmation happens to reject
    that residual too; it is off here, so the guard is what is tested.)"""
    room = Room(30.0, seed=seed)
    room.play(level(speech("zh_funasr_long", "zh_funasr_mid"), -20.0), 0.5)
    room.play(level(speech("de_pv_leopard", "zh_funasrggml_zh"), -20.0), 19.0)
    room.talk(speech("fr_pv_leopard"), 14.5, dbfs=people_dbfs)
    room.talk(speech("it_pv_leopard"), 24.0, dbfs=people_dbfs)
    own, people, stage = screened(room, room.mic())
    assert own, "our speech alone must have been cut, or this tests nothing"
    assert all(isinstance(v, Verdict) for _, v in own), own
    assert len(people) >= 2 and all(isinstance(v, Utterance) for _, v in people), people
    assert stage.describe()["converged"] is True


@pytest.mark.parametrize("people_dbfs", [-23.0, -29.0])
def test_guard_drops_our_residual_when_the_echo_path_shifts(people_dbfs: float) -> None:
    """After the canceller has converged the echo path gets 150 ms longer (a sound
    server's buffer grew): AEC3 leaks bursts of our voice while it re-adapts. What the
    microphone heard over such a clip is our echo, and it is dropped. Nobody who talks is."""
    room = Room(40.0, seed=0)
    ours = np.concatenate([speech("zh_funasr_long", "zh_funasr_mid")] * 4)
    room.play(level(ours, -20.0)[: 36 * RATE], 0.5)
    room.talk(speech("fr_pv_leopard"), 12.0, dbfs=people_dbfs)
    room.talk(speech("it_pv_leopard"), 26.0, dbfs=people_dbfs)
    shift = round(20.0 * RATE)
    later = room_echo.echo_of(
        room.ours, room.h_speaker, delay_s=ECHO["delay_s"] + 0.150, gain_db=ECHO["gain_db"]
    )
    mic = room.mic(echo=np.concatenate((room.echo[:shift], later[shift:])))
    own, people, _ = screened(room, mic)
    assert own and all(isinstance(v, Verdict) for _, v in own), own
    assert len(people) >= 2 and all(isinstance(v, Utterance) for _, v in people), people
    sent = [(v.start / RATE, v.end / RATE) for _, v in people if isinstance(v, Utterance)]
    for start, _ in room.spans:  # each person from their first word
        assert any(a <= start + 0.05 < b for a, b in sent), (start, sent)


def clip_of(out: Floats, start_s: float, end_s: float) -> Utterance:
    """A clip the segmenter might have cut from the canceller's output `out`."""
    a, b = round(start_s * RATE), round(end_s * RATE)
    stats = UtteranceStats(voiced_frames=0, frames=0, mean_dbfs=0.0, peak_dbfs=0.0, split=False)
    return Utterance(1, a, b, to_pcm(out[a:b]), stats, start_s, end_s)


@pytest.mark.parametrize(("seed", "ser_db"), [(3, -6.0), (5, -10.0)])
def test_a_person_held_under_the_vad_for_seconds_is_sent_from_their_first_word(
    seed: int, ser_db: float
) -> None:
    """AEC3's suppressor can keep a person who starts over our speech under the VAD for
    2.6 s (rig, docs/limits.md); their clip is widened back to where the microphone
    heard them begin, past `DT_PRE_ROLL_S`. A clip cut as they begin is widened by
    `DT_PRE_ROLL_S` only: our echo alone before them is not taken for a person."""
    room = Room(16.0, seed=seed)
    room.play(level(speech("de_silero_60s")[: 15 * RATE], -20.0), 0.5)
    room.talk(speech("en_pv_librispeech")[: 6 * RATE], 8.0, dbfs=-20.0 + ser_db)
    out, stage = room_echo.run_canceller(room.mic(), room.played24())
    onset = room.spans[0][0]
    late = stage.screen(clip_of(out, onset + 2.6, 13.5))
    assert isinstance(late, Utterance) and late.start / RATE <= onset + 0.05, late
    assert late.start / RATE >= onset - 0.6, late  # (the window where they began)
    stage = room_echo.run_canceller(room.mic(), room.played24())[1]
    prompt = stage.screen(clip_of(out, onset + 0.1, 13.5))
    assert isinstance(prompt, Utterance)
    assert abs(prompt.start / RATE - (onset + 0.1 - DT_PRE_ROLL_S)) < 0.01, prompt


def test_guard_does_not_judge_a_clip_while_nothing_played() -> None:
    room = Room(6.0)
    room.talk(speech("en_vctk_p286_011"), 1.0, dbfs=-23.0)
    out, stage = room_echo.run_canceller(room.mic(), room.played24())
    clips = segment_pcm(to_pcm(out)).utterances
    assert clips and all(stage.screen(u) is u for u in clips)


# --------------------------------------------------------------------- reference clock


def test_reference_is_what_sounded_while_the_frame_was_captured() -> None:
    """PlayedAudio at 48 kHz with DAC stamps → 16 kHz samples on the capture time line."""
    counters = Counters()
    played = PlayedAudio(counters)
    played.open(48_000)
    aligner = ReferenceAligner(played, counters)
    tone = np.sin(2 * np.pi * 440 * np.arange(48_000 * 2) / 48_000) * 0.5
    block = to_pcm(tone).reshape(-1, 1)
    for k in range(0, len(block), 480):  # 10 ms blocks, the last sample of each sounds at...
        played.write(block[k : k + 480], 10.0 + (k + 480) / 48_000)
        if k == 48_000:
            break
    got = aligner.reference_for(10.5, 1600).astype(np.float64)
    want = np.sin(2 * np.pi * 440 * (0.5 + np.arange(1600) / RATE)) * 0.5 * 32768
    assert np.corrcoef(got, want)[0, 1] > 0.99
    assert not aligner.reference_for(30.0, 160).any()  # nothing played then: silence


@pytest.mark.parametrize("ppm", [100.0, -100.0])
def test_clock_drift_between_microphone_and_speaker(ppm: float) -> None:
    """Separate USB devices: the microphone's crystal runs 100 ppm off the speaker's.
    Over 4 minutes the echo moves by 24 ms; the canceller keeps cancelling."""
    seconds = 240.0
    voice = level(speech("de_silero_60s"), -14.0)
    room = Room(seconds)
    room.play(np.tile(voice, int(seconds * RATE) // len(voice) + 1)[: room.n - RATE], 0.5)
    mic = room.mic()
    out, _ = room_echo.run_canceller(mic, room.played24(), mic_ppm=ppm)
    # Compare on the microphone's own (resampled) clock: what it captured in and out.
    rate = RATE * (1 + ppm * 1e-6)
    captured = soxr.resample(mic, RATE, rate)[: len(out)]
    assert erle_db(captured, out, seconds - 30.0, seconds - 2.0) >= 20.0


def test_make_echo_stage_aec_needs_the_played_audio() -> None:
    with pytest.raises(ValueError, match="played audio"):
        make_echo_stage(AudioSettings(echo_guard="aec"), None, lambda: 0.0, Counters())
    played = PlayedAudio(Counters())
    stage = make_echo_stage(AudioSettings(), None, lambda: 0.0, Counters(), played)
    assert isinstance(stage, EchoCanceller) and stage.mode == "aec"


def test_reference_after_the_output_stream_paused() -> None:
    """Playback stops its stream while the room is quiet and starts it again: the played
    audio after the pause is placed at its own DAC time, the pause reads as silence."""
    counters = Counters()
    played = PlayedAudio(counters)
    played.open(24_000)
    aligner = ReferenceAligner(played, counters)
    block = np.full((240, 1), 8000, dtype=np.int16)
    for k in range(100):  # 1 s playing, from t = 10 s
        played.write(block, 10.0 + (k + 1) / 100)
    assert aligner.reference_for(10.5, 160).all()
    for k in range(100):  # 1 s playing again from t = 15 s, same stream (same generation)
        played.write(block, 15.0 + (k + 1) / 100)
    assert not aligner.reference_for(14.5, 160).any()  # the pause: silence
    assert aligner.reference_for(15.5, 160).all()
