#!/usr/bin/env python3
"""A private PulseAudio "sound rig": a real microphone and speaker on a machine without any.

Stdlib only; usable as a module (`AudioRig`, a context manager) and as a command:

    eval "$(python scripts/audio_rig.py start --dir /tmp/rig)"   # prints `export VAR=...`
    python scripts/audio_rig.py stop --dir /tmp/rig

What it builds (see ../shared/notes/virtual-audio.md for the measurements behind it):
- a PulseAudio server run in the foreground of its own session (`setsid`), with its own
  HOME, XDG_RUNTIME_DIR, PULSE_RUNTIME_PATH and PULSE_STATE_PATH under the rig directory
  and one anonymous native socket, `<dir>/native`;
- null sink `spk` (48 kHz stereo): what programs play to; `record_speaker()` records its
  monitor, i.e. what the room would hear;
- null sink `micfeed` (48 kHz stereo) and `mic`, a mono remap source of `micfeed.monitor`:
  `play_into_mic()` plays a WAV into `micfeed` and programs capture it from `mic`;
- `$HOME/.asoundrc` (HOME = `<dir>/home`) with ALSA PCMs `rig_mic` and `rig_spk` (ALSA's
  pulse plugin), so PortAudio/sounddevice lists them as devices;
- one silent low-latency `pacat` stream into each null sink for the rig's lifetime, then
  one suspend/unsuspend of each sink: an idle null sink renders in 2-second blocks and a
  new capture stream would lose its first ~2 s otherwise.

Every process is started with `setsid` and stopped by its PID (SIGTERM, then SIGKILL).
The PIDs (with their kernel start times, so a recycled PID is never signalled) are kept
in `<dir>/pids`, which is how `stop --dir` finds them from another process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from types import TracebackType

SINKS = ("spk", "micfeed")
SINK_RATE = 48_000
SINK_CHANNELS = 2
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 2.0
RESAMPLE_METHOD = "speex-float-1"
REQUIRED_PROGRAMS = ("pulseaudio", "pactl", "pacat", "paplay", "parecord")

Popen = subprocess.Popen[bytes]


class RigError(RuntimeError):
    """The rig could not be started (the message says why, with PulseAudio's log tail)."""


def missing_programs() -> list[str]:
    """The PulseAudio programs the rig needs that are not on PATH."""
    return [name for name in REQUIRED_PROGRAMS if shutil.which(name) is None]


def _default_pa(socket_path: Path) -> str:
    lines = [
        f"load-module module-native-protocol-unix auth-anonymous=1 socket={socket_path}",
        *(
            f"load-module module-null-sink sink_name={sink} rate={SINK_RATE} "
            f"channels={SINK_CHANNELS}"
            for sink in SINKS
        ),
        "load-module module-remap-source source_name=mic master=micfeed.monitor "
        "channels=1 channel_map=mono",
        "set-default-sink spk",
        "set-default-source mic",
    ]
    return "\n".join(lines) + "\n"


def _asoundrc(server: str) -> str:
    entries = []
    for pcm, device in (("rig_mic", "mic"), ("rig_spk", "spk")):
        entries.append(
            f'pcm.{pcm} {{\n    type pulse\n    device "{device}"\n    server "{server}"\n}}\n'
            f'ctl.{pcm} {{\n    type pulse\n    server "{server}"\n}}\n'
        )
    return "\n".join(entries)


def _start_time(pid: int) -> str | None:
    """The kernel start time of a live (non-zombie) process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _alive(pid: int, start_time: str) -> bool:
    return _start_time(pid) == start_time


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def stop_pids(entries: list[tuple[int, str]], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM each live (pid, start time), wait, then SIGKILL what is left."""
    live = [(pid, start) for pid, start in entries if _alive(pid, start)]
    for pid, _ in live:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while live and time.monotonic() < deadline:
        time.sleep(0.01)
        live = [(pid, start) for pid, start in live if _alive(pid, start)]
    for pid, _ in live:
        _signal(pid, signal.SIGKILL)


class AudioRig:
    """A private PulseAudio with a virtual microphone and speaker (context manager)."""

    mic_device = "rig_mic"
    speaker_device = "rig_spk"

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        resample_method: str = RESAMPLE_METHOD,
    ) -> None:
        self._owns_dir = directory is None
        self.resample_method = resample_method
        self.dir = Path(directory or tempfile.mkdtemp(prefix="rig-")).resolve()
        self.socket = self.dir / "native"
        self.log_path = self.dir / "pulseaudio.log"
        self.pid_path = self.dir / "pids"
        self._procs: list[subprocess.Popen[bytes]] = []

    # -- environment ---------------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"unix:{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        """The variables a client process needs to see the rig (add them to os.environ)."""
        runtime = self.dir / "runtime"
        return {
            "HOME": str(self.dir / "home"),
            "XDG_RUNTIME_DIR": str(runtime),
            "PULSE_RUNTIME_PATH": str(runtime / "pulse"),
            "PULSE_STATE_PATH": str(self.dir / "state"),
            "PULSE_SERVER": self.server,
            "PULSE_CLIENTCONFIG": str(self.dir / "client.conf"),
        }

    def _full_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    # -- start / stop --------------------------------------------------------------------

    def start(self) -> AudioRig:
        """Start PulseAudio and the keep-alives; return once clients can use the rig."""
        if missing := missing_programs():
            raise RigError(f"not installed: {', '.join(missing)} (Debian package pulseaudio)")
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            raise RigError(f"rig directory path too long for a Unix socket: {self.dir}")
        if self.running_pids():
            raise RigError(f"a rig is already running in {self.dir}; stop it first")
        self._write_files()
        try:
            self._spawn_pulseaudio()
            self._wait_ready()
            for sink in SINKS:
                self._spawn_keepalive(sink)
            self._wait_keepalives()
            for sink in SINKS:
                self._pactl("suspend-sink", sink, "1")
                self._pactl("suspend-sink", sink, "0")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the keep-alives and PulseAudio by PID (SIGTERM, then SIGKILL)."""
        entries = self._read_pids()
        stop_pids(list(reversed(entries)))
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_TIMEOUT_S)
        self._procs.clear()
        self.pid_path.unlink(missing_ok=True)
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> AudioRig:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def running_pids(self) -> list[int]:
        """PIDs recorded in `<dir>/pids` whose processes still run."""
        return [pid for pid, start in self._read_pids() if _alive(pid, start)]

    # -- clients -------------------------------------------------------------------------

    def play_into_mic(self, wav_path: str | os.PathLike[str], pad_s: float = 0.25) -> Popen:
        """Play a WAV into the microphone (`paplay -d micfeed`); returns the running player.

        `pad_s` of silence is appended (a copy in the rig directory) because PulseAudio
        drops the last 30-60 ms of a stream that stops.
        """
        source = Path(wav_path)
        if pad_s > 0:
            source = self._padded_copy(source, pad_s)
        return self._client(["paplay", "-d", "micfeed", str(source)])

    def record_speaker(
        self, out_wav: str | os.PathLike[str], rate: int = SINK_RATE, channels: int = 1
    ) -> Popen:
        """Record what the speaker plays (`parecord -d spk.monitor`) into a WAV.

        Defaults: 48 kHz (the sink's own rate: no resampling in the rig) mono (the two
        sink channels averaged; a mono program's output comes back unchanged), int16.
        Stop it with `terminate()` and `wait()`: parecord then finalises the WAV header.
        """
        return self._client(
            [
                "parecord",
                "-d",
                "spk.monitor",
                f"--rate={rate}",
                f"--channels={channels}",
                "--format=s16le",
                "--file-format=wav",
                "--latency-msec=20",
                str(out_wav),
            ]
        )

    def pactl(self, *args: str) -> str:
        """Run `pactl` against the rig and return its output."""
        return self._pactl(*args)

    # -- internals -----------------------------------------------------------------------

    def _write_files(self) -> None:
        env = self.env
        for key in ("HOME", "PULSE_RUNTIME_PATH", "PULSE_STATE_PATH"):
            Path(env[key]).mkdir(parents=True, exist_ok=True)
        Path(env["XDG_RUNTIME_DIR"]).chmod(0o700)
        self.socket.unlink(missing_ok=True)
        (self.dir / "rig.pa").write_text(_default_pa(self.socket))
        (self.dir / "client.conf").write_text(f"autospawn = no\ndefault-server = {self.server}\n")
        (Path(env["HOME"]) / ".asoundrc").write_text(_asoundrc(self.server))
        self.pid_path.write_text("")

    def _spawn(self, argv: list[str], stdin: int | None, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._full_env(),
                cwd=self.dir,
                start_new_session=True,
            )
        self._procs.append(proc)
        start = _start_time(proc.pid) or "?"
        with self.pid_path.open("a") as fh:
            fh.write(f"{proc.pid} {start} {argv[0]}\n")
        return proc

    def _spawn_pulseaudio(self) -> None:
        argv = [
            "pulseaudio",
            "--daemonize=no",
            "--system=no",
            "-n",
            "-F",
            str(self.dir / "rig.pa"),
            "--exit-idle-time=-1",
            "--use-pid-file=no",
            "--realtime=no",
            "--high-priority=no",
            "--disallow-module-loading=no",
            "--log-target=stderr",
            "--log-level=notice",
            f"--resample-method={self.resample_method}",
        ]
        self._spawn(argv, None, self.log_path)

    def _spawn_keepalive(self, sink: str) -> None:
        argv = [
            "pacat",
            "--playback",
            "-d",
            sink,
            "--raw",
            "--format=s16le",
            f"--rate={SINK_RATE}",
            f"--channels={SINK_CHANNELS}",
            "--latency-msec=20",
            "--client-name=rig-keepalive",
        ]
        zero = os.open("/dev/zero", os.O_RDONLY)
        try:
            self._spawn(argv, zero, self.dir / f"keepalive-{sink}.log")
        finally:
            os.close(zero)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        pulse = self._procs[0]
        while time.monotonic() < deadline:
            if pulse.poll() is not None:
                raise RigError(f"pulseaudio exited with {pulse.returncode}: {self._log_tail()}")
            if self.socket.exists() and self._pactl_ok("info"):
                return
            time.sleep(0.01)
        raise RigError(f"pulseaudio did not answer within {START_TIMEOUT_S} s: {self._log_tail()}")

    def _wait_keepalives(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            dead = [p for p in self._procs[1:] if p.poll() is not None]
            if dead:
                raise RigError(f"keep-alive pacat exited with {dead[0].returncode}")
            inputs = self._pactl("list", "short", "sink-inputs").strip().splitlines()
            if len(inputs) >= len(SINKS):
                return
            time.sleep(0.01)
        raise RigError("keep-alive streams did not connect")

    def _pactl_ok(self, *args: str) -> bool:
        result = subprocess.run(
            ["pactl", *args],
            env=self._full_env(),
            capture_output=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
        return result.returncode == 0

    def _pactl(self, *args: str) -> str:
        result = subprocess.run(
            ["pactl", *args],
            env=self._full_env(),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise RigError(f"pactl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def _client(self, argv: list[str]) -> Popen:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self._full_env(),
        )

    def _padded_copy(self, source: Path, pad_s: float) -> Path:
        with wave.open(str(source), "rb") as reader:
            params = reader.getparams()
            data = reader.readframes(params.nframes)
        pad = b"\0" * (round(pad_s * params.framerate) * params.sampwidth * params.nchannels)
        handle, name = tempfile.mkstemp(prefix="padded-", suffix=".wav", dir=self.dir)
        os.close(handle)
        target = Path(name)
        with wave.open(str(target), "wb") as writer:
            writer.setparams(params)
            writer.writeframes(data + pad)
        return target

    def _read_pids(self) -> list[tuple[int, str]]:
        try:
            lines = self.pid_path.read_text().splitlines()
        except OSError:
            return []
        entries = []
        for line in lines:
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                entries.append((int(parts[0]), parts[1]))
        return entries

    def _log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def _exports(rig: AudioRig) -> str:
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in rig.env.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("start", "start a rig (detached)"), ("stop", "stop a rig by its PIDs")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--dir", required=True, help="the rig's directory")
    args = parser.parse_args(argv)
    directory = Path(args.dir)
    if args.command == "start":
        directory.mkdir(parents=True, exist_ok=True)
        try:
            rig = AudioRig(directory).start()
        except RigError as exc:
            print(f"audio_rig: {exc}", file=sys.stderr)
            return 1
        sys.stdout.write(_exports(rig))
        return 0
    AudioRig(directory).stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
