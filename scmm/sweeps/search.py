"""The learning-rate search rule, as a pure function of the points scored so far.

Points are integer exponents k of ``lr = start * factor**k``; a point's score is the median
validation BPC over its repeats (``inf`` when a repeat diverged and the median is infinite).
Keeping the rule pure makes it testable on a fake objective and lets the scheduler resume
from whatever ``sweep.jsonl`` already holds. A grid (``mode: grid``) is the degenerate rule:
its points are known in advance, so all of them may run at once (``points_to_run``).
"""

import math
import statistics
from typing import Mapping, Optional, Sequence

from .definition import LrSearch


def learning_rate(search: LrSearch, point: int) -> float:
    """The learning rate of exponent ``point``."""
    return float(search.start * search.factor**point)


def point_score(valid_bpcs: Sequence[float]) -> float:
    """Median validation BPC over repeats (a diverged repeat counts as +inf)."""
    values = [v if math.isfinite(v) else math.inf for v in valid_bpcs]
    return float(statistics.median(values)) if values else math.inf


def next_point(search: LrSearch, scores: Mapping[int, float]) -> Optional[int]:
    """The next exponent to run, or None when the search is over.

    Upward: from 0, keep multiplying while the highest point is within ``threshold`` of the
    best (a diverged point is never within it). Then, only if the best point is the lowest
    one tried (the optimum is at the edge), walk downward until a point is worse than the best.
    At most ``max_points`` points in all. A grid: its lowest point not yet scored.
    """
    if search.mode == "grid":
        return next((k for k in range(search.max_points) if k not in scores), None)
    if not scores:
        return 0
    if len(scores) >= search.max_points:
        return None
    best = min(scores.values())
    highest, lowest = max(scores), min(scores)
    if scores[highest] <= best + search.threshold and math.isfinite(scores[highest]):
        return highest + 1
    best_so_far = min(scores, key=lambda k: (scores[k], k))
    if best_so_far == lowest and math.isfinite(best):
        return lowest - 1
    return None


def points_to_run(search: LrSearch, scores: Mapping[int, float]) -> list[int]:
    """Every point that may run now: a search's next one (each depends on the scores before
    it), or all of a grid's points not yet scored."""
    if search.mode == "grid":
        return [k for k in range(search.max_points) if k not in scores]
    point = next_point(search, scores)
    return [] if point is None else [point]


def best_point(scores: Mapping[int, float]) -> Optional[int]:
    """The exponent with the lowest finite score (ties: the lower learning rate)."""
    finite = {k: v for k, v in scores.items() if math.isfinite(v)}
    if not finite:
        return None
    return min(finite, key=lambda k: (finite[k], k))
