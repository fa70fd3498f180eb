#!/usr/bin/env bash
# Set up (scripts/setup.sh) and start roomtranslate:
# - with an API key and a sound card: the real daemon, `roomtranslate run` (Ctrl-C stops);
# - otherwise the demo (scripts/demo.py): the real daemon on a virtual microphone and
#   speaker, a local Mosquitto and the local service simulator, with live captions here.
# Arguments go to `roomtranslate run` or to the demo (e.g. --to de, --duration 60).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

has_key=$(.venv/bin/python -c '
from daemon.config import load_settings, resolve_api_key
print(1 if resolve_api_key(load_settings()) else 0)' 2>/dev/null || echo 0)
has_sound=0
if [ -s /proc/asound/cards ] && ! grep -q "no soundcards" /proc/asound/cards; then has_sound=1; fi

if [ "$has_key" = 1 ] && [ "$has_sound" = 1 ] && [ "${ROOMTRANSLATE_DEMO:-0}" != 1 ]; then
  echo "start: API key and sound card found: roomtranslate run"
  exec .venv/bin/roomtranslate run "$@"
fi
[ "$has_key" = 1 ] || echo "start: no API key (DASHSCOPE_API_KEY or api.key_file)"
[ "$has_sound" = 1 ] || echo "start: no sound card"
echo "start: running the demo (virtual devices, local broker, local service simulator)"
exec .venv/bin/python scripts/demo.py "$@"
