"""scripts/install.sh on a genuinely fresh Debian 12, for real: no `--root`.

A minimal Bookworm (debootstrap minbase, plus what every stock Debian / Raspberry Pi OS
image has: systemd and CA certificates; no Python) in a scratch directory, the checkout
copied in, then `scripts/install.sh` run in it as root: apt-get installs the device's
packages from the host's Debian sources, useradd makes the user, pip builds and installs
the venv from the host's package sources, the unit is installed and enabled (systemctl
offline: systemd does not run in a chroot). Then the installed unit's own `ExecStart`,
verbatim, runs as the `roomtranslate` user (setpriv, the user and groups as the chroot's
own files say) against the installed configuration pointed at a real Mosquitto and the
service simulator on loopback: READY and WATCHDOG over a real notify socket (with the
sender's credentials, as systemd checks them), the start check's request accepted with
the key install.sh wrote, `online` on the broker; SIGTERM: STOPPING, `offline`, exit 0.
Last, `--uninstall` disables and removes the unit and keeps the configuration.

Every command that mounts anything runs in its own mount namespace (`unshare --mount`):
its mounts of /proc, /dev, /sys and of the pip sources end with it, even when the test is
killed, so nothing is ever left mounted under the scratch directory; the scratch
directory is removed only after checking that.

Needs root (or `sudo -n`), debootstrap (scripts/setup.sh), and the network to the Debian
mirror and to pip's package sources, as a device's install does: without them it fails
saying so. The time of each step is printed, and is in every failure message.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

from scripts.broker import Broker, retained
from scripts.simproc import Simulator, wait_for
from tests.conftest import PROJECT_ROOT
from tests.test_install import _sudo, accounts

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SUITE = "bookworm"
# What a stock Debian 12 / Raspberry Pi OS image has beyond minbase. Not python3:
# install.sh must bring what it needs.
INCLUDE = ("ca-certificates", "systemd")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEVICE_PACKAGES = ("python3", "python3-venv", "libportaudio2", "python3-systemd")
CHECKOUT = "/root/roomtranslate"
UNIT = "etc/systemd/system/roomtranslate.service"
WANTS = "etc/systemd/system/multi-user.target.wants/roomtranslate.service"
NOTIFY_DIR = "run/roomtranslate-test"
KEY = "sk-fresh-install"
ROOM = "fresh-install"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NETWORK_TROUBLE = (
    "Temporary failure resolving",
    "Could not resolve",
    "Failed to fetch",
    "Network is unreachable",
    "Connection timed out",
    "Couldn't download",
    "No matching distribution found",
    "CERTIFICATE_VERIFY_FAILED",
    "Max retries exceeded",
    "connection broken",
)


@dataclass
class Steps:
    """Where the time went: every step's wall time, printed and put in failure messages."""

    times: list[tuple[str, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - start
            self.times.append((name, took))
            print(f"fresh install: {name}: {took:.1f} s", flush=True)

    def __str__(self) -> str:
        total = sum(took for _, took in self.times)
        parts = ", ".join(f"{name} {took:.1f} s" for name, took in self.times)
        return f"where the time went ({total:.0f} s): {parts}"


def host(*argv: str, timeout: float = 60) -> str:
    """A command on the host, as root (or through `sudo -n`); its output; fails on exit != 0."""
    result = subprocess.run(
        [*_sudo(), *argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{shlex.join(argv)}: {result.stdout}{result.stderr}"
    return result.stdout


def tail(text: str, lines: int = 60) -> str:
    """The end of a command's output (without pip's notes on absent index folders)."""
    kept = [line for line in text.splitlines() if "is ignored: it is neither" not in line]
    return "\n".join(kept[-lines:])


def run_step(steps: Steps, name: str, argv: list[str], timeout: float, hint: str) -> str:
    """Run a long step as root in its own session; fail with its output, the hint and times."""
    with steps.step(name):
        proc = subprocess.Popen(
            [*_sudo(), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            out, _ = proc.communicate()
            pytest.fail(f"{name}: not done after {timeout:.0f} s\n{tail(out)}\n{steps}")
    if proc.returncode != 0:
        network = ""
        if any(sign in out for sign in NETWORK_TROUBLE):
            network = f"\nThe network looks unreachable: {hint}"
        pytest.fail(f"{name}: exit {proc.returncode}{network}\n{tail(out)}\n{steps}")
    return out


def kill_group(pgid: int) -> None:
    subprocess.run([*_sudo(), "kill", "-KILL", "--", f"-{pgid}"], check=False, timeout=30)


# -- the host's package sources, for apt and pip in the chroot ------------------------------


def apt_sources() -> list[Path]:
    apt = Path("/etc/apt")
    found = [apt / "sources.list"] if (apt / "sources.list").is_file() else []
    if (apt / "sources.list.d").is_dir():
        found += sorted(
            path
            for path in (apt / "sources.list.d").iterdir()
            if path.suffix in (".list", ".sources") and path.is_file()
        )
    return found


def debian_mirror(sources: list[Path]) -> str:
    """The host's mirror for `SUITE main`, which debootstrap fetches from."""
    for path in sources:
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, list[str]] = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith(("#", " ", "\t")):
                        name, value = line.split(":", 1)
                        fields[name.strip().lower()] = value.split()
                if (
                    "deb" in fields.get("types", [])
                    and SUITE in fields.get("suites", [])
                    and "main" in fields.get("components", [])
                    and fields.get("enabled", ["yes"]) != ["no"]
                ):
                    return fields["uris"][0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 4 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    return DEFAULT_MIRROR


def apt_files(sources: list[Path]) -> list[Path]:
    """The host's apt sources, the keyrings they name and its network settings (proxy,
    validity, CA: the apt.conf.d files with Acquire:: options; not its hooks)."""
    files = list(sources)
    for path in sources:
        for ref in re.findall(r"signed-by[=:]\s*(/[^\s\]]+)", path.read_text(), re.IGNORECASE):
            files.append(Path(ref))
    for folder in (Path("/etc/apt/trusted.gpg.d"), Path("/etc/apt/apt.conf.d")):
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.is_file() and (
                    folder.name == "trusted.gpg.d"
                    or "Acquire::" in path.read_text(errors="replace")
                ):
                    files.append(path)
    return [path for path in files if path.is_file()]


def pip_configs() -> list[tuple[Path, str]]:
    """The host's pip configuration files: (on the host, in the chroot for root)."""
    home = Path.home()
    pairs = [
        (Path("/etc/pip.conf"), "/etc/pip.conf"),
        (Path("/etc/xdg/pip"), "/etc/xdg/pip"),
        (home / ".config/pip/pip.conf", "/root/.config/pip/pip.conf"),
        (home / ".pip/pip.conf", "/root/.pip/pip.conf"),
    ]
    if os.environ.get("PIP_CONFIG_FILE"):
        pairs.append((Path(os.environ["PIP_CONFIG_FILE"]), os.environ["PIP_CONFIG_FILE"]))
    return [(path, inside) for path, inside in pairs if path.exists()]


def pip_env() -> dict[str, str]:
    names = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
    return {k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in names}


def pip_paths(rootfs: Path) -> list[tuple[Path, str]]:
    """Bind mounts (read-only) for pip in the chroot: its configuration files, and the local
    directories and files they or PIP_* name (find-links, file:// indexes, constraints)
    that the chroot does not have itself."""
    mounts = pip_configs()
    files: list[Path] = []
    for path, _ in mounts:
        files += [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    values = list(pip_env().values())
    for path in files:
        parser = configparser.RawConfigParser(strict=False)
        with contextlib.suppress(configparser.Error, UnicodeDecodeError):
            parser.read(path)
            values += [v for s in parser.sections() for v in parser[s].values()]
    for token in " ".join(values).split():
        local = urlparse(token).path if token.startswith("file://") else token
        if Path(local).name == "simple":  # a PEP 503 index: its files lie beside it
            local = str(Path(local).parent)
        if not local.startswith("/") or not Path(local).exists():
            continue
        if (rootfs / local.lstrip("/")).exists() or any(
            local == inside or local.startswith(inside + "/") for _, inside in mounts
        ):
            continue
        mounts.append((Path(local), local))
    return mounts


def in_root(rootfs: Path, argv: list[str], env: dict[str, str], *, pip: bool = False) -> list[str]:
    """`argv` chrooted into `rootfs` with `env`, in a mount namespace of its own with /proc,
    /dev, /sys (and with `pip`, pip's sources) mounted; exec all the way (same PID)."""
    root = shlex.quote(str(rootfs))
    lines = [
        "set -e",
        f"mount -t proc proc {root}/proc",
        f"mount --rbind /dev {root}/dev",
        f"mount -t sysfs -o ro sysfs {root}/sys",
    ]
    for source, inside in pip_paths(rootfs) if pip else []:
        target = shlex.quote(str(rootfs) + inside)
        make = (
            f"mkdir -p {target}"
            if source.is_dir()
            else f"mkdir -p $(dirname {target}); touch {target}"
        )
        lines += [make, f"mount --bind -o ro {shlex.quote(str(source))} {target}"]
    lines.append(f'exec chroot {root} "$@"')
    variables = [f"{k}={v}" for k, v in {"PATH": PATH, **env}.items()]
    return [
        "env",
        "-i",
        *variables,
        "unshare",
        "--mount",
        "sh",
        "-c",
        "\n".join(lines),
        "sh",
        *argv,
    ]


# -- the scratch machine ----------------------------------------------------------------------


@dataclass
class Fresh:
    rootfs: Path
    steps: Steps
    output: str
    had_python: bool


def mounts_under(path: Path) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


def remove_scratch(scratch: Path, rootfs: Path) -> None:
    """Stop what still runs in the chroot, make sure nothing is mounted below, remove it."""
    if os.geteuid() == 0:
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if proc.name.isdigit() and Path(os.readlink(proc / "root")) == rootfs:
                    os.kill(int(proc.name), signal.SIGKILL)
    for point in sorted(mounts_under(scratch), reverse=True):  # none: only a safety net
        subprocess.run([*_sudo(), "umount", "--recursive", "--lazy", point], check=False)
    left = mounts_under(scratch)
    assert not left, f"still mounted, {scratch} not removed: {left}"
    subprocess.run([*_sudo(), "rm", "-rf", "--one-file-system", str(scratch)], check=False)


def prepare(rootfs: Path, overlay: Path, sources: list[Path]) -> None:
    """The host's apt sources and settings, its DNS, its local CAs and the checkout, put
    into `overlay`, to be copied over the new system."""
    for path in apt_files(sources):
        target = overlay / str(path).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    (overlay / "etc").mkdir(exist_ok=True)
    shutil.copyfile("/etc/resolv.conf", overlay / "etc/resolv.conf")
    local_ca = Path("/usr/local/share/ca-certificates")
    if local_ca.is_dir():
        shutil.copytree(local_ca, overlay / str(local_ca).lstrip("/"), dirs_exist_ok=True)
    listed = subprocess.run(
        [
            "git",
            "-C",
            str(PROJECT_ROOT),
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
        capture_output=True,
        check=False,
    )
    assert listed.returncode == 0, f"the checkout's files (git ls-files): {listed.stderr!r}"
    checkout = overlay / CHECKOUT.lstrip("/")
    for name in filter(None, listed.stdout.decode().split("\0")):
        source, target = PROJECT_ROOT / name, checkout / name
        if not source.is_symlink() and not source.is_file():
            continue  # deleted in the work tree
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    if sources:  # the host's sources replace debootstrap's one-line sources.list
        host("rm", "-f", str(rootfs / "etc/apt/sources.list"))
    host("cp", "-rT", str(overlay), str(rootfs))


@pytest.fixture(scope="module")
def fresh() -> Iterator[Fresh]:
    _sudo()  # skip early without root
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is not installed (scripts/setup.sh installs it)")
    steps = Steps()
    # not under pytest's temporary directories: those are read by the suite's other tests
    scratch = Path(tempfile.mkdtemp(prefix="roomtranslate-deb12-"))
    rootfs = scratch / "rootfs"
    sources = apt_sources()
    mirror = debian_mirror(sources)
    try:
        run_step(
            steps,
            "debootstrap",
            [
                "unshare",
                "--mount",
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(INCLUDE)}",
                SUITE,
                str(rootfs),
                mirror,
            ],
            timeout=300,
            hint=f"debootstrap needs the Debian mirror {mirror}",
        )
        host("chmod", "0755", str(rootfs))
        had_python = (rootfs / "usr/bin/python3").exists()
        with steps.step("prepare"):
            prepare(rootfs, scratch / "overlay", sources)
            if list(Path("/usr/local/share/ca-certificates").rglob("*.crt")):
                host(*in_root(rootfs, ["update-ca-certificates"], {}))
        output = run_step(
            steps,
            "install.sh",
            in_root(
                rootfs,
                ["bash", f"{CHECKOUT}/scripts/install.sh"],
                {"HOME": "/root", "LANG": "C.UTF-8", "DASHSCOPE_API_KEY": KEY, **pip_env()},
                pip=True,
            ),
            timeout=480,
            hint=f"apt-get needs the host's Debian sources ({mirror}), pip its package sources"
            " (PyPI or the host's pip configuration)",
        )
        yield Fresh(rootfs, steps, output, had_python)
    finally:
        with steps.step("clean up"):
            remove_scratch(scratch, rootfs)
        print(f"fresh install: {steps}")


# -- what install.sh made ---------------------------------------------------------------------


def dpkg_installed(rootfs: Path) -> set[str]:
    text = (rootfs / "var/lib/dpkg/status").read_text()
    installed = set()
    for stanza in text.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.MULTILINE))
        if fields.get("Status") == "install ok installed":
            installed.add(fields["Package"])
    return installed


def stat_of(path: Path) -> tuple[int, int, int]:
    """(mode, uid, gid), read as root (the files are not readable by the test's user)."""
    mode, uid, gid = host("stat", "-c", "%a %u %g", str(path)).split()
    return int(mode, 8), int(uid), int(gid)


def test_install_on_fresh_debian_brings_packages_user_venv_config_key_and_enabled_unit(
    fresh: Fresh,
) -> None:
    root, out = fresh.rootfs, fresh.output
    assert not fresh.had_python, "the fresh system had python3 already: nothing proven"
    packages = dpkg_installed(root)
    missing = [p for p in (*DEVICE_PACKAGES, "ca-certificates") if p not in packages]
    assert not missing, f"not installed: {missing}\n{out}"
    unwanted = {"mosquitto", "pulseaudio", "python3-pip", "gcc"} & packages
    assert not unwanted, f"more than a device needs: {unwanted}"
    user = accounts(root, "passwd")["roomtranslate"]
    assert user[5:] == ["/var/lib/roomtranslate", "/usr/sbin/nologin"], user
    groups = accounts(root, "group")
    assert "roomtranslate" in groups["audio"][3].split(","), groups["audio"]
    uid, gid = int(user[2]), int(groups["roomtranslate"][2])
    venv = root / "opt/roomtranslate/.venv"
    assert "home = /usr/bin" in (venv / "pyvenv.cfg").read_text().splitlines()
    assert (venv / "bin/roomtranslate").is_file(), out
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert (site / "daemon").is_dir() and not (site / "daemon").is_symlink()  # not editable
    assert [m for m in ("pytest", "ruff", "mypy") if (site / m).exists()] == []
    # Debian's python3-systemd, linked in (no compiler on a device)
    assert os.readlink(site / "systemd") == "/usr/lib/python3/dist-packages/systemd"
    assert (root / "usr/lib/python3/dist-packages/systemd/daemon.py").is_file()
    assert "install: installed roomtranslate " in out, out
    etc = root / "etc/roomtranslate"
    config = host("cat", str(etc / "config.toml"))
    assert config == (PROJECT_ROOT / "config.toml").read_text().replace(
        '# key_file = "/etc/roomtranslate/api-key"', 'key_file = "/etc/roomtranslate/api-key"'
    )
    assert host("cat", str(etc / "api-key")) == f"{KEY}\n"
    assert stat_of(etc / "api-key") == (0o640, 0, gid)
    assert stat_of(etc / "config.toml") == (0o640, 0, gid)
    assert stat_of(root / "var/lib/roomtranslate") == (0o750, uid, gid)
    assert (root / UNIT).read_text() == (PROJECT_ROOT / "systemd/roomtranslate.service").read_text()
    # enabled, offline: systemd does not run in a chroot; it says so instead of failing
    assert os.readlink(root / WANTS) == "/etc/systemd/system/roomtranslate.service"
    enabled = host(*in_root(root, ["systemctl", "is-enabled", "roomtranslate"], {}))
    assert enabled.strip() == "enabled"
    assert "systemd is not running here" in out and "enabled, not started" in out, out


# -- the installed unit's ExecStart -----------------------------------------------------------


def exec_start(unit: str) -> list[str]:
    lines = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    argv = shlex.split(lines[0].removeprefix("ExecStart="))
    assert argv[0].startswith("/"), argv  # no -@+! prefixes: run as it stands
    return argv


def room_config(template: str, sim: Simulator, broker: Broker) -> str:
    """The installed configuration with the service and the broker on loopback."""
    edits = [
        (
            'base_url = "https://dashscope.aliyuncs.com/compatible-mode/v1"',
            f'base_url = "{sim.base_url}"',
        ),
        (
            'enabled = true\nhost = "localhost"\nport = 1883\n',
            f'enabled = true\nhost = "{broker.host}"\nport = {broker.port}\n',
        ),
        ('# room_id = "meeting-room-3"', f'room_id = "{ROOM}"'),
    ]
    for old, new in edits:
        assert template.count(old) == 1, old
        template = template.replace(old, new)
    return template


def receive(sock: socket.socket, wanted: str, timeout: float) -> list[tuple[str, int, int, int]]:
    """Notify messages with their senders' (pid, uid, gid) until one contains `wanted`."""
    got: list[tuple[str, int, int, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(wanted in m[0] for m in got):
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            break
        pid = uid = gid = -1
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, uid, gid = struct.unpack("iII", value[:12])
        got.append((data.decode(), pid, uid, gid))
    return got


def availability(broker: Broker, within_s: float) -> bytes | None:
    topic = f"roomtranslate/{ROOM}/availability"
    value = None
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        value = asyncio.run(retained(broker, topic))
        if value is not None:
            return value
    return value


# what systemd gives a service of User=roomtranslate, Type=notify, WatchdogSec= (shortened)
SERVICE_ENV = {
    "HOME": "/var/lib/roomtranslate",
    "USER": "roomtranslate",
    "LOGNAME": "roomtranslate",
    "SHELL": "/usr/sbin/nologin",
    "NOTIFY_SOCKET": f"/{NOTIFY_DIR}/notify",
    "WATCHDOG_USEC": "400000",
}
# User=, Group=, SupplementaryGroups=audio (the user's groups), NoNewPrivileges=yes
AS_USER = [
    *("setpriv", "--reuid=roomtranslate", "--regid=roomtranslate"),
    *("--init-groups", "--no-new-privs"),
]


@contextlib.contextmanager
def notify_socket(root: Path) -> Iterator[socket.socket]:
    """The datagram socket at SERVICE_ENV's NOTIFY_SOCKET in the chroot, with credentials."""
    host("install", "-d", "-m", "0755", "-o", str(os.geteuid()), str(root / NOTIFY_DIR))
    path = root / NOTIFY_DIR / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(str(path))
        path.chmod(0o777)
        yield sock
    finally:
        sock.close()
        host("rm", "-rf", str(root / NOTIFY_DIR))


def test_installed_exec_start_reaches_ready_as_the_service_user(
    fresh: Fresh, tmp_path: Path
) -> None:
    root = fresh.rootfs
    argv = exec_start((root / UNIT).read_text())
    user = accounts(root, "passwd")["roomtranslate"]
    groups = accounts(root, "group")
    uid, gid, audio = int(user[2]), int(groups["roomtranslate"][2]), int(groups["audio"][2])
    config = root / "etc/roomtranslate/config.toml"
    template = host("cat", str(config))
    with (
        Broker() as broker,
        Simulator("--api-key", KEY, "--first-text-ms", "5") as sim,
        notify_socket(root) as sock,
        fresh.steps.step("ExecStart to READY, SIGTERM"),
        (tmp_path / "daemon.log").open("w+b") as log,
    ):
        edited = tmp_path / "config.toml"
        edited.write_text(room_config(template, sim, broker))
        # the unit's own config path, as install.sh leaves it: 0640 root:roomtranslate
        host("install", "-m", "0640", "-o", "0", "-g", str(gid), str(edited), str(config))
        proc = subprocess.Popen(
            [*_sudo(), *in_root(root, [*AS_USER, *argv], SERVICE_ENV)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def said() -> str:
            log.seek(0)
            return f"{log.read().decode(errors='replace')[-4000:]}\n{fresh.steps}"

        try:
            messages = receive(sock, "READY=1", 60)
            ready = [m for m in messages if "READY=1" in m[0]]
            assert ready, f"no READY: {messages}\n{said()}"
            _, pid, sender_uid, sender_gid = ready[0]
            assert (sender_uid, sender_gid) == (uid, gid), ready
            if not _sudo():  # NotifyAccess=main: the main process itself, under its user
                assert pid == proc.pid, (pid, proc.pid)
            status = Path(f"/proc/{pid}/status").read_text()
            supplementary = re.search(r"^Groups:\s*(.*)$", status, re.MULTILINE)
            assert supplementary and str(audio) in supplementary.group(1).split(), status
            pings = receive(sock, "WATCHDOG=1", 5)
            assert any("WATCHDOG=1" in m[0] for m in pings), pings
            # the start check's 1 s clip, with the key install.sh wrote and the user read
            accepted = wait_for(lambda: sim.stats()["by_status"].get("200", 0) >= 1, 20)
            assert accepted, f"{sim.stats()}\n{said()}"
            assert availability(broker, 10) == b"online", said()
            host("kill", "-TERM", str(proc.pid))
            stopping = receive(sock, "STOPPING=1", 20)
            assert any("STOPPING=1" in m[0] for m in stopping), f"{stopping}\n{said()}"
            assert proc.wait(30) == 0, said()
            assert availability(broker, 5) == b"offline", said()
        finally:
            if proc.poll() is None:
                kill_group(proc.pid)
                proc.wait(30)


def test_uninstall_disables_and_removes_the_unit_keeps_the_configuration(fresh: Fresh) -> None:
    root = fresh.rootfs
    out = run_step(
        fresh.steps,
        "install.sh --uninstall",
        in_root(root, ["bash", f"{CHECKOUT}/scripts/install.sh", "--uninstall"], {}),
        timeout=120,
        hint="",
    )
    assert not (root / UNIT).exists() and not os.path.lexists(root / WANTS), out
    assert not (root / "opt/roomtranslate").exists(), out
    host("test", "-s", str(root / "etc/roomtranslate/api-key"))
    assert (root / "var/lib/roomtranslate").is_dir() and "kept" in out, out
