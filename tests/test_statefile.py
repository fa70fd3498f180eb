"""State files: a file nested however deep is set aside, never a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.budget import Budget
from daemon.counters import Counters
from daemon.statefile import MAX_DEPTH, read_json, write_json


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 1500 + b"]" * 1500,
        b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"a": ' + b'{"b": ' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH + b"}",
    ],
    ids=["arrays-1500", "object-with-arrays-5000", "objects-past-the-limit"],
)
def test_a_deeply_nested_file_is_set_aside(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "room-config.json"
    path.write_bytes(content)
    loaded = read_json(path)
    assert loaded.data is None and "set aside as room-config.json.corrupt-" in loaded.problem
    aside = list(tmp_path.glob("room-config.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content
    assert not path.exists()


def test_a_file_at_the_depth_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    nested: dict[str, object] = {"leaf": 1}
    for _ in range(MAX_DEPTH - 1):
        nested = {"n": nested}
    write_json(path, nested)
    assert read_json(path).data == nested


def test_the_budget_starts_on_a_deeply_nested_file(tmp_path: Path) -> None:
    (tmp_path / "budget.json").write_bytes(b"[" * 1500 + b"]" * 1500)
    counters = Counters()
    budget = Budget(lambda: 0.0, tmp_path, counters, today=lambda: "2026-12-02")
    assert budget.used_s == 0.0
    assert "set aside as budget.json.corrupt-" in budget.snapshot()["state_file"]
    assert counters.get("budget_state_file_problems") == 1
