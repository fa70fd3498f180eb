"""A short run of the fleet benchmark (scripts/bench_fleet.py): three rooms per fleet, one
of them a real daemon, over an account of 30 requests a minute. The figures of the real
run (20 rooms, 10 minutes) are in docs/testing.md; here the run must finish and show the
difference."""

from __future__ import annotations

import re

import pytest

from scripts.procs import run_script

pytestmark = pytest.mark.e2e


def row(out: str, label: str) -> tuple[str, str]:
    found = re.search(rf"^{re.escape(label)} +(.+?)  +(.+)$", out, re.M)
    assert found, out
    return found.group(1).strip(), found.group(2).strip()


def test_a_short_fleet_run_shows_the_shared_budget_against_per_room_backoff() -> None:
    options = "--rooms 3 --daemons 1 --minutes 0.6 --limit 30"
    result = run_script("bench_fleet.py", *options.split())
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    baseline, shared = row(out, "extra-language requests sent")
    assert int(shared) < int(baseline), out  # over the account, the extras go first
    sent, _ = row(out, "requests the service received")
    assert int(sent) > 0, out
    view = out[out.index("`roomtranslate fleet`") :]
    assert len(re.findall(r"^room-0\d +\S.* bench ", view, re.M)) == 3, view
    assert re.search(r"room-03 vanishes: the others count it out after \d", out), out
