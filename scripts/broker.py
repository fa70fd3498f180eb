"""A real Mosquitto for tests, and a subscriber that records what it receives.

with Broker() as broker:
    async with Recorder(broker, "roomtranslate/#") as rec:
        ...
        await rec.wait_for(lambda: len(rec.on("roomtranslate/room-1/status")) == 1)
    assert await retained(broker, "roomtranslate/room-1/availability") == b"online"

The broker runs as a child process on a free loopback port (stopped by PID); `kill()`,
`stop()`, `start()`, `restart()`, `pause()` and `resume()` make outages on the same port.
The recorder speaks MQTT 5 with "retain as published", so each record shows the retain
flag the publisher set, and it reconnects on its own. With `persistent=True` it keeps a
broker-side session (clean start off, session expiry) so that, with a broker started
with `persistence=True`, QoS 1 messages published while it was away are queued for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from scripts.procs import stop_process

HOST = "127.0.0.1"
MOSQUITTO = "mosquitto"
MOSQUITTO_PASSWD = "mosquitto_passwd"
_recorder_ids = itertools.count(1)


def free_port(host: str = HOST) -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class Broker:
    """Mosquitto on a free loopback port, with optional users and persistence."""

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        persistence: bool = False,
        listener_options: Sequence[str] = (),
        start: bool = True,
        ready_timeout: float = 5.0,
    ) -> None:
        self.host = HOST
        self.port = free_port()
        self.users = dict(users or {})
        self.persistence = persistence
        self.listener_options = list(listener_options)
        self.ready_timeout = ready_timeout
        self._autostart = start
        self._tmp = tempfile.TemporaryDirectory(prefix="mosquitto-")
        self.dir = Path(self._tmp.name)
        self.log_path = self.dir / "mosquitto.log"
        self.conf_path = self._write_config()
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Broker:
        if self._autostart:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._tmp.cleanup()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start mosquitto and wait until the port accepts connections."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (mosquitto saves its persistence file), then SIGKILL if it lingers."""
        if self._proc is None:
            return
        stop_process(self._proc, timeout, resume=True)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: connections drop without a word, nothing is saved."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal(signal.SIGKILL)
            self._proc.wait()
        self._proc = None

    def restart(self) -> None:
        """Stop gracefully and start again on the same port."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the sockets stay open but nothing is answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _signal(self, signum: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signum)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited ({self._proc.returncode}):\n{self.log_text()}"
                )
            if port_open(self.host, self.port):
                return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"mosquitto did not open {self.host}:{self.port}:\n{self.log_text()}")

    def _write_config(self) -> Path:
        lines = [f"listener {self.port} {self.host}", *self.listener_options, "log_dest stdout"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to 'mosquitto' and cannot read
        if self.users:
            lines += ["allow_anonymous false", f"password_file {self._write_passwords()}"]
        else:
            lines.append("allow_anonymous true")
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.dir}/"]
        path = self.dir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _write_passwords(self) -> Path:
        path = self.dir / "passwords"
        path.touch(mode=0o600)
        for user, password in self.users.items():
            subprocess.run(
                [MOSQUITTO_PASSWD, "-b", str(path), user, password],
                check=True,
                capture_output=True,
            )
        return path


@dataclass(frozen=True)
class Received:
    """One message as the recorder got it (`retain` as the publisher set it)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


def _client(
    broker: Broker,
    *,
    username: str | None = None,
    password: str | None = None,
    identifier: str | None = None,
    persistent: bool = False,
) -> aiomqtt.Client:
    properties = None
    if persistent:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=username,
        password=password,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=not persistent,
        properties=properties,
        timeout=5.0,
    )


class Recorder:
    """Subscribes to `topic_filter` (QoS 2, retain as published) and records everything."""

    def __init__(
        self,
        broker: Broker,
        topic_filter: str = "#",
        *,
        username: str | None = None,
        password: str | None = None,
        persistent: bool = False,
        retry_s: float = 0.05,
    ) -> None:
        self.broker = broker
        self.topic_filter = topic_filter
        self.username = username
        self.password = password
        self.persistent = persistent
        self.retry_s = retry_s
        self.identifier = f"recorder-{os.getpid()}-{next(_recorder_ids)}"
        self.messages: list[Received] = []
        self.connects = 0
        self.subscribed = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Recorder:
        self._task = asyncio.create_task(self._run(), name="recorder")
        await asyncio.wait_for(self.subscribed.wait(), 5.0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def on(self, topic: str) -> list[Received]:
        """The messages received on exactly `topic`, in arrival order."""
        return [m for m in self.messages if m.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.on(topic)]

    async def wait_for(self, predicate: Callable[[], bool], within_s: float = 15.0) -> None:
        await eventually(predicate, within_s)

    async def wait_connected(self, connects: int, within_s: float = 15.0) -> None:
        """Until the recorder has (re)subscribed `connects` times in all."""
        await eventually(lambda: self.connects >= connects and self.subscribed.is_set(), within_s)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if self._client is None:
            raise RuntimeError("the recorder is not connected")
        await self._client.publish(topic, payload, qos=qos, retain=retain)

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError:
                self.subscribed.clear()
                self._client = None
                await asyncio.sleep(self.retry_s)

    async def _session(self) -> None:
        client = _client(
            self.broker,
            username=self.username,
            password=self.password,
            identifier=self.identifier,
            persistent=self.persistent,
        )
        async with client:
            options = SubscribeOptions(qos=2, retainAsPublished=True, retainHandling=1)
            await client.subscribe([(self.topic_filter, options)])
            self._client = client
            self.connects += 1
            self.subscribed.set()
            async for message in client.messages:
                self.messages.append(_received(message))


def _received(message: aiomqtt.Message) -> Received:
    payload = message.payload
    data = payload if isinstance(payload, bytes) else str(payload).encode()
    return Received(message.topic.value, data, message.qos, bool(message.retain), time.monotonic())


async def retained(
    broker: Broker,
    topic: str,
    *,
    username: str | None = None,
    password: str | None = None,
    wait_s: float = 0.3,
) -> bytes | None:
    """The retained message of `topic` as a new subscriber sees it, None if there is none."""
    async with _client(broker, username=username, password=password) as client:
        await client.subscribe(topic, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                async for message in client.messages:
                    if message.retain:
                        return _received(message).payload
    return None


async def eventually(predicate: Callable[[], bool], within_s: float = 15.0) -> None:
    """Poll `predicate` until it holds; AssertionError after `within_s` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within_s} s")
        await asyncio.sleep(0.01)
