"""`roomtranslate display-config` on a real Mosquitto laid out as Debian's.

The command writes its snippet and ACL into a conf.d and copies the page; a Mosquitto
whose main file is Debian's shape (`include_dir conf.d`) then serves the page and MQTT
over WebSockets to anonymous, read-only displays, beside the TCP listener of the daemon,
on its own or beside the broker snippet of `scripts/install.sh --with-broker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest

from daemon.display import PAGE_DIR, page_files
from scripts.broker import free_port, port_open
from scripts.procs import run_cli, stop_process

HOST = "127.0.0.1"


def display_config(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ROOMTRANSLATE_CONFIG": os.devnull,
        "ROOMTRANSLATE_MQTT__ROOM_ID": "room-1",
    }
    return run_cli("display-config", *args, env=env)


@contextlib.contextmanager
def mosquitto(etc: Path, *ports: int) -> Iterator[Path]:
    """Mosquitto with a main file like Debian's: its settings, then include_dir conf.d."""
    main = etc / "mosquitto.conf"
    lines = ["persistence false", "log_dest stdout", f"include_dir {etc / 'conf.d'}"]
    if os.geteuid() == 0:
        lines.insert(0, "user root")
    main.write_text("\n".join(lines) + "\n")
    log = etc / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["mosquitto", "-c", str(main)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 5.0
        while not all(port_open(HOST, p) for p in ports):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start:\n{log.read_text()}")
            time.sleep(0.02)
        yield log
    finally:
        stop_process(proc, 5.0)


@contextlib.asynccontextmanager
async def ws_client(port: int) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        HOST, port, transport="websockets", websocket_path="/", timeout=5
    ) as client:
        yield client


async def received(client: aiomqtt.Client, within_s: float) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            async for message in client.messages:
                got.append((message.topic.value, bytes(message.payload)))  # type: ignore[arg-type]
    return got


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    if subprocess.run(["which", "mosquitto"], capture_output=True, check=False).returncode:
        pytest.skip("mosquitto is not installed")
    (tmp_path / "conf.d").mkdir()
    return tmp_path


@pytest.mark.e2e
def test_writes_the_listeners_the_acl_and_the_page_and_prints_the_url(
    etc: Path, tmp_path: Path
) -> None:
    tcp, ws = free_port(), free_port()
    conf, www = etc / "conf.d" / "roomtranslate-display.conf", tmp_path / "www"
    args = ["--conf", str(conf), "--http-dir", str(www), "--tcp-port", str(tcp)]
    result = display_config(*args, "--ws-port", str(ws), "--ws-bind", HOST, "--host", HOST)
    assert result.returncode == 0, result.stderr
    url = f"http://{HOST}:{ws}/?room=room-1"
    assert f"caption display: {url}\n" in result.stdout
    assert "▄" in result.stdout or "█" in result.stdout  # the QR code for the terminal
    assert sorted(p.relative_to(www) for p in www.rglob("*") if p.is_file()) == page_files()
    assert (www / "index.html").read_bytes() == (PAGE_DIR / "index.html").read_bytes()
    snippet = conf.read_text()
    assert f"listener {tcp} 127.0.0.1" in snippet and "protocol websockets" in snippet
    with mosquitto(etc, tcp, ws):
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert reply.read() == (PAGE_DIR / "index.html").read_bytes()
        with urllib.request.urlopen(f"http://{HOST}:{ws}/vendor/mqtt.min.js", timeout=5) as r:
            assert r.read() == (PAGE_DIR / "vendor" / "mqtt.min.js").read_bytes()
        asyncio.run(_read_only_displays(tcp, ws))


async def _read_only_displays(tcp: int, ws: int, **daemon_login: str) -> None:
    async with (
        ws_client(ws) as display,
        aiomqtt.Client(HOST, tcp, timeout=5, **daemon_login) as room,
    ):
        await display.subscribe("roomtranslate/#", qos=1)
        await room.subscribe("roomtranslate/#", qos=1)
        await room.publish("roomtranslate/room-1/captions/en", b"from-daemon", qos=1)
        await room.publish("roomtranslate/room-1/config/set", b"private", qos=1)
        # a display can never publish: its message is dropped by the ACL
        await display.publish("roomtranslate/room-1/captions/en", b"from-display", qos=1)
        seen_by_display = await received(display, 1.0)
        seen_by_room = await received(room, 0.5)
    assert seen_by_display == [("roomtranslate/room-1/captions/en", b"from-daemon")]
    assert b"from-display" not in [p for _, p in seen_by_room], seen_by_room


@pytest.mark.e2e
def test_beside_the_install_scripts_broker_it_adds_only_the_displays_listener(
    etc: Path, tmp_path: Path
) -> None:
    tcp, ws = free_port(), free_port()
    conf_d = etc / "conf.d"
    passwords, acl = etc / "roomtranslate.passwd", etc / "roomtranslate.acl"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwords), "roomtranslate", "pw"], check=True
    )
    acl.write_text("user roomtranslate\ntopic readwrite roomtranslate/#\n")
    # the snippet scripts/install.sh --with-broker writes
    (conf_d / "roomtranslate.conf").write_text(
        f"listener {tcp} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {passwords}\nacl_file {acl}\n"
    )
    conf = conf_d / "roomtranslate-display.conf"
    result = display_config(
        "--conf", str(conf), "--http-dir", str(tmp_path / "www"), "--ws-port", str(ws),
        "--ws-bind", HOST, "--no-qr",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "only the displays' is added" in result.stdout
    assert "listener 1883" not in conf.read_text()
    with mosquitto(etc, tcp, ws):
        with pytest.raises(aiomqtt.MqttError):  # the daemon's listener still wants passwords
            asyncio.run(_connect_anonymously(tcp))
        asyncio.run(_read_only_displays(tcp, ws, username="roomtranslate", password="pw"))


async def _connect_anonymously(port: int) -> None:
    async with aiomqtt.Client(HOST, port, timeout=5):
        pass


def test_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = display_config("--conf", str(blocker / "x.conf"), "--http-dir", str(tmp_path))
    assert result.returncode == 73
    assert "display-config:" in result.stderr and "Traceback" not in result.stderr
