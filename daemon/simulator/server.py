"""The simulator's HTTP server (the chat-completions endpoint and the `/_sim/` control
endpoints) and its command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from daemon.simulator.faults import (
    FAULTS,
    NUMERIC_SETTINGS,
    Settings,
    SimState,
    check_faults,
    fault_error,
    non_negative,
)
from daemon.simulator.protocol import (
    API_PREFIX,
    CHAT_PATH,
    MAX_BODY_BYTES,
    ApiError,
    bad_request,
    check_auth,
    parse_request,
)
from daemon.simulator.speech import speech_library
from daemon.simulator.stream import Ending, Event, apply_fault, build_plan, usage_for


class SimServer(ThreadingHTTPServer):
    """HTTP server carrying the simulator's state and a stop event for its handlers.

    `wait(seconds)` is how a response waits before each event and while it stalls; it
    returns True when the server is stopping. The default waits on the stop event; a test
    passes its own to see the waits without spending them.
    """

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        state: SimState,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        self.state = state
        self.stopping = threading.Event()
        self.wait = wait or self.stopping.wait
        super().__init__(address, SimHandler)


class SimHandler(BaseHTTPRequestHandler):
    """Routes the chat-completions endpoint and the ``/_sim/`` control endpoints."""

    protocol_version = "HTTP/1.1"
    server_version = "qwen-sim/1.0"
    server: SimServer

    def setup(self) -> None:
        super().setup()
        self._status = 0
        self._digest = "-"

    # routing ------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route({"/_sim/stats": self._stats})

    def do_POST(self) -> None:
        routes: dict[str, Callable[[], None]] = {
            CHAT_PATH: self._chat,
            "/_sim/control": self._control,
            "/_sim/reset": self._reset,
        }
        self._route(routes)

    def _route(self, routes: Mapping[str, Callable[[], None]]) -> None:
        self._status, self._digest = 0, "-"
        path = self.path.split("?", 1)[0]
        handler = routes.get(path)
        try:
            if handler is None:
                self._read_body()
                self._send_api_error(ApiError(404, "NotFound", f"No route for {path}."))
            else:
                handler()
        except ApiError as err:
            self._send_api_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self._log_line(path)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silence the default access log; ``_log_line`` writes one line per request."""

    def _log_line(self, path: str) -> None:
        sys.stderr.write(f"{self.command} {path} {self._status or '-'} {self._digest}\n")
        sys.stderr.flush()

    # control endpoints --------------------------------------------------------------

    def _stats(self) -> None:
        self._send_json(200, self.server.state.snapshot())

    def _control(self) -> None:
        try:
            changes = json.loads(self._read_body() or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("control body must be a JSON object")
            snapshot = self.server.state.control(changes)
        except ValueError as exc:
            self._send_api_error(bad_request(str(exc)))
            return
        self._send_json(200, snapshot)

    def _reset(self) -> None:
        self._read_body()
        self.server.state.reset()
        self._send_json(200, self.server.state.snapshot())

    # chat completions ---------------------------------------------------------------

    def _chat(self) -> None:
        state = self.server.state
        key: str | None = None
        try:
            body = self._read_body()
            key = check_auth(self.headers.get("Authorization"), state.api_key)
            clip = parse_request(body)
            header_fault = self._header_fault()
            if refused := state.charge(usage_for(clip)["total_tokens"]):
                raise refused
        except ApiError as err:
            state.count(err.status, key)
            self._send_api_error(err)
            return
        self._digest = clip.digest
        fault, jitter_s = state.admit(clip, header_fault)
        settings = state.settings
        if fault in ("429", "500", "401", "403"):
            failure = fault_error(fault, settings.retry_after)
            state.count(failure.status, key)
            self._send_api_error(failure)
            return
        state.count(200, key)
        plan, ending = apply_fault(build_plan(clip, settings, jitter_s), fault)
        self._stream(plan, ending, settings.stall_s)

    def _header_fault(self) -> str | None:
        fault = self.headers.get("X-Sim-Fault")
        if fault is None or not fault.strip():
            return None
        if fault.strip() not in FAULTS:
            raise bad_request(f"Unknown X-Sim-Fault {fault!r}.")
        return fault.strip()

    def _stream(self, plan: list[Event], ending: Ending, stall_s: float) -> None:
        self._status = 200
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Request-Id", str(uuid.uuid4()))
        self.end_headers()
        for event in plan:
            if self.server.wait(event.delay_s):
                ending = "abort"
                break
            self._write_chunk(event.frame())
        if ending == "stall":
            self.server.wait(stall_s)
        if ending == "complete":
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._abort()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _abort(self) -> None:
        """Close the connection mid-body: no terminating chunk."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # plumbing -----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(413, "RequestTooLarge", "Request body too large or malformed length.")
        return self.rfile.read(length) if length else b""

    def _send_api_error(self, err: ApiError) -> None:
        request_id = str(uuid.uuid4())
        headers = {**err.headers, "X-Request-Id": request_id}
        self._send_json(err.status, err.body(request_id), headers)

    def _send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self._status = status
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


# --------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="roomtranslate simulator",
        description="Local stand-in for qwen3-livetranslate-flash (chat completions, SSE).",
    )
    d = Settings()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 = any free port")
    p.add_argument(
        "--api-key",
        default=os.environ.get("SIM_API_KEY") or None,
        help="accept only this key (default: env SIM_API_KEY; unset = any)",
    )
    p.add_argument("--first-text-ms", type=float, default=d.first_text_ms)
    p.add_argument("--first-audio-ms", type=float, default=d.first_audio_ms)
    p.add_argument("--chunk-ms", type=float, default=d.chunk_ms)
    p.add_argument("--jitter-ms", type=float, default=d.jitter_ms)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--audio-chunk-ms", type=float, default=d.audio_chunk_ms)
    p.add_argument(
        "--faults",
        type=_faults_arg,
        default=[],
        help=f"comma list consumed one per request: {','.join(FAULTS)}",
    )
    p.add_argument("--retry-after", type=float, default=d.retry_after)
    p.add_argument(
        "--account-rpm", type=float, default=d.account_rpm, help="the account's requests/min"
    )
    p.add_argument(
        "--account-tpm", type=float, default=d.account_tpm, help="the account's tokens/min"
    )
    p.add_argument("--stall-s", type=float, default=d.stall_s)
    p.add_argument(
        "--speech-dir",
        default="",
        help="speak real recordings (WAV files in this directory) instead of tones",
    )
    p.add_argument("--keep-clips", default="", help="write every clip received into this directory")
    return p


def _faults_arg(text: str) -> list[str]:
    try:
        return check_faults([f.strip() for f in text.split(",") if f.strip()])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def state_from_args(args: argparse.Namespace) -> SimState:
    values = {name: float(getattr(args, name)) for name in NUMERIC_SETTINGS}
    for name, value in values.items():
        non_negative(name, value)
    if args.speech_dir:
        speech_library(args.speech_dir)  # an unusable directory is a usage error now
    settings = Settings(**values, speech_dir=args.speech_dir, keep_clips=args.keep_clips)
    return SimState(settings, args.faults, args.seed, args.api_key)


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGTERM/SIGINT; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        state = state_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    server = SimServer((args.host, args.port), state)
    stop = threading.Event()
    previous = _install_signal_handlers(stop)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.1,), name="sim-http", daemon=True
    )
    thread.start()
    host = "127.0.0.1" if args.host in ("", "0.0.0.0") else args.host
    print(f"READY http://{host}:{server.server_address[1]}{API_PREFIX}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        _restore_signal_handlers(previous)
    return 0


_Handler = Callable[[int, FrameType | None], Any] | int | None


def _install_signal_handlers(stop: threading.Event) -> dict[int, _Handler]:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, _Handler] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, on_signal)
    return previous


def _restore_signal_handlers(previous: Mapping[int, _Handler]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
