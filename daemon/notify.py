"""systemd integration: readiness, status text, watchdog pings, stopping.

Uses systemd-python's `sd_notify`. Outside systemd (no NOTIFY_SOCKET) every call is a
no-op. The watchdog is pinged only while the daemon is healthy enough to be worth
keeping (the event loop turns and the caller's check passes); otherwise systemd
restarts the service after WatchdogSec.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)


def _sd_notify(message: str) -> bool:
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    try:
        import systemd.daemon as sd_daemon
    except ImportError:
        return False
    return bool(sd_daemon.notify(message))


class Notifier:
    def ready(self, status: str) -> None:
        _sd_notify(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        _sd_notify(f"STATUS={status}")

    def stopping(self) -> None:
        _sd_notify("STOPPING=1\nSTATUS=stopping")

    @staticmethod
    def watchdog_interval() -> float | None:
        """Half of WatchdogSec, or None when the watchdog is off."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2_000_000

    async def watchdog(self, healthy: Callable[[], bool]) -> None:
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            if healthy():
                _sd_notify("WATCHDOG=1")
            else:
                log.warning("not pinging the watchdog: the health check fails")
            await asyncio.sleep(interval)
