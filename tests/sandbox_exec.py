"""Run a command under the system call filter and address families of a systemd unit.

    /usr/bin/python3 tests/sandbox_exec.py systemd/roomtranslate.service -- CMD ARGS...

For tests on a machine where systemd is not PID 1: it reads the unit's
`SystemCallFilter=` lines (an allow list, then `~` removals, systemd's semantics),
`SystemCallErrorNumber=` and `RestrictAddressFamilies=`, expands the `@groups` with
`systemd-analyze syscall-filter`, loads the same seccomp filter with libseccomp (Debian's
python3-seccomp; run it with /usr/bin/python3) — with no_new_privs, as NoNewPrivileges= —
and execs the command, which keeps the filter. Stdlib and python3-seccomp only.
"""

from __future__ import annotations

import errno
import mmap
import os
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path

import seccomp  # type: ignore[import-not-found]


@cache
def expand(name: str) -> frozenset[str]:
    """The system calls of `name` (a call, or an @group expanded recursively)."""
    if not name.startswith("@"):
        return frozenset({name})
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager", name],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            calls |= expand(item)
    return frozenset(calls)


def unit_settings(unit: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def allowed_calls(filters: list[str]) -> frozenset[str]:
    """systemd: the first line is an allow list; later `~` lines remove from it."""
    allowed: set[str] = set()
    for index, value in enumerate(filters):
        deny = value.startswith("~")
        names = value.removeprefix("~").split()
        calls = set().union(*(expand(n) for n in names)) if names else set()
        if index == 0 and deny:
            raise SystemExit("sandbox_exec: a unit starting with a deny list is not supported")
        if deny:
            allowed -= calls
        else:
            allowed |= calls
    return frozenset(allowed)


def load_filter(unit: Path) -> None:
    settings = unit_settings(unit)
    number = settings.get("SystemCallErrorNumber", ["EPERM"])[-1]
    flt = seccomp.SyscallFilter(defaction=seccomp.ERRNO(getattr(errno, number)))
    calls = set(allowed_calls(settings["SystemCallFilter"]))
    families = settings.get("RestrictAddressFamilies", [])
    if families:
        calls.discard("socket")
        for family in families[-1].split():
            flt.add_rule(
                seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, int(getattr(socket, family)))
            )
    if settings.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        _deny_write_execute(flt, calls)
    for call in sorted(calls):
        try:
            flt.add_rule(seccomp.ALLOW, call)
        except (RuntimeError, ValueError, OSError):
            continue  # a name this architecture does not have
    flt.load()


def _deny_write_execute(flt: object, calls: set[str]) -> None:
    """MemoryDenyWriteExecute=: mmap never writable and executable at once, mprotect never
    to executable (systemd's seccomp rules; everything else falls to the default errno)."""
    wx, x = mmap.PROT_WRITE | mmap.PROT_EXEC, mmap.PROT_EXEC
    add = flt.add_rule  # type: ignore[attr-defined]
    if "mmap" in calls:
        calls.discard("mmap")
        for allowed in (0, mmap.PROT_WRITE, mmap.PROT_EXEC):
            add(seccomp.ALLOW, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, allowed))
    for call in ("mprotect", "pkey_mprotect"):
        if call in calls:
            calls.discard(call)
            add(seccomp.ALLOW, call, seccomp.Arg(2, seccomp.MASKED_EQ, x, 0))


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    load_filter(Path(argv[0]))
    os.execvp(argv[2], argv[2:])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
