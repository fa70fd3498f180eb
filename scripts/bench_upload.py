#!/usr/bin/env python3
"""Upload size: WAV vs FLAC data URIs for the clips the segmenter cuts from real speech.

Cuts every shared recording into utterances with the daemon's own segmenter, encodes each
clip both ways (base64 data URI, as sent), and prints bytes per clip, the FLAC/WAV ratio,
encode time per clip, and what the saving means in upload time on a slow uplink.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from daemon.config import Settings
from daemon.filemode import utterances_of
from daemon.translator import audio_data_uri
from daemon.values import Utterance

ROOT = Path(__file__).resolve().parent.parent


def encode(clips: list[Utterance], fmt: str) -> tuple[int, float]:
    """Total data-URI characters and seconds spent encoding."""
    began = time.perf_counter()
    total = sum(len(audio_data_uri(u.pcm, fmt)) for u in clips)
    return total, time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio-dir", type=Path, default=ROOT.parent / "shared" / "audio")
    parser.add_argument("--uplink-kbit", type=float, default=1000.0, help="for the time figure")
    args = parser.parse_args()
    settings = Settings()
    clips: list[Utterance] = []
    for path in sorted(args.audio_dir.glob("*.wav")):
        clips += asyncio.run(utterances_of(path, settings))
    speech_s = sum(u.duration_s for u in clips)
    wav, wav_t = encode(clips, "wav")
    flac, flac_t = encode(clips, "flac")
    per = statistics.median(
        len(audio_data_uri(u.pcm, "flac")) / len(audio_data_uri(u.pcm, "wav")) for u in clips
    )
    print(f"clips: {len(clips)}, {speech_s:.1f} s of speech")
    print(f"{'format':8}{'bytes':>12}{'kB/s speech':>13}{'encode ms/clip':>16}")
    for name, size, secs in (("wav", wav, wav_t), ("flac", flac, flac_t)):
        print(f"{name:8}{size:>12}{size / speech_s / 1000:>13.1f}{1000 * secs / len(clips):>16.2f}")
    print(f"flac / wav: {flac / wav:.3f} overall, {per:.3f} median per clip")
    rate = args.uplink_kbit * 1000 / 8
    saved_ms = (wav - flac) / len(clips) / rate * 1000
    print(f"upload saved per clip at {args.uplink_kbit:.0f} kbit/s: {saved_ms:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
