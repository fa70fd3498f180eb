"""Local stand-in for Alibaba's `qwen3-livetranslate-flash` (OpenAI-compatible, SSE).

Run with ``python -m daemon.simulator`` (or ``roomtranslate simulator``). It validates
requests the way the real service does (see ``../shared/api/CONTRACT.md``), streams a
deterministic "translation" derived from the clip's PCM, and can inject latency and
faults. Control endpoints under ``/_sim/`` expose stats and change settings at runtime.

By concern: ``protocol`` (what a request must be, the errors), ``stream`` (the SSE events
of a reply and how a streaming fault reshapes them), ``speech`` (the caption and speech
derived from a clip), ``faults`` (run-time settings, the fault each request gets, the
accounting), ``server`` (the HTTP server and the command line).

The caption for a clip is ``caption_text(target, duration, clip_digest(pcm))``; the
synthesized speech is a sine tone at ``tone_hz(digest)``, so a recording of the speaker
tells which clip played; with ``--speech-dir DIR`` it is real speech instead (a stretch
of one of DIR's recordings, chosen by the digest), for echo tests that need our own
translation to sound like speech in the room.
"""

from daemon.simulator.server import main

__all__ = ["main"]
