"""A short run of the accelerated soak (scripts/soak.py): the live pipeline on a file at
100× real time, the simulator's faults cycling and the broker restarted, must account for
every utterance and exit 0. The real soak (24 h of room audio) is run by hand; its
figures are in docs/testing.md."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto missing"),
]


def test_a_short_soak_accounts_for_every_utterance() -> None:
    options = "--hours 0.25 --speed 100 --report-s 2 --fault-every-s 1 --broker-restart-s 3"
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "soak.py"), *options.split()],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    found = re.search(
        r"accounting: cut (\d+) = translated (\d+) \+ failed (\d+) \+ dropped (\d+) \((\d+)\)", out
    )
    assert found, out
    cut, translated, failed, dropped, total = map(int, found.groups())
    assert cut > 50 and total == cut == translated + failed + dropped, out
    assert failed > 0  # the faults did happen
    restarts = re.search(r"(\d+) broker restarts; (\d+) MQTT connects", out)
    assert restarts and int(restarts.group(1)) >= 1, out
    assert int(restarts.group(2)) > int(restarts.group(1)), out  # it reconnected each time
