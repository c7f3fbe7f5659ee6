"""Paired statistics over documents: two configurations scored on the same documents are compared
through their per-document differences, so that what the documents share (how hard each one is) cancels.

- ``paired_difference``: the mean per-document difference, its standard error, a bootstrap interval and
  a three-way decision: ``better`` (the interval lies above 0), ``worse`` (below 0) or ``undecided``
  (it contains 0: these documents cannot tell). ``find``'s validation uses it.
- ``win_back``: the share of a damage undone, (Σ steered − Σ damaged) / (Σ intact − Σ damaged) over the
  same documents, with a bootstrap interval that resamples documents (numerator and denominator together).

Intervals: ``lm_eval_ssmsteer.stats``'s document bootstrap (the one the reports use) at LEVEL, 90%: a
validation decision is one-sided in use (is the gain above 0?), so 90% two-sided is a 5% one-sided test.
With few documents such an interval is too narrow rather than too wide; the number of documents is
reported beside every interval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from lm_eval_ssmsteer import stats

LEVEL = 0.90
BETTER, WORSE, UNDECIDED = "better", "worse", "undecided"


def _ratio(gain: np.ndarray, gap: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(gain, axis=axis) / np.sum(gap, axis=axis)


def _bounds(interval: tuple[float, float] | None) -> tuple[float, float]:
    return (float("nan"), float("nan")) if interval is None else interval


@dataclass(frozen=True)
class PairedDifference:
    """mean of (after - before) per document, with its spread; positive = ``after`` is larger."""

    n: int
    mean: float
    se: float
    low: float
    high: float
    larger: int  # documents where after > before
    smaller: int  # documents where after < before
    decision: str  # BETTER / WORSE / UNDECIDED, for "larger is better"

    def as_dict(self) -> dict:
        return {**asdict(self), "level": LEVEL, "resamples": stats.RESAMPLES}


def paired_difference(before: torch.Tensor, after: torch.Tensor) -> PairedDifference:
    """Per-document ``after - before`` (both (docs,), the same documents in the same order); the decision
    reads "larger is better" (pass gains, e.g. loss before minus loss after, as ``after``)."""
    if before.shape != after.shape or before.dim() != 1:
        raise ValueError(
            f"paired scores need two (docs,) tensors of one shape; got {before.shape} and {after.shape}"
        )
    d = (after.double() - before.double()).cpu()
    n = d.numel()
    if n < 2:
        raise ValueError(f"a paired comparison needs at least 2 documents; got {n}")
    low, high = _bounds(stats.bootstrap_interval([d.numpy()], stats.mean, LEVEL))
    decision = BETTER if low > 0 else WORSE if high < 0 else UNDECIDED
    return PairedDifference(
        n=n,
        mean=float(d.mean()),
        se=float(d.std() / n**0.5),
        low=low,
        high=high,
        larger=int((d > 0).sum()),
        smaller=int((d < 0).sum()),
        decision=decision,
    )


@dataclass(frozen=True)
class WinBack:
    n: int
    value: float | None  # None when the damage is 0 on these documents
    low: float
    high: float

    def as_dict(self) -> dict:
        return {**asdict(self), "level": LEVEL, "resamples": stats.RESAMPLES}


def win_back(intact: torch.Tensor, damaged: torch.Tensor, steered: torch.Tensor) -> WinBack:
    """Share of the damage undone on the same documents (scores where larger is better, e.g. correctness):
    (Σ steered − Σ damaged) / (Σ intact − Σ damaged), with a document bootstrap interval."""
    intact, damaged, steered = (t.double().cpu() for t in (intact, damaged, steered))
    n = intact.numel()
    gap = float((intact - damaged).sum())
    if abs(gap) < 1e-12:
        return WinBack(n, None, float("nan"), float("nan"))
    gain, lost = (steered - damaged).numpy(), (intact - damaged).numpy()
    # documents resampled together in both sums; a resample whose damage sums to 0 is left out
    low, high = _bounds(stats.bootstrap_interval([gain, lost], _ratio, LEVEL, paired=True))
    return WinBack(n, float((steered - damaged).sum()) / gap, low, high)
