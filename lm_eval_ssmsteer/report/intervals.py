"""95% intervals of scores and of their differences: for proportions the Wilson score interval, and
Newcombe's interval for a difference of two; otherwise value ± 1.96·stderr.

A score counts as a proportion when it is a mean over its n documents of per-document scores in [0, 1]
(acc, exact_match, the per-length scores of RULER-style tasks): its value lies in [0, 1], n is known, and
lm-eval's stderr, where it reports one, is no larger than that of 0/1 scores, √(p(1−p)/(n−1)). For 0/1
scores the Wilson interval is the usual score interval; for other scores in [0, 1] it is conservative
(their variance is at most p(1−p)). Unlike p ± 1.96·stderr it stays inside [0, 1], and it keeps its
width at p = 0 and p = 1, where the stderr is 0 however few documents there were. Newcombe's hybrid
score interval (his method 10) combines the two Wilson intervals into one for p_a − p_b, with the same
virtues: 4 of 4 against 4 of 4 is not a gain of 0 ± 0.
"""

from __future__ import annotations

import math

from lm_eval_ssmsteer.report.results import Score

Z_95 = 1.96
WILSON = "Wilson score interval"
NEWCOMBE = "Newcombe's interval from the two Wilson intervals"
NORMAL = "±1.96·stderr"


def wilson(p: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` observed on ``n`` documents."""
    if n < 1:
        raise ValueError(f"a proportion needs at least one document, got n={n}")
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
    # the interval always holds p; min/max only undo rounding at p = 0 and p = 1
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def is_proportion(score: Score) -> bool:
    if score.n is None or score.n < 1 or not 0.0 <= score.value <= 1.0:
        return False
    if score.stderr is None or score.n == 1:
        return True
    binomial = math.sqrt(score.value * (1 - score.value) / (score.n - 1))
    return score.stderr <= binomial * 1.01 + 1e-4  # slack for stderrs rounded on the way


def interval(score: Score) -> tuple[float, float, str] | None:
    """(low, high, which interval) at 95%; None when neither n nor a stderr tells the spread."""
    if is_proportion(score):
        return (*wilson(score.value, score.n), WILSON)
    if score.stderr is not None:
        return score.value - Z_95 * score.stderr, score.value + Z_95 * score.stderr, NORMAL
    return None


def difference(a: Score, b: Score) -> tuple[float, float, str] | None:
    """(low, high, which interval) of a − b at 95%, the two scores taken as independent samples; None
    when the spread of either is unknown."""
    d = a.value - b.value
    if is_proportion(a) and is_proportion(b):
        low_a, high_a = wilson(a.value, a.n)
        low_b, high_b = wilson(b.value, b.n)
        return (
            d - math.hypot(a.value - low_a, high_b - b.value),
            d + math.hypot(high_a - a.value, b.value - low_b),
            NEWCOMBE,
        )
    if a.stderr is not None and b.stderr is not None:
        half_width = Z_95 * math.hypot(a.stderr, b.stderr)
        return d - half_width, d + half_width, NORMAL
    return None
