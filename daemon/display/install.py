"""`roomtranslate display-config`: Mosquitto serves the caption display and its MQTT.

Writes a Mosquitto configuration snippet (for Debian's `include_dir /etc/mosquitto/conf.d`)
with two listeners, each with its own settings (`per_listener_settings true`):

- MQTT over TCP (default 127.0.0.1:1883) for the daemon and local tools; a websockets-only
  Mosquitto refuses to start, and the daemon speaks TCP;
- MQTT over WebSockets (default port 9001, every interface) that also serves the page
  (`http_dir`), for the displays: anonymous and read-only, limited by an ACL to the
  room's availability, status and captions topics, so a display can never publish.

and copies the page there. Then the display's address is
`http://<host>:<ws_port>/?room=<room_id>`, printed with its QR code.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import segno

from daemon.display import PAGE_DIR, page_files

DEFAULT_CONF = Path("/etc/mosquitto/conf.d/roomtranslate-display.conf")
DEFAULT_ACL = DEFAULT_CONF.with_suffix(".acl")
DEFAULT_HTTP_DIR = Path("/var/lib/roomtranslate/display")
DEFAULT_PREFIX = "roomtranslate"
# The broker snippet of `scripts/install.sh --with-broker`, beside ours in conf.d: it has
# the TCP listener (with passwords) already.
INSTALL_SNIPPET = "roomtranslate.conf"


@dataclass(frozen=True, slots=True)
class DisplayConfig:
    """Where the page goes and how Mosquitto listens."""

    prefix: str = DEFAULT_PREFIX
    http_dir: Path = DEFAULT_HTTP_DIR
    acl_file: Path = DEFAULT_ACL
    ws_port: int = 9001
    ws_bind: str = ""  # "" = every interface
    tcp_port: int = 1883  # 0: no TCP listener here (another snippet has it)
    tcp_bind: str = "127.0.0.1"
    password_file: Path | None = None  # for the TCP listener; None = anonymous


def _listener(port: int, bind: str) -> str:
    return f"listener {port} {bind}".rstrip()


def mosquitto_snippet(config: DisplayConfig) -> str:
    """The Mosquitto configuration: a TCP listener and the displays' WebSockets listener."""
    if config.password_file is None:
        tcp_auth = ["allow_anonymous true"]
    else:
        tcp_auth = ["allow_anonymous false", f"password_file {config.password_file}"]
    tcp = [
        "# MQTT over TCP: the roomtranslate daemon and local tools.",
        _listener(config.tcp_port, config.tcp_bind),
        *tcp_auth,
    ]
    if not config.tcp_port:
        tcp = [f"# MQTT over TCP: the listener of {INSTALL_SNIPPET} (scripts/install.sh)."]
    lines = [
        "# roomtranslate caption displays (written by `roomtranslate display-config`).",
        "# Each listener has its own authentication and access settings (this file is",
        "# read before the other conf.d files, as the option must come first).",
        "per_listener_settings true",
        "",
        *tcp,
        "",
        "# MQTT over WebSockets for the caption displays, which also serves the page.",
        "# Displays are anonymous and may only read the rooms' public topics (the ACL).",
        _listener(config.ws_port, config.ws_bind),
        "protocol websockets",
        f"http_dir {config.http_dir}",
        "allow_anonymous true",
        f"acl_file {config.acl_file}",
        "",
    ]
    return "\n".join(lines)


def acl_text(prefix: str) -> str:
    """Anonymous clients (the displays) read availability, status and captions; no writes."""
    return "\n".join(
        [
            "# roomtranslate caption displays: what an anonymous client may read.",
            f"topic read {prefix}/+/availability",
            f"topic read {prefix}/+/status",
            f"topic read {prefix}/+/captions/#",
            "",
        ]
    )


def copy_page(dest: Path) -> list[Path]:
    """Copy the page into `dest` (created; files replaced); the files written."""
    written: list[Path] = []
    for relative in page_files():
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.parent.chmod(0o755)
        shutil.copyfile(PAGE_DIR / relative, target)
        target.chmod(0o644)
        written.append(target)
    dest.chmod(0o755)
    return written


def write_config(config: DisplayConfig, conf_path: Path) -> list[Path]:
    """Write the snippet and the ACL, copy the page; every file written."""
    conf_path.parent.mkdir(parents=True, exist_ok=True)
    config.acl_file.parent.mkdir(parents=True, exist_ok=True)
    conf_path.write_text(mosquitto_snippet(config), encoding="utf-8")
    config.acl_file.write_text(acl_text(config.prefix), encoding="utf-8")
    return [conf_path, config.acl_file, *copy_page(config.http_dir)]


def display_url(host: str, port: int, room_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The display's address when Mosquitto serves it on `host:port`."""
    query = {"room": room_id}
    if prefix != DEFAULT_PREFIX:
        query["prefix"] = prefix
    netloc = f"[{host}]" if ":" in host else host
    return f"http://{netloc}:{port}/?{urlencode(query)}"


def terminal_qr(url: str) -> str:
    """The URL's QR code drawn with block characters, for a terminal."""
    out = io.StringIO()
    segno.make(url, error="m").terminal(out=out, compact=True)
    return out.getvalue()


def install_snippet_beside(conf_path: Path) -> Path | None:
    """scripts/install.sh's broker snippet in the same conf.d, if it is there."""
    other = conf_path.parent / INSTALL_SNIPPET
    return other if other.is_file() and other != conf_path else None


def report(written: list[Path], conf_path: Path, url: str, *, qr: bool) -> str:
    """What display-config tells the installer."""
    pages = [p for p in written if p not in (conf_path,) and p.suffix != ".acl"]
    lines = [
        f"wrote {conf_path} (listeners) and {written[1]} (display access)",
        f"copied the page ({len(pages)} files) to {pages[0].parent if pages else '?'}",
        "restart Mosquitto to apply it: systemctl restart mosquitto",
        f"caption display: {url}",
    ]
    text = "\n".join(lines) + "\n"
    return text + terminal_qr(url) if qr else text
