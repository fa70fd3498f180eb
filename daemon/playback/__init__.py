"""Playback: the translated speech on the room speakers, one utterance after the other.

The path of the audio:

- queue.py: `PlayQueue`, the jitter buffer (utterance order, backlog cap, `Phase`);
- output.py: `OutputDevice`, the stream and its PortAudio callback;
- player.py: `Playback`, the stage the daemon drives (resampling, volume, events, the
  device's lifecycle from daemon/device_lifecycle.py);
- events.py: what it reports.

Events per utterance: `PlaybackStarted` when its first sample went to the device, then
exactly one of `PlaybackDrained` (emitted on the event loop once its last sample's DAC
time has passed) or `PlaybackSkipped` (none for an utterance that never had any audio,
unless `drain(skip_waiting=True)` skips it: 0 s skipped), and last, once it is ended and
playback is done with it, exactly one `PlaybackFinished` carrying its Timeline. Playback
owns this state: callers ask `is_open()` and wait for `PlaybackFinished` instead of
keeping their own sets. With a Timeline, `first_sample_to_device` = when the callback
handed the first sample (`PlaybackStarted.t`; it sounds at `.audible_at`),
`last_sample_drained` = the DAC time of the last sample (`PlaybackDrained.t`).

Counters: `output_underflows` (episodes of a playing, not yet ended utterance running
dry; idle silence and gaps between utterances do not count), `playback_callback_errors`,
`playback_device_underflows` (PortAudio's own underflow flag while busy),
`playback_skipped_utterances`, `playback_skipped_seconds`, `playback_unknown_utterance`
(audio or end for an utterance not open), and the lifecycle's `playback_reopens`,
`playback_open_failures`, `playback_device_lost`, `playback_stalls`,
`playback_rescan_yields`.

Device loss (finished callback, inactive stream or no callback for `STALL_S`): the
device is reopened with the reconnect backoff and the queued audio is KEPT (the backlog
cap bounds it); audio already handed to the lost device is gone. If the reopened device
runs at another rate, everything queued is skipped (reason "device"). While the
microphone is missing and a rescan is due, an idle stream (nothing queued) gives way: it
closes, the rescan runs, it reopens at once.

Quiet room: once nothing was queued or sounding for `IDLE_STOP_S`, the output stream is
STOPPED (not closed): no callbacks, no wake-ups, nothing handed to the DAC, so what the
speaker plays then — and the echo reference of it — is silence. The next utterance's
`start_utterance` starts it again (~1–6 ms, the first callback comes within that); a
device lost while stopped is found then (start fails) and reopened, its audio kept.
"""

from daemon.playback.events import (
    EventCallback,
    PlaybackDrained,
    PlaybackEvent,
    PlaybackFinished,
    PlaybackSkipped,
    PlaybackStarted,
    SkipReason,
)
from daemon.playback.output import DeviceSpec, normalize_device, volume_gain
from daemon.playback.player import (
    IDLE_STOP_S,
    STALL_S,
    TICK_STOPPED_S,
    Playback,
    PlaybackState,
)
from daemon.playback.queue import Phase, PlayQueue

__all__ = [
    "IDLE_STOP_S",
    "STALL_S",
    "TICK_STOPPED_S",
    "DeviceSpec",
    "EventCallback",
    "Phase",
    "PlayQueue",
    "Playback",
    "PlaybackDrained",
    "PlaybackEvent",
    "PlaybackFinished",
    "PlaybackSkipped",
    "PlaybackStarted",
    "PlaybackState",
    "SkipReason",
    "normalize_device",
    "volume_gain",
]
