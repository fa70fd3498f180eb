"""The echo gate: ignore the microphone while our own speech plays (`echo_guard = "gate"`).

While our speech is (expected to be) audible from the speaker, and for `tail_s` after it
drained (room reverberation, device latency), captured frames are replaced by silence of
the same length on the same clock: the segmenter just sees silence and never cuts our own
voice into an utterance. People talking over the translation are lost meanwhile: the
echo canceller (`daemon/echo/canceller.py`, `echo_guard = "aec"`) is the full-duplex mode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from daemon.counters import Counters
from daemon.echo.guard import Evidence, Measures, Verdict
from daemon.echo.residual import Residual
from daemon.values import Frame, Utterance

log = logging.getLogger(__name__)

GateMode = Literal["gate", "off"]


class EchoGate:
    """Zero the frames captured while our speech plays, or within `tail_s` after.

    `audible_until()` returns the time.monotonic() until which the speaker is expected
    to sound our audio (0.0 if never); playback owns that figure. A frame is gated when
    its first sample was captured before `audible_until() + tail_s`. Since the gate only
    knows the end of the window, a frame captured just before playback started but
    processed after may be gated too (at most the reader's lag, typically < 30 ms).
    """

    def __init__(
        self,
        audible_until: Callable[[], float],
        counters: Counters,
        *,
        mode: GateMode = "gate",
        tail_s: float = 0.3,
    ) -> None:
        if tail_s < 0:
            raise ValueError("tail_s must not be negative")
        self._audible_until = audible_until
        self._counters = counters
        self._mode: GateMode = mode
        self._tail_s = tail_s
        self._gating = False

    @property
    def mode(self) -> GateMode:
        return self._mode

    @property
    def tail_s(self) -> float:
        return self._tail_s

    def process(self, frame: Frame, captured_at: float) -> Frame:
        if self._mode == "off":
            return frame
        gate = captured_at < self._audible_until() + self._tail_s
        if gate != self._gating:
            self._gating = gate
            log.debug("echo gate %s at sample %d", "closed" if gate else "open", frame.start)
        if not gate:
            return frame
        self._counters.add("echo_gated_frames")
        return Frame(frame.start, np.zeros_like(frame.pcm))

    def double_talk(self) -> bool:
        return False

    def evidence(self, utt: Utterance) -> Evidence | None:
        return None

    def screen(self, utt: Utterance, measures: Measures | None = None) -> Utterance | Verdict:
        """The gate sends whatever it let through."""
        return utt

    def residual(self, utt: Utterance) -> Residual | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"mode": self._mode}
