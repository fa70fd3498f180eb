"""scripts/install.sh into a scratch root (`--root`): the user, a non-editable venv without
dev tools, the config from the template, the key file's mode, the unit; then the installed
unit's own ExecStart runs the installed daemon to READY over a real notify socket. Also
idempotence (an upgrade keeps config, key and broker passwords), the local broker
(Mosquitto with the generated password file and ACL, for real), uninstall and purge."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from scripts.broker import free_port, port_open
from scripts.procs import stop_process
from tests.conftest import PROJECT_ROOT
from tests.test_systemd import receive_until

pytestmark = pytest.mark.e2e

INSTALL = PROJECT_ROOT / "scripts" / "install.sh"
UNIT_PATH = "etc/systemd/system/roomtranslate.service"


def _sudo() -> list[str]:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], check=False).returncode == 0:
        return ["sudo", "-n"]
    pytest.skip("install.sh needs root (useradd --root, chown) and sudo -n is not available")


def install(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [
            *_sudo(),
            "env",
            *(f"{k}={v}" for k, v in (env or {}).items()),
            "bash",
            str(INSTALL),
            "--root",
            str(root),
            *args,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def accounts(root: Path, db: str) -> dict[str, list[str]]:
    return {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc" / db).read_text().splitlines()
        if line
    }


@pytest.fixture(scope="module")
def broker_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def installed(
    tmp_path_factory: pytest.TempPathFactory, broker_port: int
) -> Iterator[tuple[Path, str]]:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto is not installed")
    # not under pytest's 0700 temp directories: the service user must reach its files
    root = Path(tempfile.mkdtemp(prefix="roomtranslate-root-"))
    root.chmod(0o755)
    try:
        out = install(
            root,
            "--with-broker",
            "--broker-port",
            str(broker_port),
            env={"DASHSCOPE_API_KEY": "sk-installed"},
        )
        yield root, out
    finally:
        subprocess.run([*_sudo(), "rm", "-rf", str(root)], check=False)


def test_user_venv_config_key_state_and_unit(installed: tuple[Path, str]) -> None:
    root, out = installed
    user = accounts(root, "passwd")["roomtranslate"]
    assert user[5] == "/var/lib/roomtranslate" and user[6] == "/usr/sbin/nologin"
    group = accounts(root, "group")
    assert "roomtranslate" in group["audio"][3].split(",")
    gid = int(group["roomtranslate"][2])
    # the application: a non-editable install in its own venv, no dev tools
    python = root / "opt/roomtranslate/.venv/bin/python"
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import daemon, importlib.util as u, systemd.daemon;"
            "print(daemon.__file__);"
            "print([m for m in ('pytest', 'ruff', 'mypy', 'hypothesis') if u.find_spec(m)])",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd="/",
    )
    where, dev = probe.stdout.splitlines()
    assert where.startswith(str(root / "opt/roomtranslate/.venv/lib/")), where
    assert dev == "[]", dev
    assert (root / "opt/roomtranslate/config.toml.example").read_text() == (
        PROJECT_ROOT / "config.toml"
    ).read_text()
    # the configuration from the template, with the key file named; key 0640 root:roomtranslate
    config = root / "etc/roomtranslate/config.toml"
    assert 'key_file = "/etc/roomtranslate/api-key"' in config.read_text().splitlines()
    for path, mode in ((config, 0o640), (root / "etc/roomtranslate/api-key", 0o640)):
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == mode and info.st_uid == 0 and info.st_gid == gid, path
    assert (root / "etc/roomtranslate/api-key").read_text() == "sk-installed\n"
    state = (root / "var/lib/roomtranslate").stat()
    assert state.st_uid == int(user[2]) and stat.S_IMODE(state.st_mode) == 0o750
    assert (root / UNIT_PATH).read_text() == (
        PROJECT_ROOT / "systemd/roomtranslate.service"
    ).read_text()
    assert "systemd is not running here" in out


def scratch_exec_start(root: Path, config: Path) -> list[str]:
    """The installed unit's ExecStart, its paths moved into the scratch root."""
    text = (root / UNIT_PATH).read_text()
    lines = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    argv = shlex.split(lines[0].removeprefix("ExecStart="))
    assert argv[0] == "/opt/roomtranslate/.venv/bin/roomtranslate"
    moved = [str(root) + argv[0]]
    for arg in argv[1:]:
        moved.append(str(config) if arg == "/etc/roomtranslate/config.toml" else arg)
    return moved


def as_service_user(root: Path) -> tuple[list[str], dict[str, Any]]:
    """How to run a command as the installed user: (argv prefix, Popen keywords)."""
    if os.geteuid() != 0:  # sudo can only run it as root: the files are still exercised
        return _sudo(), {}
    user = accounts(root, "passwd")["roomtranslate"]
    audio = int(accounts(root, "group")["audio"][2])
    return [], {"user": int(user[2]), "group": int(user[3]), "extra_groups": [audio]}


def test_installed_exec_start_reaches_ready_as_the_service_user(
    installed: tuple[Path, str],
) -> None:
    """The installed unit's ExecStart, the installed venv, the installed key file read by
    the service user through its group (0640 root:roomtranslate): READY, then STOPPING."""
    root, _ = installed
    etc = root / "etc/roomtranslate"
    # the installed config, pointed at nothing reachable (no broker, no service)
    text = (etc / "config.toml").read_text()
    text = text.replace('"/etc/roomtranslate/api-key"', f'"{etc}/api-key"')
    text = text.replace("enabled = true", "enabled = false", 1)
    assert 'state_dir = "/var/lib/roomtranslate"' in text
    text = text.replace(
        'state_dir = "/var/lib/roomtranslate"', f'state_dir = "{root}/var/lib/roomtranslate"'
    )
    text = text.replace(
        'base_url = "https://dashscope.aliyuncs.com/compatible-mode/v1"',
        'base_url = "http://127.0.0.1:9/compatible-mode/v1"',
    )
    config = etc / "test-config.toml"
    config.write_text(text)
    shutil.copymode(etc / "config.toml", config)
    gid = int(accounts(root, "group")["roomtranslate"][2])
    prefix, keywords = as_service_user(root)
    if keywords:
        os.chown(config, 0, gid)
        # the key is readable by the service's group, not by anybody else
        other = subprocess.run(
            ["cat", str(etc / "api-key")], user=65534, check=False, capture_output=True
        )
        assert other.returncode != 0
    run_dir = root / "run"
    run_dir.mkdir(mode=0o755, exist_ok=True)
    path = str(run_dir / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.chmod(path, 0o777)
    env = {
        "PATH": "/usr/bin:/bin",
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "400000",
        "HOME": str(root / "var/lib/roomtranslate"),  # the user's home, its StateDirectory
        "PULSE_SERVER": f"unix:{run_dir}/none",
    }
    argv = [*prefix, *(["env", *(f"{k}={v}" for k, v in env.items())] if prefix else [])]
    proc = subprocess.Popen(
        [*argv, *scratch_exec_start(root, config)],
        env=env,
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **keywords,
    )
    try:
        messages = receive_until(sock, "READY=1", 30)
        if not any("READY=1" in m for m in messages):
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"no READY: {messages} {proc.returncode} {err.decode()[-2000:]}")
        proc.send_signal(signal.SIGTERM)
        stopping = receive_until(sock, "STOPPING=1", 10)
        assert any("STOPPING=1" in m for m in stopping), stopping
        assert proc.wait(20) == 0
        # the installed `check`, as the same user: its config and its state directory
        exe = scratch_exec_start(root, config)[0]
        checked = subprocess.run(
            [*argv, exe, "check", "--no-service", "--config", str(config)],
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **keywords,
        )
        lines = checked.stdout.splitlines()
        assert lines[0].startswith("✓ config: "), checked.stdout + checked.stderr
        assert lines[1] == f"✓ state: {root}/var/lib/roomtranslate: writable", checked.stdout
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        sock.close()
        config.unlink()


def env_file(root: Path) -> dict[str, str]:
    lines = (root / "etc/roomtranslate/environment").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def test_local_broker_with_passwords_and_acl(
    installed: tuple[Path, str], broker_port: int, tmp_path: Path
) -> None:
    root, _ = installed
    env = env_file(root)
    assert env["ROOMTRANSLATE_MQTT__USERNAME"] == "roomtranslate"
    room_pw = env["ROOMTRANSLATE_MQTT__PASSWORD"]
    display_pw = (root / "etc/roomtranslate/broker-display-password").read_text().strip()
    assert stat.S_IMODE((root / "etc/roomtranslate/environment").stat().st_mode) == 0o600
    conf = (root / "etc/mosquitto/conf.d/roomtranslate.conf").read_text()
    assert f"listener {broker_port} 127.0.0.1" in conf and "allow_anonymous false" in conf
    # run Mosquitto on exactly this configuration
    run_conf = tmp_path / "mosquitto.conf"
    run_conf.write_text(conf + ("user root\n" if os.geteuid() == 0 else ""))
    mosq = subprocess.Popen(
        ["mosquitto", "-c", str(run_conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(200):
            if port_open("127.0.0.1", broker_port):
                break
            asyncio.run(asyncio.sleep(0.02))
        asyncio.run(_exercise_broker(broker_port, room_pw, display_pw))
    finally:
        stop_process(mosq, 5.0)


async def _exercise_broker(port: int, room_pw: str, display_pw: str) -> None:
    with pytest.raises(aiomqtt.MqttError):  # anonymous: refused
        async with aiomqtt.Client("127.0.0.1", port, timeout=5):
            pass
    with pytest.raises(aiomqtt.MqttError):  # a wrong password: refused
        async with aiomqtt.Client(
            "127.0.0.1", port, username="roomtranslate", password="x", timeout=5
        ):
            pass
    async with aiomqtt.Client(
        "127.0.0.1", port, username="display", password=display_pw, timeout=5
    ) as display:
        await display.subscribe("roomtranslate/#", qos=1)
        async with aiomqtt.Client(
            "127.0.0.1", port, username="roomtranslate", password=room_pw, timeout=5
        ) as room:
            await room.publish("roomtranslate/r1/status", b"from-room", qos=1)
        # the display may read, not write (the ACL drops its publication)
        await display.publish("roomtranslate/r1/status", b"from-display", qos=1)
        got: list[bytes] = []
        try:
            async with asyncio.timeout(1.5):
                async for message in display.messages:
                    got.append(bytes(message.payload))  # type: ignore[arg-type]
        except TimeoutError:
            pass
        assert got == [b"from-room"], got


def test_second_run_is_an_upgrade_that_keeps_config_key_and_passwords(
    installed: tuple[Path, str], broker_port: int
) -> None:
    root, _ = installed
    config = root / "etc/roomtranslate/config.toml"
    config.write_text(config.read_text() + "\n# edited by the integrator\n")
    before = (config.read_text(), (root / "etc/roomtranslate/api-key").read_text(), env_file(root))
    (root / "etc/roomtranslate/api-key").chmod(0o644)  # a wrong mode is repaired
    # a development venv left from an older, manual install (dev tools in it) is replaced
    site = next((root / "opt/roomtranslate/.venv/lib").glob("python3*/site-packages"))
    (site / "pytest").mkdir()
    (site / "pytest" / "__init__.py").write_text("")
    out = install(root, "--with-broker", "--broker-port", str(broker_port))
    assert "replacing" in out and not (site / "pytest").exists()
    assert (root / "opt/roomtranslate/.venv/bin/roomtranslate").is_file()
    again = install(root, "--with-broker", "--broker-port", str(broker_port))
    assert "replacing" not in again and "creating" not in again  # nothing to redo
    after = (config.read_text(), (root / "etc/roomtranslate/api-key").read_text(), env_file(root))
    assert after == before
    assert stat.S_IMODE((root / "etc/roomtranslate/api-key").stat().st_mode) == 0o640
    assert list(accounts(root, "passwd")).count("roomtranslate") == 1


def test_uninstall_keeps_config_and_state_purge_removes_them(
    installed: tuple[Path, str],
) -> None:
    """The last test of the module: it removes the installation the others used."""
    root, _ = installed
    out = install(root, "--uninstall")
    assert not (root / "opt/roomtranslate").exists() and not (root / UNIT_PATH).exists()
    assert (root / "etc/roomtranslate/config.toml").is_file()
    assert (root / "etc/roomtranslate/api-key").is_file()
    assert (root / "var/lib/roomtranslate").is_dir()
    assert (root / "etc/mosquitto/conf.d/roomtranslate.conf").is_file()
    assert "kept" in out and "roomtranslate" in accounts(root, "passwd")
    install(root, "--uninstall", "--purge")
    assert not (root / "etc/roomtranslate").exists()
    assert not (root / "var/lib/roomtranslate").exists()
    assert not (root / "etc/mosquitto/conf.d/roomtranslate.conf").exists()
    assert "roomtranslate" not in accounts(root, "passwd")
    assert "roomtranslate" not in accounts(root, "group")
