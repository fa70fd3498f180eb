"""Score segmenter clips against a human speech reference (RTTM speaker turns).

On a 10 ms grid over the file:
- miss: share of reference speech (the union of every speaker's turns) outside every clip;
- false alarm: clip time outside reference speech, as a share of reference speech;
- clips, and billed seconds (each clip billed at least `MIN_BILLED_S`);
- cut inside a turn: clips whose end lies more than `INSIDE_S` inside one speaker's turn
  (that speaker talks on for more than `INSIDE_S` after the cut, and had been talking for
  more than `INSIDE_S` before it): a sentence cut in the middle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

GRID_S = 0.01
MIN_BILLED_S = 1.0
INSIDE_S = 0.3

Span = tuple[float, float]


@dataclass(frozen=True)
class Turn:
    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class Score:
    miss: float  # share of reference speech
    false_alarm: float  # share of reference speech
    clips: int
    billed_s: float
    cut_inside: int  # clips ending > INSIDE_S inside a speaker's turn
    speech_s: float  # reference speech (union)

    def row(self) -> str:
        return (
            f"{self.miss * 100:>6.1f}%{self.false_alarm * 100:>7.1f}%{self.clips:>6}"
            f"{self.billed_s:>8.1f}{self.cut_inside:>6}"
        )


def read_rttm(path: Path, until_s: float | None = None) -> list[Turn]:
    """SPEAKER lines of an RTTM file (turns starting after `until_s` left out, cut there)."""
    turns: list[Turn] = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[0] != "SPEAKER":
            continue
        start, length = float(fields[3]), float(fields[4])
        end = start + length
        if until_s is not None:
            if start >= until_s:
                continue
            end = min(end, until_s)
        turns.append(Turn(start, end, fields[7]))
    return turns


def _mask(spans: Sequence[Span], cells: int) -> npt.NDArray[np.bool_]:
    mask = np.zeros(cells, dtype=bool)
    for start, end in spans:
        a = max(0, round(start / GRID_S))
        b = min(cells, round(end / GRID_S))
        if b > a:
            mask[a:b] = True
    return mask


def cut_inside(clips: Sequence[Span], turns: Sequence[Turn], inside_s: float = INSIDE_S) -> int:
    return sum(any(t.start + inside_s < end < t.end - inside_s for t in turns) for _, end in clips)


def score(clips: Sequence[Span], turns: Sequence[Turn], duration_s: float) -> Score:
    cells = round(duration_s / GRID_S)
    ref = _mask([(t.start, t.end) for t in turns], cells)
    hyp = _mask(clips, cells)
    speech = max(1, int(ref.sum()))
    miss = float((ref & ~hyp).sum()) / speech
    false_alarm = float((hyp & ~ref).sum()) / speech
    billed = sum(max(MIN_BILLED_S, end - start) for start, end in clips)
    return Score(miss, false_alarm, len(clips), billed, cut_inside(clips, turns), speech * GRID_S)
