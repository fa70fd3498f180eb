"""Debian's Chromium, headless, driven by Playwright (Python), for the caption display tests.

    with chromium(tmp_path) as context:
        page = context.new_page()
        page.goto(url)

Playwright's own browser downloads are never used: `executable_path` is the system
Chromium (`apt-get install chromium`, scripts/setup.sh). The flags keep Chromium off the
network (this machine reaches only package registries) and each run starts from a fresh
profile. Screenshots worth keeping go to `artifact_dir()` (test-artifacts/, or
$ROOMTRANSLATE_ARTIFACTS_DIR).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scripts.paths import PROJECT_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TV = {"width": 1920, "height": 1080}
PHONE = {"width": 390, "height": 844}


def missing() -> str:
    """Why the browser tests cannot run here ("" when they can)."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is not installed (scripts/setup.sh installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (scripts/setup.sh installs the dev extras)"
    return ""


@contextlib.contextmanager
def chromium(viewport: dict[str, int] | None = None) -> Iterator[Any]:
    """A fresh Chromium profile (its own --user-data-dir) as a Playwright BrowserContext."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                args=CHROMIUM_ARGS,
                headless=True,
                viewport=viewport or TV,
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def artifact_dir() -> Path:
    path = Path(os.environ.get("ROOMTRANSLATE_ARTIFACTS_DIR", PROJECT_ROOT / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
