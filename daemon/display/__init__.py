"""The reference caption display: a static page shipped inside the package.

    index.html display.css display.js   the page (no build step)
    vendor/                             pinned npm dist files with their licences (VENDORED)
    install.py                          `roomtranslate display-config`: Mosquitto serves it

The page connects to the broker over MQTT-over-WebSockets; Mosquitto serves the page
itself from the same listener (`http_dir`).
"""

from __future__ import annotations

from pathlib import Path

PAGE_DIR = Path(__file__).resolve().parent
_NOT_PAGE = {".py", ".pyc", ".pyi"}


def page_files() -> list[Path]:
    """The page's files, relative to PAGE_DIR (the Python modules beside it excluded)."""
    return sorted(
        path.relative_to(PAGE_DIR)
        for path in PAGE_DIR.rglob("*")
        if path.is_file() and path.suffix not in _NOT_PAGE and "__pycache__" not in path.parts
    )
