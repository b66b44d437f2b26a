"""Certainty labels from readers' visual analogue scale (VAS) scores, as the LGE QA study defines them.

Each reader scores a slice 0-100 for how likely LGE is present (0 = certainly absent,
100 = certainly present). A slice is **high certainty** when every reader who scored it is on the
same clear side: all at or below the low bound (default 20: clearly no LGE) or all at or above
the high bound (default 80: clearly LGE). Anything else is **low certainty**: at least one reader
hesitated (a score between the bounds) or the readers disagreed across the middle (one <= 20,
one >= 80), which is the case a technologist should act on while the patient is in the scanner.

Missing scores (None or NaN, a reader who did not score the slice) are left out; a slice no
reader scored has no label (`ValueError`). Scores outside 0-100 are an error. The bounds are
configurable (`VasBounds`), and are written into the model card.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

HIGH_CERTAINTY = "high_certainty"
LOW_CERTAINTY = "low_certainty"
LABELS: tuple[str, str] = (HIGH_CERTAINTY, LOW_CERTAINTY)
#: index of the positive class (the network's logit is the log-odds of low certainty)
POSITIVE_INDEX = 1


@dataclass(frozen=True)
class VasBounds:
    """Clear-absent at or below `low`, clear-present at or above `high` (VAS, 0-100)."""

    low: float = 20.0
    high: float = 80.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(f"VAS bounds need 0 <= low < high <= 100, got {self.low}, {self.high}")


def _scores(scores: Iterable[float | None]) -> list[float]:
    out = []
    for s in scores:
        if s is None or (isinstance(s, float) and math.isnan(s)):
            continue
        value = float(s)
        if not 0.0 <= value <= 100.0:
            raise ValueError(f"VAS score {value} outside 0-100")
        out.append(value)
    if not out:
        raise ValueError("no reader scored this slice")
    return out


def certainty_label(scores: Iterable[float | None], bounds: VasBounds = VasBounds()) -> str:
    """`high_certainty` when all readers are clearly absent or all clearly present, else `low_certainty`."""
    values = _scores(scores)
    if all(v <= bounds.low for v in values) or all(v >= bounds.high for v in values):
        return HIGH_CERTAINTY
    return LOW_CERTAINTY


def is_low_certainty(scores: Iterable[float | None], bounds: VasBounds = VasBounds()) -> int:
    """1 for a low-certainty slice (the positive class), 0 for high certainty."""
    return int(certainty_label(scores, bounds) == LOW_CERTAINTY)


def describe(bounds: VasBounds = VasBounds()) -> str:
    """The labelling rule in one sentence, for the model card."""
    return (
        f"High certainty when every reader's VAS (0-100) is <= {bounds.low:g} (clearly no LGE) "
        f"or every reader's VAS is >= {bounds.high:g} (clearly LGE); low certainty otherwise "
        "(a reader between the bounds, or readers on opposite sides). Missing scores are ignored."
    )
