"""The `roomtranslate` command: run, translate-file, devices, check, display-config, fleet,
simulator."""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon import __version__
from daemon.config import EX_CONFIG, ConfigError, Settings, load_settings, resolve_api_key
from daemon.filesource import AudioFileError
from daemon.heap import exec_with_system_malloc
from daemon.logs import setup_logging

EX_USAGE = 2
EX_NOINPUT = 66
EX_CANTCREAT = 73


CONFIG_HELP = (
    "TOML configuration (default: $ROOMTRANSLATE_CONFIG, "
    "else /etc/roomtranslate/config.toml when present)"
)


def _config_option(default: Any) -> argparse.ArgumentParser:
    """`--config`, accepted before and after the subcommand (`run --config PATH`)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", metavar="PATH", default=default, help=CONFIG_HELP)
    return parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomtranslate",
        description="Live speech translation for meeting rooms.",
        parents=[_config_option(None)],
    )
    parser.add_argument("--version", action="version", version=f"roomtranslate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # After the subcommand the option must not reset a value given before it.
    after = [_config_option(argparse.SUPPRESS)]
    sub.add_parser(
        "run",
        parents=after,
        help="run the room daemon (microphone → translation → speaker/MQTT)",
    )
    tf = sub.add_parser(
        "translate-file", parents=after, help="translate an audio file (try a key, dry runs)"
    )
    tf.add_argument("input", type=Path, help="WAV/FLAC/OGG at any rate and channel count")
    tf.add_argument("--to", dest="target", required=True, help="target language code")
    tf.add_argument("--from", dest="source", help="source language code (default: auto)")
    tf.add_argument("--voice", help="voice for the translated speech")
    tf.add_argument("--no-speech", action="store_true", help="captions only")
    tf.add_argument("--out", type=Path, help="translated speech, 24 kHz WAV")
    tf.add_argument("--captions", type=Path, help="captions: .srt or .jsonl")
    tf.add_argument("--allow-empty", action="store_true", help="exit 0 when the file has no speech")
    sub.add_parser(
        "devices", parents=after, help="list sound devices and the hardware profile that matches"
    )
    chk = sub.add_parser(
        "check",
        parents=after,
        help="check config, devices, broker, room id and service (before leaving the room)",
    )
    chk.add_argument(
        "--no-service", action="store_true", help="skip the 1 s test clip to the service"
    )
    _display_parser(
        sub.add_parser(
            "display-config",
            parents=after,
            help="let Mosquitto serve the caption display: listener snippet, ACL, page",
        )
    )
    fleet = sub.add_parser(
        "fleet",
        parents=after,
        help="the rooms on the broker: health, account share, requests a minute, what they shed",
    )
    fleet.add_argument(
        "--wait", type=float, default=1.0, help="seconds to read the retained topics (1)"
    )
    fleet.add_argument("--json", action="store_true", help="one JSON document")
    sim = sub.add_parser(
        "simulator", help="run the local service simulator", add_help=False, prefix_chars="\0"
    )
    sim.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _display_parser(dc: argparse.ArgumentParser) -> None:
    from daemon.display.install import DEFAULT_CONF, DEFAULT_HTTP_DIR

    dc.add_argument("--conf", type=Path, default=DEFAULT_CONF, help="the snippet to write")
    dc.add_argument("--acl", type=Path, help="the displays' ACL (default: beside --conf)")
    dc.add_argument("--http-dir", type=Path, default=DEFAULT_HTTP_DIR, help="page goes here")
    dc.add_argument("--ws-port", type=int, default=9001, help="WebSockets + page port")
    dc.add_argument("--ws-bind", default="", help="WebSockets address (default: all)")
    dc.add_argument("--tcp-port", type=int, default=1883, help="MQTT over TCP port (0: none)")
    dc.add_argument("--tcp-bind", default="127.0.0.1", help="MQTT over TCP address")
    dc.add_argument("--password-file", type=Path, help="Mosquitto password file for TCP")
    dc.add_argument("--host", help="host name in the printed URL (default: this host)")
    dc.add_argument("--no-qr", action="store_true", help="do not print the QR code")


def _room_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    room: dict[str, Any] = {"target_lang": args.target}
    if args.source:
        room["source_lang"] = args.source
    if args.voice:
        room["voice"] = args.voice
    if args.no_speech:
        room["speech"] = False
    return {"room": room}


def _require_key(settings: Settings) -> str:
    key = resolve_api_key(settings)
    if key is None:
        raise ConfigError(
            [
                "api key: none found; set DASHSCOPE_API_KEY or api.key_file "
                "(for a dry run against the simulator any non-empty key will do)"
            ]
        )
    return key


def _translate_file(args: argparse.Namespace) -> int:
    from daemon.filemode import translate_file

    settings = load_settings(args.config, _room_overrides(args))
    setup_logging(settings.log.level)
    if not args.input.is_file():
        print(f"roomtranslate: {args.input}: no such file", file=sys.stderr)
        return EX_NOINPUT
    return translate_file(
        settings,
        _require_key(settings),
        args.input,
        args.out,
        args.captions,
        allow_empty=args.allow_empty,
    )


def _run(args: argparse.Namespace) -> int:
    exec_with_system_malloc()  # months of small objects: glibc's heap, trimmed (heap.py)
    settings = load_settings(args.config)
    setup_logging(settings.log.level)
    from daemon.app import run_daemon

    return run_daemon(settings, resolve_api_key(settings))


def _devices(args: argparse.Namespace) -> int:
    from daemon.devices import format_devices, list_devices
    from daemon.profiles import load_profiles, profiles_dir

    settings = load_settings(args.config)
    profiles = load_profiles(profiles_dir(settings.audio))
    print(format_devices(list_devices(), profiles))
    return 0


def _check(args: argparse.Namespace) -> int:
    from daemon.check import run_check

    return run_check(args.config, service=not args.no_service)


def _display_config(args: argparse.Namespace) -> int:
    from daemon.display.install import (
        DisplayConfig,
        display_url,
        install_snippet_beside,
        report,
        write_config,
    )

    settings = load_settings(args.config)
    if args.tcp_port and (other := install_snippet_beside(args.conf)):
        print(f"display-config: {other} has the TCP listener: only the displays' is added")
        args.tcp_port = 0
    config = DisplayConfig(
        prefix=settings.mqtt.prefix,
        http_dir=args.http_dir,
        acl_file=args.acl or args.conf.with_suffix(".acl"),
        ws_port=args.ws_port,
        ws_bind=args.ws_bind,
        tcp_port=args.tcp_port,
        tcp_bind=args.tcp_bind,
        password_file=args.password_file,
    )
    try:
        written = write_config(config, args.conf)
    except OSError as exc:
        print(f"roomtranslate: display-config: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    host = args.host or socket.gethostname()
    url = display_url(host, args.ws_port, settings.mqtt.room_id, settings.mqtt.prefix)
    print(report(written, args.conf, url, qr=not args.no_qr), end="")
    return 0


def _fleet(args: argparse.Namespace) -> int:
    from daemon.fleet.view import show_fleet

    settings = load_settings(args.config)
    status, text = show_fleet(settings.mqtt, args.wait, args.json)
    if status:
        print(f"roomtranslate: fleet: {text}", end="", file=sys.stderr)
    else:
        print(text, end="")
    return status


def _simulator(args: argparse.Namespace) -> int:
    from daemon.simulator import main as simulator_main

    return simulator_main(list(args.args))


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "translate-file": _translate_file,
    "devices": _devices,
    "check": _check,
    "display-config": _display_config,
    "fleet": _fleet,
    "simulator": _simulator,
}


TERMINATE_WAIT_S = 5.0


def main(argv: list[str] | None = None) -> int:
    code = 1
    try:
        code = _command(argv)
        return code
    finally:
        _release_portaudio(code)


def _release_portaudio(code: int, wait_s: float = TERMINATE_WAIT_S) -> None:
    """PortAudio terminated before the interpreter ends, for at most `wait_s`.

    Both ways of leaving it to the interpreter's exit went wrong under load: sounddevice's
    exit handler (Pa_Terminate) can block for good in the sound server's client (seen
    through ALSA's PulseAudio plugin: `roomtranslate check` printed its results, then
    hung); skipping it leaves the PulseAudio client's thread running while the
    interpreter finalizes, and the process now and then ended by SIGSEGV (1 in 8 runs of
    `check` beside a busy process). So the exit handler runs here in a thread; if it has
    not returned in `wait_s`, the process ends at once with `code` (its streams are
    closed, its output flushed), without finalizing around a live sound thread."""
    sounddevice = sys.modules.get("sounddevice")
    if sounddevice is None:
        return
    atexit.unregister(sounddevice._exit_handler)
    done = threading.Thread(target=sounddevice._exit_handler, name="pa-terminate", daemon=True)
    done.start()
    done.join(wait_s)
    if done.is_alive():
        logging.getLogger(__name__).warning(
            "PortAudio did not terminate within %.0f s: exiting without it", wait_s
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _command(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"roomtranslate: configuration error: {line}", file=sys.stderr)
        return EX_CONFIG
    except AudioFileError as exc:
        print(f"roomtranslate: {exc}", file=sys.stderr)
        return EX_NOINPUT
    except KeyboardInterrupt:
        return 130
