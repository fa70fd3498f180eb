"""End-to-end harness: the real daemon on the sound rig, a real broker and the simulator.

    with Harness(workdir) as h:                       # rig + mosquitto + simulator
        scene = h.compose([("en_sr_english", 1.0), ("fr_sr_french", 2.0)], "two")
        with h.session() as s:                        # MQTT tap + `python -m daemon run`
            speaker = h.record_speaker("two-speaker.wav")
            h.play(scene).wait()                      # into the rig microphone, real time
            s.wait_for(lambda: len(s.finals()) == 2, 10.0)
            tones = speaker.stop_and_detect()         # [Tone(hz, start_s, end_s), ...]
        assert s.returncode == 0

Used by the end-to-end tests and scripts/bench_latency.py. Every child process (PulseAudio
and its helpers, mosquitto, the simulator, the daemon, paplay/parecord) is started in its
own session and stopped by its PID. Times are time.monotonic(): the MQTT receive stamps of
the tap and the daemon's `timeline {json}` log lines share that clock (CLOCK_MONOTONIC is
system-wide on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from scripts import audio_rig
from scripts.broker import Broker, Received, Recorder
from scripts.procs import stop_process
from scripts.scenario import compose, write
from scripts.simproc import Simulator
from scripts.tones import SpeakerRecording

ROOT = Path(__file__).resolve().parent.parent
BASE = "roomtranslate/room-1"
AVAILABILITY = f"{BASE}/availability"
STATUS = f"{BASE}/status"
CAPTIONS = f"{BASE}/captions/"
CONFIG_SET = f"{BASE}/config/set"
CONFIG_RESPONSE = f"{BASE}/config/response"
TARGET_LANG = "zh"
SCENE_RATE = 48_000  # the rig's sink rate: paplay needs no resampling
FAST_SIM = {"first_text_ms": 5, "first_audio_ms": 5, "chunk_ms": 1, "jitter_ms": 0}
STOP_TIMEOUT_S = 10.0
POLL_S = 0.02
CLIP_RE = re.compile(r"clip (\d+\.\d+)s #([0-9a-f]{8})")
TIMELINE_RE = re.compile(r"timeline (\{.*\})\s*$")

# ------------------------------------------------------------------------- prerequisites


def missing_programs() -> list[str]:
    """The PulseAudio and Mosquitto programs the harness needs that are not on PATH."""
    missing: list[str] = list(audio_rig.missing_programs())
    missing += [p for p in ("mosquitto", "mosquitto_pub") if shutil.which(p) is None]
    return missing


# ------------------------------------------------------------------------------ scenes


@dataclass(frozen=True)
class Scene:
    """A composed microphone track (a WAV for paplay) and where its speech was placed."""

    path: Path
    names: tuple[str, ...]
    truth: tuple[tuple[float, float], ...]  # (start_s, end_s) of each clip in the track
    seconds: float

    @property
    def durations(self) -> list[float]:
        return [end - start for start, end in self.truth]

    @property
    def speech_s(self) -> float:
        return sum(self.durations)


def compose_scene(parts: Sequence[tuple[str, float]], path: Path, *, tail_s: float = 1.0) -> Scene:
    """Recordings (name, silence before it in s), energy-trimmed, written at 48 kHz mono."""
    scenario = compose(parts, tail_s=tail_s)
    write(scenario.pcm, path, rate=SCENE_RATE)
    truth = tuple((float(a), float(b)) for a, b in scenario.truth)
    return Scene(path, tuple(name for name, _ in parts), truth, scenario.seconds)


@dataclass
class Playing:
    """A scene being played into the rig microphone (paplay)."""

    proc: subprocess.Popen[bytes]
    scene: Scene
    started_at: float

    def at(self, offset_s: float) -> float:
        """The monotonic time of an offset in the scene (paplay start + offset)."""
        return self.started_at + offset_s

    def done(self) -> bool:
        return self.proc.poll() is not None

    def wait(self, timeout: float | None = None) -> None:
        limit = timeout if timeout is not None else self.scene.seconds + 10.0
        _, err = self.proc.communicate(timeout=limit)
        if self.proc.returncode != 0:
            raise RuntimeError(f"paplay failed ({self.proc.returncode}): {err.decode()}")

    def stop(self) -> None:
        stop_process(self.proc, 2.0)


# ------------------------------------------------------------------------------- MQTT


@dataclass(frozen=True)
class Caption:
    """One caption event as a subscriber received it."""

    topic: str
    utterance_id: int
    seq: int
    final: bool
    text: str
    outcome: str
    reason: str
    qos: int
    retain: bool
    at: float  # time.monotonic() when received
    index: int  # position among all messages of the session

    @property
    def digest(self) -> str:
        match = CLIP_RE.search(self.text)
        return match.group(2) if match else ""

    @property
    def duration_s(self) -> float:
        match = CLIP_RE.search(self.text)
        return float(match.group(1)) if match else -1.0


def is_caption_topic(topic: str) -> bool:
    """`.../captions/<lang>` (not `.../captions/<lang>/recent`)."""
    return topic.startswith(CAPTIONS) and "/" not in topic[len(CAPTIONS) :]


def parse_caption(message: Received, index: int) -> Caption:
    event = message.json()
    return Caption(
        topic=message.topic,
        utterance_id=int(event["utterance_id"]),
        seq=int(event["seq"]),
        final=bool(event["final"]),
        text=str(event["text"]),
        outcome=str(event.get("outcome", "")),
        reason=str(event.get("reason", "")),
        qos=message.qos,
        retain=message.retain,
        at=message.at,
        index=index,
    )


_markers = itertools.count(1)


class Tap:
    """A `Recorder` on its own event loop thread, so sync code can read what arrives."""

    def __init__(self, broker: Broker, topic_filter: str = "#", *, persistent: bool = False):
        self.recorder = Recorder(broker, topic_filter, persistent=persistent)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tap", daemon=True)

    def __enter__(self) -> Tap:
        self._thread.start()
        self._call(self.recorder.__aenter__())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self._call(self.recorder.__aexit__(None, None, None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def messages(self) -> list[Received]:
        return list(self.recorder.messages)

    @property
    def connects(self) -> int:
        return self.recorder.connects

    @property
    def subscribed(self) -> bool:
        return self.recorder.subscribed.is_set()

    def settle(self, within_s: float = 10.0) -> None:
        """Until the retained messages of the subscription have arrived: the broker sends
        them when it subscribes, so a marker the tap publishes now comes back after them."""
        topic = f"{self.recorder.topic_filter.removesuffix('#')}_tap/{next(_markers)}"
        self._call(self.recorder.publish(topic, b"", qos=1))
        arrived = self.recorder.wait_for(lambda: bool(self.recorder.on(topic)), within_s)
        self._call(arrived, timeout=within_s + 1.0)


# ------------------------------------------------------------------------------ daemon


class Daemon:
    """`python -m daemon run` with a given environment; stderr goes to `log_path`."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "run"],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("daemon not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def timelines(self) -> dict[int, dict[str, float]]:
        """The `timeline {json}` records logged so far, by utterance id."""
        found: dict[int, dict[str, float]] = {}
        for line in self.log_text().splitlines():
            match = TIMELINE_RE.search(line)
            if match:
                record = json.loads(match.group(1))
                found[int(record["id"])] = {k: float(v) for k, v in record.items() if k != "id"}
        return found

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM by PID, wait up to `timeout`, then SIGKILL; the exit status."""
        if self._proc is None:
            raise RuntimeError("daemon not started")
        self.returncode = stop_process(self._proc, timeout)
        return self.returncode

    def cpu_seconds(self) -> float:
        """User + system CPU time of the daemon process so far (/proc/<pid>/stat)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kb(self) -> int:
        """VmRSS of the daemon process, in kB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


# ----------------------------------------------------------------------------- session


class Session:
    """One daemon run and the MQTT tap that watched it from before it started."""

    def __init__(self, daemon: Daemon, tap: Tap, mark: int) -> None:
        self.daemon = daemon
        self.tap = tap
        self._mark = mark  # messages before this index are older (retained) ones

    @property
    def returncode(self) -> int | None:
        return self.daemon.returncode

    def messages(self) -> list[Received]:
        return self.tap.messages[self._mark :]

    def captions(self) -> list[Caption]:
        return [
            parse_caption(m, i)
            for i, m in enumerate(self.messages())
            if is_caption_topic(m.topic) and m.payload
        ]

    def finals(self) -> list[Caption]:
        return [c for c in self.captions() if c.final]

    def statuses(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.messages() if m.topic == STATUS and m.payload]

    def status(self) -> dict[str, Any]:
        statuses = self.statuses()
        return statuses[-1] if statuses else {}

    def availability(self) -> list[bytes]:
        return [m.payload for m in self.messages() if m.topic == AVAILABILITY]

    def ready(self) -> bool:
        online = self.availability()[-1:] == [b"online"]
        return online and self.status().get("state") == "listening"

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Poll `predicate` until it holds (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline or not self.daemon.running:
                return predicate()
            time.sleep(POLL_S)
        return True

    def wait_ready(self, timeout: float = 20.0) -> None:
        if not self.wait_for(self.ready, timeout):
            raise RuntimeError(
                f"daemon not ready within {timeout} s (status {self.status().get('state')}):\n"
                + self.daemon.log_tail()
            )

    def wait_finals(self, count: int, timeout: float) -> bool:
        return self.wait_for(lambda: len(self.finals()) >= count, timeout)

    def wait_timelines(self, count: int, timeout: float) -> bool:
        return self.wait_for(lambda: len(self.daemon.timelines()) >= count, timeout)

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        return self.wait_for(lambda: bool(self.status()) and predicate(self.status()), timeout)

    def wait_log(self, text: str, timeout: float) -> bool:
        return self.wait_for(lambda: text in self.daemon.log_text(), timeout)


# ----------------------------------------------------------------------------- harness


class Harness:
    """Rig + broker + simulator for the module; daemons come and go in `session()`s."""

    def __init__(
        self,
        workdir: Path,
        *,
        sim_settings: Mapping[str, float] | None = None,
        persistence: bool = True,
        broker_options: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.sim_settings = dict(FAST_SIM if sim_settings is None else sim_settings)
        self.rig: Any = audio_rig.AudioRig(workdir / "rig")
        self.broker = Broker(persistence=persistence, listener_options=broker_options, start=False)
        self.sim = Simulator(*_sim_args(self.sim_settings))
        self._sessions = 0

    def __enter__(self) -> Harness:
        try:
            self.rig.start()
            self.broker.start()
            self.sim.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.sim.__exit__(None, None, None)
        self.broker.__exit__(None, None, None)
        self.rig.stop()

    # -- the service --------------------------------------------------------------------

    def reset_simulator(self, **changes: float) -> None:
        """Stats cleared, no faults, the harness's latencies (with `changes`)."""
        self.sim.reset()
        self.sim.control(faults=[], **{**self.sim_settings, **changes})

    # -- audio --------------------------------------------------------------------------

    def compose(
        self, parts: Sequence[tuple[str, float]], name: str, *, tail_s: float = 1.0
    ) -> Scene:
        return compose_scene(parts, self.workdir / f"{name}.wav", tail_s=tail_s)

    def config_set(self, s: Session, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Publish a config/set with mosquitto_pub (a real client); the daemon's answer on
        config/response."""
        transaction = f"e2e-{time.monotonic_ns()}"
        payload = json.dumps({**changes, "transaction": transaction})
        broker = ["-h", self.broker.host, "-p", str(self.broker.port)]
        subprocess.run(
            ["mosquitto_pub", *broker, "-q", "1", "-t", CONFIG_SET, "-m", payload],
            check=True,
            timeout=10,
        )

        def reply() -> dict[str, Any] | None:
            for message in s.messages():
                if message.topic == CONFIG_RESPONSE and message.json()["transaction"] == (
                    transaction
                ):
                    return message.json()
            return None

        assert s.wait_for(lambda: reply() is not None, 10.0), s.daemon.log_tail()
        answer = reply()
        assert answer is not None
        return answer

    def play(self, scene: Scene) -> Playing:
        """Start playing `scene` into the microphone (returns at once)."""
        started = time.monotonic()
        return Playing(self.rig.play_into_mic(scene.path), scene, started)

    def record_speaker(self, name: str) -> SpeakerRecording:
        return SpeakerRecording(self.rig, self.workdir / name)

    # -- the daemon ---------------------------------------------------------------------

    def daemon_env(self, settings: Mapping[str, str] | None = None) -> dict[str, str]:
        """os.environ + rig + the test settings; `settings` as {"AUDIO__ECHO_GUARD": ...}."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMTRANSLATE_")}
        for name in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
            env.pop(name, None)  # logs to stderr, no systemd
        values = {
            "API__BASE_URL": self.sim.base_url,
            "MQTT__HOST": self.broker.host,
            "MQTT__PORT": str(self.broker.port),
            "MQTT__RECONNECT_MIN_S": "0.2",
            "MQTT__RECONNECT_MAX_S": "1",
            "AUDIO__PROFILE": "virtual_rig",
            "AUDIO__ECHO_GUARD": "off",
            "AUDIO__DUCK_DB": "0",  # the speaker's tones keep their level (test_duplex ducks)
            "MQTT__ROOM_ID": "room-1",
            "API__CHECK_KEY_AT_START": "false",  # the simulator's counts are the test's
            "STATE_DIR": str(self.workdir / "state"),
            "ROOM__TARGET_LANG": TARGET_LANG,
            **(settings or {}),
        }
        env |= {f"ROOMTRANSLATE_{k.upper()}": v for k, v in values.items()}
        env |= self.rig.env
        env |= {"DASHSCOPE_API_KEY": "test", "ROOMTRANSLATE_CONFIG": os.devnull}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    @contextlib.contextmanager
    def session(
        self,
        settings: Mapping[str, str] | None = None,
        *,
        durable_tap: bool = False,
        ready_timeout: float = 20.0,
    ) -> Iterator[Session]:
        """A tap on `roomtranslate/#`, then a daemon, ready (online + listening).

        `durable_tap`: the tap keeps a broker-side session and the broker is restarted
        once before the daemon starts, so that session is on disk and QoS 1 messages
        published while the tap is away (a broker restart) are queued for it.
        """
        self._sessions += 1
        log_path = self.workdir / f"daemon-{self._sessions}.log"
        with Tap(self.broker, "roomtranslate/#", persistent=durable_tap) as tap:
            if durable_tap:
                self._persist_tap(tap)
            tap.settle()  # retained messages of earlier daemons arrive first
            daemon = Daemon(self.daemon_env(settings), log_path)
            session = Session(daemon, tap, len(tap.messages))
            daemon.start()
            try:
                session.wait_ready(ready_timeout)
                yield session
            finally:
                if daemon.running:
                    daemon.stop()

    def _persist_tap(self, tap: Tap) -> None:
        connects = tap.connects
        self.broker.restart()
        deadline = time.monotonic() + 10.0
        while not (tap.connects > connects and tap.subscribed):
            if time.monotonic() > deadline:
                raise RuntimeError("the tap did not reconnect after the broker restart")
            time.sleep(POLL_S)


def _sim_args(settings: Mapping[str, float]) -> list[str]:
    args: list[str] = []
    for key, value in settings.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


# ----------------------------------------------------------------------------- figures


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


def first_partials(captions: Sequence[Caption]) -> dict[int, Caption]:
    """The first caption event received for each utterance."""
    first: dict[int, Caption] = {}
    for caption in captions:
        first.setdefault(caption.utterance_id, caption)
    return first
