"""Where the project and the shared recordings are (one place for every test helper)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# ../shared/audio beside the checkout, or $ROOMTRANSLATE_AUDIO_DIR.
AUDIO_DIR = Path(
    os.environ.get("ROOMTRANSLATE_AUDIO_DIR", PROJECT_ROOT.parent / "shared" / "audio")
)
