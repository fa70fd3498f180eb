"""`--segmenter KEY=VALUE` of the benches (scripts/segmenter_arg.py)."""

from __future__ import annotations

import argparse

import pytest

from daemon.config import SegmenterSettings
from scripts import segmenter_arg


def parse(*argv: str) -> SegmenterSettings:
    parser = argparse.ArgumentParser()
    segmenter_arg.add_argument(parser, "the test")
    args = parser.parse_args(list(argv))
    return segmenter_arg.settings(parser, args.segmenter)


def test_settings_are_changed_and_the_rest_stays_default() -> None:
    s = parse("--segmenter", "split_after_s=2", "--segmenter", "split_pause_ms = 300")
    assert (s.split_after_s, s.split_pause_ms) == (2.0, 300)
    assert s.model_dump(
        exclude={"split_after_s", "split_pause_ms"}
    ) == SegmenterSettings().model_dump(exclude={"split_after_s", "split_pause_ms"})


def test_no_option_is_the_default() -> None:
    assert parse() == SegmenterSettings()


@pytest.mark.parametrize(
    ("arg", "reason"),
    [
        ("split_after_s", "is not KEY=VALUE"),
        ("nonsense=1", "nonsense: Extra inputs are not permitted"),
        ("split_after_s=soon", "split_after_s: Input should be a valid number"),
        ("split_search_s=20", "split_search_s: Input should be less than or equal to 10"),
    ],
)
def test_a_bad_setting_exits_2_with_the_field_and_reason(
    arg: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("--segmenter", arg)
    assert exited.value.code == 2
    assert reason in capsys.readouterr().err
