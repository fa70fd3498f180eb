"""`--segmenter KEY=VALUE` for the benches: segmenter settings changed from the command
line (repeatable), checked as the config file's [segmenter] section is."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pydantic import ValidationError

from daemon.config import SegmenterSettings

OPTION = "--segmenter"


def add_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        OPTION,
        metavar="KEY=VALUE",
        action="append",
        default=[],
        type=_pair,
        help=f"a [segmenter] setting changed for {what} (repeatable), e.g. split_after_s=2",
    )


def settings(
    parser: argparse.ArgumentParser,
    pairs: Sequence[tuple[str, str]],
    base: SegmenterSettings | None = None,
) -> SegmenterSettings:
    """`base` (the defaults) with `pairs` changed; a bad key or value ends the program
    with the field and the reason."""
    fields = (base or SegmenterSettings()).model_dump(exclude_unset=True)
    try:
        return SegmenterSettings.model_validate({**fields, **dict(pairs)})
    except ValidationError as e:
        reasons = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'segmenter'}: {err['msg']}" for err in e.errors()
        )
        parser.error(f"{OPTION}: {reasons}")


def label(pairs: Sequence[tuple[str, str]]) -> str:
    return " ".join(f"{key}={value}" for key, value in pairs)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key.strip(), value.strip()
