"""What playback tells the daemon about each utterance (see daemon/playback/__init__.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from daemon.values import Timeline

SkipReason = Literal["backlog", "shutdown", "device"]


@dataclass(frozen=True, slots=True)
class PlaybackStarted:
    """The utterance's first sample went to the device at `t`; it sounds at `audible_at`."""

    utt_id: int
    t: float
    audible_at: float


@dataclass(frozen=True, slots=True)
class PlaybackDrained:
    """The utterance's last sample left the device (DAC) at `t`."""

    utt_id: int
    t: float


@dataclass(frozen=True, slots=True)
class PlaybackSkipped:
    """`seconds` of the utterance's audio were skipped (it will not play, or not further)."""

    utt_id: int
    seconds: float
    reason: SkipReason


@dataclass(frozen=True, slots=True)
class PlaybackFinished:
    """Playback is done with the utterance: it was ended and has drained, been skipped or
    had no audio. Exactly one per started utterance, after its other events."""

    utt_id: int
    timeline: Timeline | None


PlaybackEvent = PlaybackStarted | PlaybackDrained | PlaybackSkipped | PlaybackFinished
EventCallback = Callable[[PlaybackEvent], None]
