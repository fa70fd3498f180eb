"""The sd_notify client on real Unix datagram sockets: messages arrive as systemd reads
them; a socket nobody reads never blocks the caller (dropped and counted); abstract
socket names; no socket, no messages."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from daemon.counters import Counters
from daemon.notify import Notifier, notify_address


def receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


def test_messages_arrive_as_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with receiver(path) as sock:
        notifier = Notifier(Counters(), {"NOTIFY_SOCKET": path})
        notifier.ready("listening on mic")
        notifier.status("degraded: no input")
        notifier.stopping()
        got = [sock.recv(4096).decode() for _ in range(3)]
        notifier.close()
    assert got == [
        "READY=1\nSTATUS=listening on mic",
        "STATUS=degraded: no input",
        "STOPPING=1\nSTATUS=stopping",
    ]


def test_a_socket_nobody_reads_never_blocks(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    counters = Counters()
    with receiver(path):
        notifier = Notifier(counters, {"NOTIFY_SOCKET": path})
        # a blocking send would hang here for ever
        sent = sum(notifier.send("STATUS=" + "x" * 1000) for _ in range(5000))
        notifier.close()
    assert 0 < sent < 5000  # the receive queue filled up
    assert counters.get("notify_dropped") == 5000 - sent


def test_abstract_socket_names() -> None:
    name = f"roomtranslate-test-{os.getpid()}"
    assert notify_address({"NOTIFY_SOCKET": "@" + name}) == "\0" + name
    with receiver("\0" + name) as sock:
        notifier = Notifier(Counters(), {"NOTIFY_SOCKET": "@" + name})
        notifier.send("WATCHDOG=1")
        assert sock.recv(100) == b"WATCHDOG=1"
        notifier.close()


def test_outside_systemd_nothing_is_sent() -> None:
    counters = Counters()
    for environ in ({}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1234"}):
        notifier = Notifier(counters, environ)
        assert not notifier.send("READY=1")
        assert notifier.watchdog_interval() is None
    assert counters.get("notify_dropped") == 0


def test_a_missing_socket_is_counted_not_raised(tmp_path: Path) -> None:
    counters = Counters()
    notifier = Notifier(counters, {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not notifier.send("READY=1")
    assert counters.get("notify_dropped") == 1
