"""systemd integration: readiness, status text, watchdog pings, stopping.

The sd_notify protocol itself (one datagram per message to `$NOTIFY_SOCKET`), sent
without ever blocking: libsystemd's `sd_notify` (systemd-python) sends on a blocking
socket, so a notify socket nobody reads — a full receive queue — would stop the event
loop. Here a message that cannot go out at once is dropped and counted
(`notify_dropped`); systemd reads its socket, so in a unit this does not happen.
Outside systemd (no NOTIFY_SOCKET) every call is a no-op. An abstract socket
(`@name`) is supported, as systemd documents.

The watchdog is pinged only while the daemon is healthy enough to be worth keeping (the
event loop turns and the caller's check passes); otherwise systemd restarts the service
after WatchdogSec.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

from daemon.counters import Counters

log = logging.getLogger(__name__)


def notify_address(environ: Mapping[str, str]) -> str | None:
    """The socket address of `$NOTIFY_SOCKET` (abstract names start with NUL), or None."""
    path = environ.get("NOTIFY_SOCKET", "")
    if not path or not (path.startswith("/") or path.startswith("@")):
        return None  # unset, or a vsock address: not ours to speak
    return "\0" + path[1:] if path.startswith("@") else path


class Notifier:
    """Sends sd_notify messages; never blocks, never raises."""

    def __init__(self, counters: Counters, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._counters = counters
        self._address = notify_address(self._environ)
        self._sock: socket.socket | None = None
        if self._address is not None:
            self._sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
            )

    def send(self, message: str) -> bool:
        """One datagram; False (counted, logged once per kind) when it could not go out."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto(message.encode(), socket.MSG_DONTWAIT, self._address)
        except OSError as exc:
            self._counters.add("notify_dropped")
            if self._counters.get("notify_dropped") == 1:
                log.warning("systemd notify socket: %s (messages dropped, counted)", exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=stopping")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def watchdog_interval(self) -> float | None:
        """Half of WatchdogSec, or None when the watchdog is off."""
        usec = self._environ.get("WATCHDOG_USEC", "")
        pid = self._environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2_000_000

    async def watchdog(self, healthy: Callable[[], bool]) -> None:
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            if healthy():
                self.send("WATCHDOG=1")
            else:
                log.warning("not pinging the watchdog: the health check fails")
            await asyncio.sleep(interval)
