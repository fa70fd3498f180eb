"""The echo stage, between capture and the VAD: keep our own translated speech out.

    mic frame ─▶ [aec: canceller with the played reference | gate | off] ─▶ segmenter
    clip      ─▶ judge(): our own speech? → dropped (echo), never sent

Modes (`audio.echo_guard`, "auto" = the hardware profile's choice, "aec" without one):
- `aec` (`canceller.py`): WebRTC AEC3 with the exact PCM the output device played as its
  reference (`reference.py`), plus the own-speech guard (`guard.py`) and, on a clip to be
  sent, the residual echo suppressor (`residual.py`): full duplex.
- `gate` (`gate.py`): the microphone is ignored while our speech plays, plus a tail.
- `off`: speakerphones with hardware echo cancellation, or a PulseAudio/PipeWire
  `module-echo-cancel` source (profile `pulse_echo_cancel`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

from daemon.config import AudioSettings, SegmenterSettings
from daemon.counters import Counters
from daemon.echo.canceller import DoubleTalkConfirmer, EchoCanceller
from daemon.echo.gate import EchoGate
from daemon.echo.guard import Evidence, Measures, Verdict
from daemon.echo.reference import PlayedAudio, ReferenceAligner
from daemon.echo.residual import Residual
from daemon.profiles import Profile
from daemon.segmenter.confirm import Confirmer, ConfirmerFactory, make_confirmer
from daemon.values import Frame, Utterance

EchoMode = Literal["aec", "gate", "off"]

__all__ = [
    "DoubleTalkConfirmer",
    "EchoCanceller",
    "EchoGate",
    "EchoMode",
    "EchoStage",
    "Evidence",
    "Measures",
    "PlayedAudio",
    "Residual",
    "Verdict",
    "confirmer_for",
    "echo_mode",
    "make_echo_stage",
]


class EchoStage(Protocol):
    """A stage between capture and the VAD.

    `captured_at` is the time.monotonic() of the frame's first sample
    (`Capture.monotonic_time(frame.start)`). The returned frame must keep `start` and the
    length: the clock downstream is the capture clock. `screen` takes a clip cut from
    the returned frames and gives the clip to send, or the `Verdict` that it is our own
    speech (it is dropped, not sent); `evidence` is what it judges the clip on, copied
    when the clip is cut (None: nothing to judge), whose `measure()` may run on another
    thread and be handed to `screen`. `residual` is what a clip `screen` gave to send is
    cleaned of our echo from (`Residual.suppressed`, pure, for another thread too; None:
    nothing to take out).
    """

    @property
    def mode(self) -> str: ...

    def process(self, frame: Frame, captured_at: float) -> Frame: ...

    def evidence(self, utt: Utterance) -> Evidence | None: ...

    def screen(self, utt: Utterance, measures: Measures | None = None) -> Utterance | Verdict: ...

    def residual(self, utt: Utterance) -> Residual | None: ...

    def double_talk(self) -> bool: ...

    def describe(self) -> dict[str, Any]: ...


def confirmer_for(stage: EchoStage) -> ConfirmerFactory:
    """The segmenter's clip confirmer behind `stage`: every frame in double talk confirmed
    (`DoubleTalkConfirmer`)."""

    def confirmer(settings: SegmenterSettings) -> Confirmer | None:
        confirm = make_confirmer(settings)
        return DoubleTalkConfirmer(confirm, stage.double_talk) if confirm else None

    return confirmer


def echo_mode(settings: AudioSettings, profile: Profile | None) -> EchoMode:
    """`audio.echo_guard`; "auto" means the profile's choice ("aec" without a profile)."""
    if settings.echo_guard != "auto":
        return settings.echo_guard
    return profile.echo_guard if profile is not None else "aec"


def make_echo_stage(
    settings: AudioSettings,
    profile: Profile | None,
    audible_until: Callable[[], float],
    counters: Counters,
    played: PlayedAudio | None = None,
) -> EchoStage:
    """The echo stage the configuration asks for; "aec" needs what playback plays."""
    mode = echo_mode(settings, profile)
    if mode == "aec":
        if played is None:
            raise ValueError("the echo canceller needs the played audio (PlayedAudio)")
        return EchoCanceller(ReferenceAligner(played, counters), counters, audible_until)
    return EchoGate(audible_until, counters, mode=mode, tail_s=settings.echo_tail_ms / 1000.0)
