"""The README and docs/: every relative link resolves, and the README opens with the commands
that CI and the demo use. Fast: reads files only."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from scripts.paths import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
PAGES = [README, *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^ *```.*?^ *```[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text outside fenced code blocks (a `# comment` in a shell block is no heading)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    words = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return words.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for heading in HEADING.findall(prose(page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    text = INLINE_CODE.sub("", prose(page.read_text()))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(PROJECT_ROOT).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A section: `code` (here)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n[ok](other.md#a-section-code-here) [ok](#title) [web](https://x.org/y)\n"
        "[gone](missing.md) [bad](other.md#nowhere) [bad](#untitled)\n"
        "```sh\n# not a heading\n[not](a-link.md)\n```\n"
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#nowhere: no heading #nowhere in other.md",
        "#untitled: no heading #untitled in page.md",
    ]


def first_code_block_commands(text: str) -> list[str]:
    match = FENCE.search(text)
    assert match, "the README has no code block"
    lines = match.group(0).splitlines()[1:-1]
    return [line.split("#")[0].split()[0] for line in lines if line.split("#")[0].strip()]


def test_readme_opens_with_the_two_commands() -> None:
    assert first_code_block_commands(README.read_text()) == ["scripts/start.sh", "scripts/test.sh"]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    commands = [line.split() for line in ci.splitlines() if line and not line.startswith("#")]
    assert ["exec", "scripts/test.sh", "-q"] in commands


def test_the_demo_entry_exists() -> None:
    start = PROJECT_ROOT / "scripts" / "start.sh"
    assert os.access(start, os.X_OK), start
    demo = re.search(r"python (scripts/\S+\.py)", start.read_text())
    assert demo, "scripts/start.sh starts no demo"
    assert (PROJECT_ROOT / demo.group(1)).is_file()


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) < README_MAX_LINES
