"""`roomtranslate translate-file`: the live pipeline's segmenter, client and ordering on a file.

Writes the translated speech (24 kHz WAV, utterances in order) and captions (SRT or
JSONL) stamped with the source timestamps, shows progress on a terminal, and ends with a
summary. It is also how an installer tries an API key before touching a room.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import soundfile as sf

from daemon.config import LiveRoom, Settings
from daemon.counters import Counters
from daemon.filesource import FileSource
from daemon.languages import speaks
from daemon.segmenter import Segmenter, SpeechStarted
from daemon.sequencer import Sequencer
from daemon.translator import Translator
from daemon.values import (
    OUTPUT_RATE,
    SAMPLE_RATE,
    AudioChunk,
    Outcome,
    TextDelta,
    TranslationEvent,
    Usage,
    Utterance,
)


@dataclass(slots=True)
class Caption:
    id: int
    start_s: float
    end_s: float
    text: str
    outcome: str
    reason: str
    complete: bool = True


@dataclass(slots=True)
class Summary:
    utterances: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    speech_out_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    billed_in_s: float = 0.0
    billed_out_s: float = 0.0
    interrupted: str = ""  # the signal that stopped the run, if one did

    def add_usage(self, usage: Usage) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.billed_in_s += usage.input_audio_tokens / 12.5
        self.billed_out_s += usage.output_audio_tokens / 12.5

    def lines(self) -> list[str]:
        out = [
            f"utterances: {self.utterances}  translated: {self.outcomes['translated']}  "
            f"failed: {self.outcomes['failed']}  dropped: {self.outcomes['dropped']}",
            f"billed audio: {self.billed_in_s:.1f} s in, {self.billed_out_s:.1f} s out;  "
            f"tokens: {self.prompt_tokens} prompt + {self.completion_tokens} completion "
            f"= {self.prompt_tokens + self.completion_tokens}",
            f"speech written: {self.speech_out_s:.1f} s",
        ]
        if self.reasons:
            listed = ", ".join(f"{reason} {n}" for reason, n in sorted(self.reasons.items()))
            out.append(f"failures by reason: {listed}")
        if self.interrupted:
            unfinished = self.utterances - self.outcomes.total()
            out.append(
                f"interrupted by {self.interrupted}: {unfinished} utterance(s) cut but not "
                "finished; the rest of the file was not read"
            )
        return out


async def utterances_of(path: Path, settings: Settings) -> list[Utterance]:
    """The clips the segmenter cuts from a file, as fast as possible (no service)."""
    source = FileSource(path, SAMPLE_RATE * settings.segmenter.frame_ms // 1000)
    segmenter = Segmenter(settings.segmenter, LiveRoom(settings.room), Counters(), source.wall_time)
    found: list[Utterance] = []
    async for frame in source.frames():
        found += [e for e in segmenter.push(frame) if isinstance(e, Utterance)]
    return found + [e for e in segmenter.flush() if isinstance(e, Utterance)]


class OutputError(Exception):
    """An output path that cannot be used; found before anything is sent."""


def check_outputs(source: Path, outputs: list[Path]) -> None:
    """Refuse outputs that are the input or each other, or that cannot be created."""
    real = os.path.realpath(source)
    seen: dict[str, Path] = {}
    for path in outputs:
        resolved = os.path.realpath(path)
        if resolved == real or (path.exists() and os.path.samefile(path, source)):
            raise OutputError(f"{path}: is the input file; refusing to overwrite it")
        if resolved in seen:
            raise OutputError(f"{path}: given for both speech and captions")
        seen[resolved] = path
        if path.is_dir():
            raise OutputError(f"{path}: is a directory")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise OutputError(f"{path}: no such directory: {parent}")
        target = path if path.exists() else parent
        if not os.access(target, os.W_OK):
            raise OutputError(f"{path}: not writable")


def srt_time(seconds: float) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{ms:03d}"


class CaptionWriter:
    """SRT (translated captions only) or JSONL (every utterance with its outcome)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.jsonl = path.suffix.lower() == ".jsonl"
        self._fh: IO[str] = path.open("w", encoding="utf-8")
        self._index = 0

    def write(self, caption: Caption) -> None:
        if self.jsonl:
            self._fh.write(json.dumps(asdict(caption), ensure_ascii=False) + "\n")
        elif caption.text:
            self._index += 1
            span = f"{srt_time(caption.start_s)} --> {srt_time(caption.end_s)}"
            self._fh.write(f"{self._index}\n{span}\n{caption.text}\n\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class Progress:
    """One status line on a terminal (stderr); silent otherwise."""

    def __init__(self, stream: IO[str], total_s: float) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._total = max(total_s, 1e-9)

    def show(self, position_s: float, summary: Summary) -> None:
        if not self._tty:
            return
        pct = min(100.0, 100.0 * position_s / self._total)
        done = summary.outcomes["translated"]
        line = f"\r{pct:5.1f}%  {summary.utterances} utterances, {done} translated"
        self._stream.write(line)
        self._stream.flush()

    def end(self) -> None:
        if self._tty:
            self._stream.write("\n")


class FileRun:
    """One translate-file run: source → segmenter → sequencer → WAV + captions."""

    def __init__(
        self,
        settings: Settings,
        api_key: str,
        source: Path,
        wav_out: Path | None,
        captions_out: Path | None,
        *,
        err: IO[str],
    ) -> None:
        self.settings = settings
        self.counters = Counters()
        self.room = LiveRoom(settings.room)
        self.source = FileSource(source, SAMPLE_RATE * settings.segmenter.frame_ms // 1000)
        self.translator = Translator(settings.api, api_key, self.counters)
        self.sequencer = Sequencer(
            settings.pipeline, self.translator.translate, self.room, self.counters
        )
        self._captions_out = captions_out
        self.summary = Summary()
        self.progress = Progress(err, self.source.duration_s)
        self._err = err
        speech = settings.room.speech and speaks(settings.room.target_lang)
        self.wav_path = wav_out if speech else None
        self._wav: sf.SoundFile | None = None
        self._captions: CaptionWriter | None = None
        self._text: dict[int, str] = {}

    def open_outputs(self) -> None:
        """Create the output files now, before any request is paid for (OSError if not)."""
        if self.wav_path is not None:
            self._wav = sf.SoundFile(
                str(self.wav_path), "w", OUTPUT_RATE, 1, subtype="PCM_16", format="WAV"
            )
        if self._captions_out is not None:
            self._captions = CaptionWriter(self._captions_out)

    async def run(self) -> Summary:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._segment())
                group.create_task(self.sequencer.run())
                group.create_task(self._collect())
        finally:
            await self.translator.aclose()
            self._close_outputs()
            self.progress.end()
        return self.summary

    async def _segment(self) -> None:
        segmenter = Segmenter(
            self.settings.segmenter, self.room, self.counters, self.source.wall_time
        )
        try:
            async for frame in self.source.frames():
                for event in segmenter.push(frame):
                    await self._accept(event)
                self.progress.show(frame.end / SAMPLE_RATE, self.summary)
            for event in segmenter.flush():
                await self._accept(event)
        finally:
            self.sequencer.close()

    async def _accept(self, event: SpeechStarted | Utterance) -> None:
        if isinstance(event, Utterance):
            self.summary.utterances += 1
            await self.sequencer.put(event)

    async def _collect(self) -> None:
        async for utt, event in self.sequencer.results():
            self._handle(utt, event)

    def _handle(self, utt: Utterance, event: TranslationEvent) -> None:
        if isinstance(event, TextDelta):
            self._text[utt.id] = self._text.get(utt.id, "") + event.text
        elif isinstance(event, AudioChunk):
            self._write_audio(event)
        elif isinstance(event, Outcome):
            self._finish(utt, event)

    def _write_audio(self, chunk: AudioChunk) -> None:
        if self._wav is None:
            return
        self._wav.write(chunk.pcm)
        self.summary.speech_out_s += len(chunk.pcm) / OUTPUT_RATE

    def _finish(self, utt: Utterance, outcome: Outcome) -> None:
        self.summary.outcomes[outcome.kind] += 1
        if outcome.kind != "translated":
            self.summary.reasons[outcome.reason] += 1
            self._err.write(
                f"utterance {utt.id} ({utt.start / SAMPLE_RATE:.2f}s): "
                f"{outcome.kind}: {outcome.reason} {outcome.detail}\n"
            )
        if outcome.usage is not None:
            self.summary.add_usage(outcome.usage)
        text = outcome.text or self._text.pop(utt.id, "")
        self._text.pop(utt.id, None)
        if self._captions is not None:
            complete = outcome.kind == "translated"
            self._captions.write(
                Caption(
                    utt.id,
                    utt.start / SAMPLE_RATE,
                    utt.end / SAMPLE_RATE,
                    # JSONL keeps the partial text of a cut stream; SRT shows only finished ones
                    text if complete or self._captions.jsonl else "",
                    outcome.kind,
                    outcome.reason,
                    complete,
                )
            )

    def close_quietly(self) -> None:
        """Close whatever outputs were opened (after a failure to open the others)."""
        self._close_outputs()

    def _close_outputs(self) -> None:
        if self._captions is not None:
            self._captions.close()
        if self._wav is not None:  # closing writes the WAV header with the real length
            self._wav.close()


EX_CANTCREAT = 73  # sysexits.h: an output file cannot be created


def summary_dict(summary: Summary) -> dict[str, Any]:
    return {
        "utterances": summary.utterances,
        "outcomes": dict(summary.outcomes),
        "failures": dict(summary.reasons),
        "billed_audio_s": {"input": summary.billed_in_s, "output": summary.billed_out_s},
        "tokens": {"prompt": summary.prompt_tokens, "completion": summary.completion_tokens},
        "speech_out_s": summary.speech_out_s,
    }


async def _run_until_signal(run: FileRun) -> Summary:
    """`run.run()`, stopped by SIGTERM/SIGINT: outputs closed, the summary says so."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    caught: list[str] = []

    def stop(signum: signal.Signals) -> None:
        if not caught:
            caught.append(signum.name)
            task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    try:
        return await run.run()
    except asyncio.CancelledError:
        if not caught:
            raise
        task.uncancel()
        run.summary.interrupted = caught[0]
        return run.summary
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def translate_file(
    settings: Settings,
    api_key: str,
    source: Path,
    wav_out: Path | None,
    captions_out: Path | None,
    *,
    allow_empty: bool = False,
) -> int:
    """Run translate-file. Exit status: 0 when every utterance was translated, 1 when some
    failed or no speech was found (unless `allow_empty`), 73 when an output cannot be
    written, 128 + the signal number when stopped by SIGTERM/SIGINT."""
    try:
        check_outputs(source, [p for p in (wav_out, captions_out) if p is not None])
    except OutputError as exc:
        sys.stderr.write(f"roomtranslate: {exc}\n")
        return EX_CANTCREAT
    run = FileRun(settings, api_key, source, wav_out, captions_out, err=sys.stderr)
    if wav_out is not None and run.wav_path is None:
        sys.stderr.write(
            f"note: {settings.room.target_lang!r} is text-only (or speech is off): "
            f"no speech is written to {wav_out}\n"
        )
    try:
        run.open_outputs()
    except (OSError, sf.LibsndfileError) as exc:
        run.close_quietly()
        sys.stderr.write(f"roomtranslate: cannot write the output: {exc}\n")
        return EX_CANTCREAT
    summary = asyncio.run(_run_until_signal(run))
    for line in summary.lines():
        print(line)
    written = [str(p) for p in (run.wav_path, captions_out) if p is not None]
    if written:
        print("wrote: " + ", ".join(written))
    if summary.interrupted:
        return 128 + signal.Signals[summary.interrupted].value
    if summary.utterances == 0:
        print(f"no speech found in {source}: nothing was sent", file=sys.stderr)
        return 0 if allow_empty else 1
    return 0 if summary.outcomes["translated"] == summary.utterances else 1
