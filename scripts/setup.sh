#!/usr/bin/env bash
# Install everything roomtranslate needs on Debian 12 / Raspberry Pi OS Bookworm:
# Debian packages (PortAudio, PulseAudio for the virtual rig, Mosquitto, systemd headers,
# Chromium for the display tests)
# and the project's virtual environment in .venv with roomtranslate and its test tools.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc pkg-config libsystemd-dev
  libportaudio2 libsndfile1 libasound2-plugins alsa-utils pulseaudio sox
  mosquitto mosquitto-clients espeak-ng
  python3-systemd  # what scripts/install.sh links into the device's venv (tests/test_install.py)
  python3-seccomp  # tests/sandbox_exec.py: the unit's system call filter without systemd
  chromium fonts-droid-fallback  # the caption display's tests: headless Chromium, CJK glyphs
  debootstrap  # tests/test_install_fresh.py: scripts/install.sh on a fresh Debian 12 (chroot)
)
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian mosquitto service is not wanted: the daemon's demo and tests start their own.

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.roomtranslate-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing roomtranslate into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
echo "setup: ready ($(.venv/bin/roomtranslate --version))"
