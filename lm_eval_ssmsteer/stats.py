"""The document bootstrap: the one resampling behind every interval the project reports over documents
(``find``'s validation, the plant survey's win-back, the reports' paired differences).

Percentile bootstrap: RESAMPLES resamples of the documents with replacement from a generator seeded with
SEED, the statistic computed on each, the interval the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
quantiles of those values. Two ways to resample several samples:

- ``paired=False`` (stratified): each sample is resampled on its own, as the columns of an average over
  tasks, which hold different documents;
- ``paired=True``: every sample is indexed by the same draw, as the numerator and denominator of a ratio
  over the same documents (win-back), which must move together.

A resample whose statistic is not finite (a ratio whose denominator sums to 0 there) is left out of the
quantiles. With few documents a percentile interval is too narrow rather than too wide; callers report
the number of documents beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

RESAMPLES = 10_000
SEED = 0
_BATCH = 1_000  # resamples drawn at once: memory stays at _BATCH x documents per sample


def mean(sample: np.ndarray, axis: int = -1) -> np.ndarray:
    """The mean over documents, as ``bootstrap_interval`` calls a statistic."""
    return np.mean(sample, axis=axis)


def bootstrap_interval(
    samples: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray],
    confidence: float,
    *,
    paired: bool = False,
) -> tuple[float, float] | None:
    """The ``confidence`` percentile bootstrap interval of ``statistic(*samples, axis=-1)`` (vectorized
    over a leading axis of resamples); None when a sample has fewer than 2 documents (nothing to
    resample) or no resample gave a finite value."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: {confidence!r}; allowed: a number strictly between 0 and 1")
    samples = [np.asarray(s, dtype=float) for s in samples]
    if not samples or any(s.ndim != 1 or len(s) < 2 for s in samples):
        return None
    if paired and len({len(s) for s in samples}) != 1:
        raise ValueError(f"paired samples need one length; got {[len(s) for s in samples]}")
    rng = np.random.default_rng(SEED)
    values = []
    for start in range(0, RESAMPLES, _BATCH):
        size = min(_BATCH, RESAMPLES - start)
        if paired:
            idx = rng.integers(0, len(samples[0]), size=(size, len(samples[0])))
            drawn = [s[idx] for s in samples]
        else:
            drawn = [s[rng.integers(0, len(s), size=(size, len(s)))] for s in samples]
        with np.errstate(divide="ignore", invalid="ignore"):
            values.append(np.asarray(statistic(*drawn, axis=-1), dtype=float))
    found = np.concatenate(values)
    found = found[np.isfinite(found)]
    if found.size == 0:
        return None
    tail = (1 - confidence) / 2
    low, high = np.quantile(found, [tail, 1 - tail])
    return float(low), float(high)
