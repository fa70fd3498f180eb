#!/usr/bin/env bash
# Install roomtranslate as a service on Raspberry Pi OS Bookworm / Debian 12, from this
# checkout. Idempotent: run it again to upgrade (the code is replaced, the configuration,
# the key and the state are kept).
#
#   sudo scripts/install.sh                    install or upgrade; enable and (re)start
#   sudo scripts/install.sh --with-broker      also a local Mosquitto for the room:
#        [--broker-listen loopback|lan]        listener on 127.0.0.1 (default) or all
#        [--broker-port N]                     interfaces, port 1883; password file + ACL
#   sudo scripts/install.sh --uninstall        remove the service and the application,
#                                              keep /etc/roomtranslate and the state
#   sudo scripts/install.sh --uninstall --purge   remove those and the user too
#   scripts/install.sh --root DIR ...          everything under DIR instead of / (tests):
#                                              no apt-get (the packages must be there),
#                                              no systemctl
#
# What it makes: the system user `roomtranslate` (group audio), the application in its
# own virtual environment /opt/roomtranslate/.venv (a normal, non-editable install of
# this package; no dev tools), /etc/roomtranslate/config.toml from the documented
# template (only when absent), /etc/roomtranslate/api-key (0640 root:roomtranslate),
# /var/lib/roomtranslate (the unit's StateDirectory), and the unit
# /etc/systemd/system/roomtranslate.service, enabled (also where systemd is installed but
# not running: a chroot, an image being built) and started when systemd runs.
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
ROOT=""
ACTION=install
PURGE=0
BROKER=0
LISTEN=loopback
BROKER_PORT=1883

usage() { sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install: $*" >&2; exit 1; }
say() { echo "install: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="$(realpath -m "${2:?--root needs a directory}")"; shift 2 ;;
    --with-broker) BROKER=1; shift ;;
    --broker-listen)
      LISTEN="${2:?}"; shift 2
      [ "$LISTEN" = loopback ] || [ "$LISTEN" = lan ] || die "--broker-listen: loopback or lan" ;;
    --broker-port) BROKER_PORT="${2:?}"; shift 2 ;;
    --uninstall) ACTION=uninstall; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
[ "$PURGE" = 0 ] || [ "$ACTION" = uninstall ] || die "--purge goes with --uninstall"
[ "$(id -u)" = 0 ] || die "run as root (sudo $0 $*)"

USER_NAME=roomtranslate
APP="$ROOT/opt/roomtranslate"
VENV="$APP/.venv"
ETC="$ROOT/etc/roomtranslate"
STATE="$ROOT/var/lib/roomtranslate"
UNIT="$ROOT/etc/systemd/system/roomtranslate.service"
MOSQ_CONF="$ROOT/etc/mosquitto/conf.d/roomtranslate.conf"
MOSQ_PASSWD="$ROOT/etc/mosquitto/roomtranslate.passwd"
MOSQ_ACL="$ROOT/etc/mosquitto/roomtranslate.acl"
ENV_FILE="$ETC/environment"
# Debian's Python (the package python3): what python3-systemd is built for, and reachable
# by the service user (not a developer's pyenv or a python3 earlier in PATH).
PYTHON=/usr/bin/python3
# What a device needs at run time, nothing more: Python with venv, PortAudio (with ALSA),
# Debian's build of systemd-python (no compiler on the device), CA certificates.
DEVICE_PACKAGES=(python3 python3-venv libportaudio2 python3-systemd ca-certificates)
BROKER_PACKAGES=(mosquitto)

systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }
# systemd installed but not running (a chroot, a container, an image being built):
# systemctl enables and disables offline (the symlinks only), it cannot start or stop.
systemd_offline() { [ -z "$ROOT" ] && ! systemd_running && command -v systemctl >/dev/null; }

ensure_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ -n "$ROOT" ]; then
    die "missing Debian packages (--root installs none): ${missing[*]}"
  fi
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null
}

# -- the user ------------------------------------------------------------------------------

seed_root_accounts() {  # a scratch root gets minimal account files for useradd --root
  mkdir -p "$ROOT/etc"
  [ -f "$ROOT/etc/passwd" ] || echo "root:x:0:0:root:/root:/bin/sh" >"$ROOT/etc/passwd"
  [ -f "$ROOT/etc/shadow" ] || echo "root:*:19000:0:99999:7:::" >"$ROOT/etc/shadow"
  if [ ! -f "$ROOT/etc/group" ]; then
    { echo "root:x:0:"; getent group audio || echo "audio:x:29:"; } >"$ROOT/etc/group"
  fi
  [ -f "$ROOT/etc/gshadow" ] || printf 'root:*::\naudio:*::\n' >"$ROOT/etc/gshadow"
}

account_id() {  # account_id passwd|group NAME -> the numeric id (in the root's files)
  local db="$1" name="$2"
  if [ -n "$ROOT" ]; then
    awk -F: -v n="$name" '$1 == n { print $3 }' "$ROOT/etc/$db"
  else
    getent "$db" "$name" | cut -d: -f3
  fi
}

ensure_user() {
  local root_opt=()
  if [ -n "$ROOT" ]; then seed_root_accounts; root_opt=(--root "$ROOT"); fi
  if [ -z "$(account_id passwd "$USER_NAME")" ]; then
    say "creating the system user $USER_NAME"
    useradd "${root_opt[@]}" --system --user-group --home-dir /var/lib/roomtranslate \
      --no-create-home --shell /usr/sbin/nologin --comment "roomtranslate daemon" "$USER_NAME" \
      2> >(grep -v "missing or non-executable shell" >&2)
  fi
  usermod "${root_opt[@]}" --append --groups audio "$USER_NAME"
  UID_N="$(account_id passwd "$USER_NAME")"
  GID_N="$(account_id group "$USER_NAME")"
}

# -- the application -----------------------------------------------------------------------

link_debian_systemd() {  # Debian's python3-systemd into the venv, and only that package
  local site dist
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  for dist in /usr/lib/python3/dist-packages/systemd /usr/lib/python3/dist-packages/systemd_python-*.egg-info; do
    [ -e "$dist" ] || die "python3-systemd is not installed ($dist)"
    ln -sfn "$dist" "$site/$(basename "$dist")"
  done
}

venv_is_ours() {  # a venv of Debian's Python without dev tools (not an old dev checkout's)
  [ -x "$VENV/bin/python" ] \
    && grep -qx "home = $(dirname "$PYTHON")" "$VENV/pyvenv.cfg" 2>/dev/null \
    && ! "$VENV/bin/python" -c 'import importlib.util as u, sys
sys.exit(not any(u.find_spec(m) for m in ("pytest", "ruff", "mypy")))' 2>/dev/null
}

install_app() {
  case "$SRC/" in
    "$APP"/*) die "run this from a checkout outside $APP (the install replaces what is there)" ;;
  esac
  mkdir -p "$APP"
  if [ -e "$VENV" ] && ! venv_is_ours; then
    say "replacing $VENV (not a plain venv of $PYTHON: an older or a development install)"
    rm -rf "$VENV"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  link_debian_systemd
  local wheels pip=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
  wheels="$(mktemp -d)"
  say "building roomtranslate from $SRC"
  "${pip[@]}" wheel --no-deps -w "$wheels" "$SRC"
  say "installing roomtranslate into $VENV"
  # dependencies as needed, then this build of the package even if the version is unchanged
  "${pip[@]}" install "$wheels"/roomtranslate-*.whl
  "${pip[@]}" install --force-reinstall --no-deps "$wheels"/roomtranslate-*.whl
  rm -rf "$wheels"
  install -m 0644 "$SRC/README.md" "$APP/README.md"
  install -d -m 0755 "$APP/docs"
  install -m 0644 "$SRC"/docs/*.md "$APP/docs/"
  install -m 0644 "$SRC/config.toml" "$APP/config.toml.example"
  say "installed $("$VENV/bin/roomtranslate" --version)"
}

# -- configuration, key, state -------------------------------------------------------------

install_config() {
  install -d -m 0750 -o 0 -g "$GID_N" "$ETC"
  if [ ! -f "$ETC/config.toml" ]; then
    say "writing $ETC/config.toml (the documented template; edit [room] and [mqtt])"
    sed 's|^# key_file = "/etc/roomtranslate/api-key"$|key_file = "/etc/roomtranslate/api-key"|' \
      "$SRC/config.toml" >"$ETC/config.toml"
    grep -q '^key_file = "/etc/roomtranslate/api-key"$' "$ETC/config.toml" \
      || die "the template has no api key_file example line"
  else
    say "keeping $ETC/config.toml"
  fi
  chown "0:$GID_N" "$ETC/config.toml"
  chmod 0640 "$ETC/config.toml"
  local key="$ETC/api-key"
  if [ ! -s "$key" ] && [ -n "${DASHSCOPE_API_KEY:-}" ]; then
    say "writing the API key from DASHSCOPE_API_KEY to $key"
    (umask 077; printf '%s\n' "$DASHSCOPE_API_KEY" >"$key")
  elif [ ! -e "$key" ]; then
    (umask 077; : >"$key")
  fi
  chown "0:$GID_N" "$key"
  chmod 0640 "$key"
  [ -s "$key" ] || KEY_MISSING=1
  install -d -m 0750 -o "$UID_N" -g "$GID_N" "$STATE"
}

# -- the local broker ----------------------------------------------------------------------

env_value() {  # env_value NAME -> its value in the environment file ("" if none)
  [ -f "$ENV_FILE" ] || return 0
  sed -n "s/^$1=//p" "$ENV_FILE" | tail -n 1
}

set_env_value() {  # set_env_value NAME VALUE: replace or add the line, keep the others
  local tmp
  tmp="$(mktemp "$ETC/.environment.XXXXXX")"
  if [ -f "$ENV_FILE" ]; then grep -v "^$1=" "$ENV_FILE" >"$tmp" || true; fi
  printf '%s=%s\n' "$1" "$2" >>"$tmp"
  chmod 0600 "$tmp"
  mv "$tmp" "$ENV_FILE"
}

new_password() { head -c 18 /dev/urandom | base64 | tr -d '/+=\n'; }

install_broker() {
  ensure_packages "${BROKER_PACKAGES[@]}"
  local room_pw display_pw address
  room_pw="$(env_value ROOMTRANSLATE_MQTT__PASSWORD)"
  [ -n "$room_pw" ] || room_pw="$(new_password)"
  set_env_value ROOMTRANSLATE_MQTT__USERNAME roomtranslate
  set_env_value ROOMTRANSLATE_MQTT__PASSWORD "$room_pw"
  display_pw=""
  [ -f "$ETC/broker-display-password" ] && display_pw="$(cat "$ETC/broker-display-password")"
  if [ -z "$display_pw" ]; then
    display_pw="$(new_password)"
    (umask 077; printf '%s\n' "$display_pw" >"$ETC/broker-display-password")
  fi
  mkdir -p "$(dirname "$MOSQ_CONF")"
  address=" 127.0.0.1"
  if [ "$LISTEN" = lan ]; then address=""; fi
  (umask 027
    : >"$MOSQ_PASSWD.new"
    mosquitto_passwd -b "$MOSQ_PASSWD.new" roomtranslate "$room_pw"
    mosquitto_passwd -b "$MOSQ_PASSWD.new" display "$display_pw"
    mv "$MOSQ_PASSWD.new" "$MOSQ_PASSWD"
    cat >"$MOSQ_ACL" <<EOF
# roomtranslate: the daemon publishes its room's topics; displays only read them.
user roomtranslate
topic readwrite roomtranslate/#
# Home Assistant discovery (docs/mqtt.md: remote configuration)
topic write homeassistant/device/#
topic read homeassistant/status

user display
topic read roomtranslate/#
EOF
    cat >"$MOSQ_CONF" <<EOF
# Written by roomtranslate's scripts/install.sh --with-broker --broker-listen $LISTEN
listener $BROKER_PORT$address
allow_anonymous false
password_file ${MOSQ_PASSWD}
acl_file ${MOSQ_ACL}
EOF
  )
  chmod 0644 "$MOSQ_CONF"  # no secret in it; Mosquitto re-reads it as its own user
  if getent group mosquitto >/dev/null && [ -z "$ROOT" ]; then
    chgrp mosquitto "$MOSQ_PASSWD" "$MOSQ_ACL"
  fi
  local where="127.0.0.1 (this device only)"
  if [ "$LISTEN" = lan ]; then where="all interfaces (the LAN)"; fi
  say "broker: Mosquitto on $where, port $BROKER_PORT; users roomtranslate (password in" \
    "$ENV_FILE) and display (read-only, password in $ETC/broker-display-password)"
  if systemd_running; then
    systemctl enable -q mosquitto
    systemctl restart mosquitto
  fi
}

# -- the unit ------------------------------------------------------------------------------

install_unit() {
  install -D -m 0644 "$SRC/systemd/roomtranslate.service" "$UNIT"
  if systemd_offline; then
    systemctl enable -q roomtranslate || die "systemctl enable roomtranslate failed"
    say "systemd is not running here (a chroot or a container): the unit is installed at" \
      "$UNIT and enabled, not started; it starts at the next boot"
    [ "${KEY_MISSING:-0}" = 0 ] || say "put the API key in /etc/roomtranslate/api-key before then"
    return 0
  fi
  if ! systemd_running; then
    say "systemd is not running here: the unit is installed at $UNIT but not enabled or" \
      "started (on the device: systemctl enable --now roomtranslate)"
    return 0
  fi
  systemctl daemon-reload
  systemctl enable -q roomtranslate
  if [ "${KEY_MISSING:-0}" = 1 ]; then
    say "enabled, not started: put the API key in /etc/roomtranslate/api-key (one line)," \
      "then: systemctl restart roomtranslate"
    return 0
  fi
  systemctl restart roomtranslate
  say "started: systemctl status roomtranslate, journalctl -u roomtranslate -f"
}

# -- uninstall -----------------------------------------------------------------------------

uninstall() {
  if systemd_running; then
    systemctl disable -q --now roomtranslate 2>/dev/null || true
  elif systemd_offline; then
    systemctl disable -q roomtranslate 2>/dev/null || true
  fi
  rm -f "$UNIT"
  if systemd_running; then systemctl daemon-reload; fi
  rm -rf "$APP"
  say "removed the service and $APP"
  if [ "$PURGE" = 1 ]; then
    rm -rf "$ETC" "$STATE"
    if [ -f "$MOSQ_CONF" ]; then
      rm -f "$MOSQ_CONF" "$MOSQ_PASSWD" "$MOSQ_ACL"
      if systemd_running; then systemctl restart mosquitto; fi
    fi
    local root_opt=()
    if [ -n "$ROOT" ]; then root_opt=(--root "$ROOT"); fi
    if [ -n "$(account_id passwd "$USER_NAME")" ]; then
      userdel "${root_opt[@]}" "$USER_NAME"
    fi
    if [ -n "$(account_id group "$USER_NAME")" ]; then
      groupdel "${root_opt[@]}" "$USER_NAME"
    fi
    say "purged the configuration, the state, the broker settings and the user"
  else
    say "kept $ETC and $STATE (--purge removes them)"
  fi
}

if [ "$ACTION" = uninstall ]; then
  uninstall
  exit 0
fi
ensure_packages "${DEVICE_PACKAGES[@]}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python 3.11 or newer needed"
ensure_user
install_app
install_config
if [ "$BROKER" = 1 ]; then install_broker; fi
install_unit
say "done. Before leaving the room: roomtranslate check (docs/operator.md: checking a room)"
