"""Paired statistics over documents: two configurations scored on the same documents are compared
through their per-document differences, so that what the documents share (how hard each one is) cancels.

- ``paired_difference``: the mean per-document difference, its standard error, a bootstrap interval and
  a three-way decision: ``better`` (the interval lies above 0), ``worse`` (below 0) or ``undecided``
  (it contains 0: these documents cannot tell). ``find``'s validation uses it.
- ``win_back``: the share of a damage undone, (Σ steered − Σ damaged) / (Σ intact − Σ damaged) over the
  same documents, with a bootstrap interval that resamples documents (numerator and denominator together).

Bootstrap: BOOTSTRAP_DRAWS resamples of the documents with replacement (seed BOOTSTRAP_SEED), percentile
interval at LEVEL. With few documents such an interval is too narrow rather than too wide; the number of
documents is reported beside every interval.

Not yet one home: ``report/paired.py`` (issue 20, merged while this was written) pairs lm-eval runs the
same way (95%, scipy's bootstrap, a sign test). Folding the two into one module below both finder and
report is open (docs/finder.md, "Not done").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 0
LEVEL = 0.90
BETTER, WORSE, UNDECIDED = "better", "worse", "undecided"


def _resamples(n: int) -> torch.Tensor:
    """(BOOTSTRAP_DRAWS, n) document indices drawn with replacement, the same for every call of size n."""
    generator = torch.Generator().manual_seed(BOOTSTRAP_SEED)
    return torch.randint(0, n, (BOOTSTRAP_DRAWS, n), generator=generator)


def _interval(draws: torch.Tensor) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2
    finite = draws[torch.isfinite(draws)]
    if finite.numel() == 0:
        return float("nan"), float("nan")
    low, high = torch.quantile(finite.double(), torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(low), float(high)


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
        return {**asdict(self), "level": LEVEL}


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
    low, high = _interval(d[_resamples(n)].mean(1))
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
        return {**asdict(self), "level": LEVEL}


def win_back(intact: torch.Tensor, damaged: torch.Tensor, steered: torch.Tensor) -> WinBack:
    """Share of the damage undone on the same documents (scores where larger is better, e.g. correctness):
    (Σ steered − Σ damaged) / (Σ intact − Σ damaged), with a document bootstrap interval."""
    intact, damaged, steered = (t.double().cpu() for t in (intact, damaged, steered))
    n = intact.numel()
    gap = float((intact - damaged).sum())
    if abs(gap) < 1e-12:
        return WinBack(n, None, float("nan"), float("nan"))
    idx = _resamples(n)
    draws = (steered - damaged)[idx].sum(1) / (intact - damaged)[idx].sum(1)
    low, high = _interval(torch.where((intact - damaged)[idx].sum(1) == 0, float("nan"), draws))
    return WinBack(n, float((steered - damaged).sum()) / gap, low, high)
