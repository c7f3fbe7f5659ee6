"""Paired comparisons: two runs scored on the same documents, compared document by document.

Steered and unsteered runs of one task score the same documents, so the difference of their means is the
mean of per-document differences, and its spread is that of the differences: documents that both runs
get right (or wrong) add nothing to it. Compared as independent samples (``intervals.difference``, or
``√(se_a² + se_b²)``) the same two runs get an interval several times wider.

- the difference: mean over documents of current − baseline;
- its 95% interval: the percentile bootstrap of that mean (``lm_eval_ssmsteer.stats``, documents
  resampled with replacement, a fixed seed so that reports are reproducible); for an average over tasks,
  each task's documents are resampled on their own (a stratified bootstrap);
- its p-value: the exact two-sided sign test on the documents whose score changed (``scipy.stats.binomtest``
  with p = 1/2). For 0/1 scores this is the exact McNemar test; for other scores it counts which way each
  document moved and ignores by how much;
- over many comparisons (a sweep: runs × tasks), Holm's step-down correction of the p-values, which keeps
  the chance of any false "significant" at 5% however many comparisons a report makes.

Documents are paired by lm-eval's document id, and only when both runs hashed every document, prompt and
target alike: a run of another task version, other documents or another ``--limit`` is refused, naming the
first document that differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from lm_eval_ssmsteer.report.documents import HASH_FIELDS, DocumentScores
from lm_eval_ssmsteer.stats import bootstrap_interval, mean

CONFIDENCE = 0.95
MCNEMAR = "McNemar"
SIGN = "sign"
PAIRED = "95% paired bootstrap interval"


class DocumentsDiffer(ValueError):
    """Two runs' documents cannot be paired; the message names the task, the document and the files."""


@dataclass(frozen=True)
class PairedDifference:
    """current − baseline over ``n`` paired documents: the mean, its 95% bootstrap interval (None when
    fewer than 2 documents), how many documents went up and down, and the exact test's p-value (None for
    an average over tasks, which has no single test)."""

    n: int
    mean: float
    low: float | None
    high: float | None
    up: int
    down: int
    test: str | None = None
    p_value: float | None = None
    p_holm: float | None = None

    @property
    def unchanged(self) -> bool:
        """No document changed its score."""
        return self.up == 0 and self.down == 0

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def two_sided_level(z: float) -> float:
    """The two-sided significance level a normal quantile stands for: 0.05 for z = 1.96."""
    return float(2 * stats.norm.sf(z))


def exact_sign_test(up: int, down: int) -> float:
    """Two-sided p-value of ``up`` documents that went up against ``down`` that went down, under "either
    way is as likely" (the exact McNemar test for 0/1 scores); 1 when none changed."""
    if up + down == 0:
        return 1.0
    return float(stats.binomtest(up, up + down, 0.5).pvalue)


def paired_difference(baseline: np.ndarray, current: np.ndarray) -> PairedDifference:
    """current − baseline of scores aligned by document."""
    diffs = np.asarray(current, float) - np.asarray(baseline, float)
    up, down = int(np.sum(diffs > 0)), int(np.sum(diffs < 0))
    binary = set(np.unique(baseline)) | set(np.unique(current)) <= {0.0, 1.0}
    interval = bootstrap_interval([diffs], mean, CONFIDENCE)
    low, high = (None, None) if interval is None else interval
    return PairedDifference(
        n=len(diffs),
        mean=float(np.mean(diffs)),
        low=low,
        high=high,
        up=up,
        down=down,
        test=MCNEMAR if binary else SIGN,
        p_value=exact_sign_test(up, down),
    )


def paired_average(tasks: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]]) -> PairedDifference:
    """The difference of averages over tasks (a task's columns, e.g. its lengths, averaged first), each
    column a (baseline, current) pair aligned by document; its interval resamples each column's documents
    on their own."""
    diffs = [np.asarray(cur, float) - np.asarray(base, float) for columns in tasks for base, cur in columns]
    owner = [t for t, columns in enumerate(tasks) for _ in columns]

    def mean_of_task_means(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        means = [np.mean(s, axis=axis) for s in samples]
        per_task = [
            np.mean([m for m, t in zip(means, owner, strict=True) if t == task], axis=0)
            for task in range(len(tasks))
        ]
        return np.mean(per_task, axis=0)

    interval = bootstrap_interval(diffs, mean_of_task_means, CONFIDENCE)
    low, high = (None, None) if interval is None else interval
    return PairedDifference(
        n=sum(len(d) for d in diffs),
        mean=float(mean_of_task_means(*diffs)),
        low=low,
        high=high,
        up=sum(int(np.sum(d > 0)) for d in diffs),
        down=sum(int(np.sum(d < 0)) for d in diffs),
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest p times (m − i + 1),
    kept non-decreasing, at most 1."""
    p = np.asarray(p_values, float)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    out = np.empty(len(p))
    out[order] = adjusted
    return out.tolist()


def with_holm(differences: Sequence[PairedDifference | None]) -> list[PairedDifference | None]:
    """The differences with their Holm-adjusted p-values, the family being every difference given that has
    a p-value."""
    tested = [i for i, d in enumerate(differences) if d is not None and d.p_value is not None]
    adjusted = holm([differences[i].p_value for i in tested])
    out = list(differences)
    for i, p in zip(tested, adjusted, strict=True):
        out[i] = replace(differences[i], p_holm=p)
    return out


def check_same_documents(
    baseline: DocumentScores, current: DocumentScores, *, task: str, versions: tuple[object, object]
) -> None:
    """DocumentsDiffer, naming the task, its versions, the first document that differs and both files,
    unless both runs scored the same documents with the same prompts and targets."""
    base_version, cur_version = versions
    where = f"task '{task}' (task version {_versions(base_version, cur_version)})"
    if base_version != cur_version:
        raise DocumentsDiffer(
            f"{where}: the task changed between {baseline.source} and {current.source}; pair runs of one task"
        )
    only_base = sorted(set(baseline.hashes) - set(current.hashes))
    only_cur = sorted(set(current.hashes) - set(baseline.hashes))
    if only_base or only_cur:
        raise DocumentsDiffer(
            f"{where}: the runs scored different documents: {len(baseline.hashes)} in {baseline.source}, "
            f"{len(current.hashes)} in {current.source}; only in the first: {_ids(only_base)}, only in the "
            f"second: {_ids(only_cur)} (a different --limit or number of documents?)"
        )
    for doc_id in sorted(baseline.hashes):
        for field, a, b in zip(HASH_FIELDS, baseline.hashes[doc_id], current.hashes[doc_id], strict=True):
            if a != b:
                raise DocumentsDiffer(
                    f"{where}: document {doc_id} differs: {field} {a[:12]} in {baseline.source}, {b[:12]} in "
                    f"{current.source}; paired statistics need the same documents, prompts and targets"
                )


def align(
    baseline: DocumentScores,
    current: DocumentScores,
    key: str,
    *,
    task: str,
    versions: tuple[object, object],
) -> tuple[np.ndarray, np.ndarray] | None:
    """Both runs' scores on ``key`` ("metric,filter") as arrays in document order; None when either has
    no per-document number for it. DocumentsDiffer when the runs did not score the same documents."""
    check_same_documents(baseline, current, task=task, versions=versions)
    base, cur = baseline.values.get(key), current.values.get(key)
    if base is None or cur is None:
        return None
    if set(base) != set(cur):
        differ = _ids(sorted(set(base) ^ set(cur)))
        raise DocumentsDiffer(f"task '{task}': {key} was scored on different documents: {differ}")
    ids = sorted(base)
    return np.array([base[i] for i in ids]), np.array([cur[i] for i in ids])


def _versions(a: object, b: object) -> str:
    return str(a) if a == b else f"{a} vs {b}"


def _ids(ids: list[int]) -> str:
    if not ids:
        return "none"
    shown = ", ".join(map(str, ids[:8]))
    return shown + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
