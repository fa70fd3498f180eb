"""The echo stage between capture and the VAD: keep our own translated speech out.

First version: `EchoGate`. While our speech is (expected to be) audible from the speaker,
and for `tail_s` after it drained (room reverberation, device latency), captured frames
are replaced by silence of the same length on the same clock: the segmenter just sees
silence and never cuts our own voice into an utterance. People talking over the
translation are lost meanwhile; speakerphones with hardware echo cancellation run with
`mode="off"` (their profile says `echo_guard = "off"`).

The place for a real echo canceller later is the `EchoStage` protocol: a stage that gets
each captured frame with its capture time and returns the frame to segment. A reference
signal canceller (e.g. a WebRTC AEC3 / speexdsp binding) would take the played PCM as
its reference (a value handed forward by playback, see architecture.md) and subtract it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np

from daemon.config import AudioSettings
from daemon.counters import Counters
from daemon.profiles import Profile
from daemon.values import Frame

log = logging.getLogger(__name__)

EchoMode = Literal["gate", "off"]


class EchoStage(Protocol):
    """A stage between capture and the VAD.

    `captured_at` is the time.monotonic() of the frame's first sample
    (`Capture.monotonic_time(frame.start)`). The returned frame must keep `start` and the
    length: the clock downstream is the capture clock.
    """

    def process(self, frame: Frame, captured_at: float) -> Frame: ...


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
        mode: EchoMode = "gate",
        tail_s: float = 0.3,
    ) -> None:
        if tail_s < 0:
            raise ValueError("tail_s must not be negative")
        self._audible_until = audible_until
        self._counters = counters
        self._mode: EchoMode = mode
        self._tail_s = tail_s
        self._gating = False

    @property
    def mode(self) -> EchoMode:
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


def echo_mode(settings: AudioSettings, profile: Profile | None) -> EchoMode:
    """`audio.echo_guard`; "auto" means the profile's choice ("gate" without a profile)."""
    if settings.echo_guard != "auto":
        return settings.echo_guard
    return profile.echo_guard if profile is not None else "gate"


def make_echo_stage(
    settings: AudioSettings,
    profile: Profile | None,
    audible_until: Callable[[], float],
    counters: Counters,
) -> EchoGate:
    """The echo stage the configuration asks for."""
    return EchoGate(
        audible_until,
        counters,
        mode=echo_mode(settings, profile),
        tail_s=settings.echo_tail_ms / 1000.0,
    )
