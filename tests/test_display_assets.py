"""The caption display's files: vendored copies unchanged, licences beside them, text only."""

from __future__ import annotations

import hashlib
import re

from daemon.display import PAGE_DIR, page_files

VENDOR = PAGE_DIR / "vendor"


def vendored() -> list[tuple[str, str, str, str]]:
    rows = []
    for line in (VENDOR / "VENDORED").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, file, target, sha = line.split()
            rows.append((package, file, target, sha))
    return rows


def test_vendored_files_are_the_pinned_packages_files() -> None:
    rows = vendored()
    assert {package for package, *_ in rows} == {"mqtt@5.16.0", "qrcode-generator@2.0.4"}
    for _, _, target, sha in rows:
        assert hashlib.sha256((VENDOR / target).read_bytes()).hexdigest() == sha, target


def test_each_vendored_library_has_its_licence() -> None:
    assert "MIT License" in (VENDOR / "mqtt.LICENSE.md").read_text()
    qr_licence = (VENDOR / "qrcode-generator.LICENSE").read_text()
    assert "Kazuhiko Arase" in qr_licence and "MIT license" in qr_licence
    assert "Kazuhiko Arase" in (VENDOR / "qrcode.js").read_text()[:600]


def test_the_page_loads_only_its_own_files() -> None:
    html = (PAGE_DIR / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    local = [ref for ref in refs if not ref.startswith("data:")]
    assert local == ["display.css", "vendor/mqtt.min.js", "vendor/qrcode.js", "display.js"]
    files = {str(path) for path in page_files()}
    assert all(ref in files for ref in local)


def test_the_page_script_never_writes_html() -> None:
    script = (PAGE_DIR / "display.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "textContent" in script
