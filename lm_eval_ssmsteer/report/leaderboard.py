"""The leaderboard: one row per (model, steering spec), one column per task (per length for RULER-style
tasks), the average, the gain over the same model unsteered with a 95% interval, and the rank.

A gain's interval treats the two runs as independent samples (intervals.difference): Newcombe's interval
where both scores are proportions, else ``1.96 * sqrt(se_a**2 + se_b**2)`` from lm-eval's standard
errors. Where neither is known the interval is unknown and shown as such, never as zero.

Rows may have evaluated different numbers of documents (lm-eval's ``--limit``): every score carries its
n, and the leaderboard's ``warnings`` say where rows of different n are compared.

Given a baseline run, every other row also gets its paired difference from it on the same documents
(``paired``): per task column, and for the average.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from lm_eval_ssmsteer.report.intervals import difference
from lm_eval_ssmsteer.report.paired import (
    PairedDifference,
    align,
    paired_average,
    paired_difference,
    with_holm,
)
from lm_eval_ssmsteer.report.results import (
    MetricKey,
    ResultsError,
    Run,
    Score,
    TaskResult,
    format_limit,
    merge_runs,
)


@dataclass(frozen=True)
class Column:
    task: str
    key: MetricKey
    higher_is_better: bool

    @property
    def length(self) -> int | None:
        return self.key.length

    @property
    def label(self) -> str:
        return f"{self.task}@{self.length}" if self.length is not None else f"{self.task} ({self.key.metric})"


@dataclass(frozen=True)
class Delta:
    value: float
    low: float | None  # the 95% interval; None when unknown
    high: float | None

    @property
    def significant(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


@dataclass
class Row:
    run: Run
    cells: dict[Column, Score | None]
    average: Score | None
    reference: Run | None = None  # the same model unsteered, for steered rows
    deltas: dict[Column, Delta | None] = field(default_factory=dict)
    average_delta: Delta | None = None
    rank: int | None = None
    paired: dict[Column, PairedDifference | None] = field(default_factory=dict)  # vs the baseline
    paired_average: PairedDifference | None = None

    @property
    def steered(self) -> bool:
        return self.run.steering_spec_sha256 is not None

    @property
    def label(self) -> str:
        return f"{self.run.model_label} [{self.run.backend}] · {self.run.spec_label}"

    @property
    def rank_prefix(self) -> str:
        """``"#1 "``, to put before a label; empty for an unranked row."""
        return "" if self.rank is None else f"#{self.rank} "

    @property
    def documents(self) -> str:
        """The row's documents per task: "16", "8–16" when tasks differ, "?" when a file does not say."""
        return _count_range(task.n_samples for task in self.run.tasks.values())

    @property
    def limits(self) -> str:
        """The ``--limit`` its results were made with ("" when none)."""
        return ", ".join(
            sorted({format_limit(t.limit) for t in self.run.tasks.values() if t.limit is not None})
        )


def _count_range(counts: Iterable[int | None]) -> str:
    counts = set(counts)
    known = {n for n in counts if n is not None}
    unknown = "?" if None in counts or not known else ""
    if not known:
        return unknown
    low, high = min(known), max(known)
    shown = str(low) if low == high else f"{low}–{high}"
    return f"{shown} and ?" if unknown else shown


@dataclass
class Leaderboard:
    columns: list[Column]
    rows: list[Row]
    superseded: list[tuple[TaskResult, TaskResult]] = field(default_factory=list)  # (left out, kept)
    warnings: list[str] = field(default_factory=list)  # rows of different n compared, --limit used
    baseline: Row | None = None  # the row every other row is paired with, document by document

    @property
    def length_tasks(self) -> list[str]:
        return list(dict.fromkeys(c.task for c in self.columns if c.length is not None))

    def length_columns(self, task: str) -> list[Column]:
        return sorted(
            (c for c in self.columns if c.task == task and c.length is not None), key=lambda c: c.length
        )


def build_leaderboard(
    runs: Iterable[Run], metrics: Mapping[str, str] | None = None, baseline: Run | None = None
) -> Leaderboard:
    """``metrics`` picks a task's metric by name (e.g. ``{"hellaswag": "acc_norm"}``); otherwise a task
    shows its first reported metric, or all its lengths when its metrics are named by length.

    ``baseline``, one of the runs (by backend, model and spec), makes every other row paired with it on the
    same documents; every run must then have logged its samples (ResultsError otherwise, or DocumentsDiffer
    where two runs scored different documents)."""
    merged, superseded = merge_runs(list(runs))
    if not merged:
        raise ValueError("no results to report")
    merged.sort(key=lambda r: (r.model_label, r.model, r.backend, r.spec_label))
    check_same_task_definitions(merged)
    columns = _columns(merged, metrics or {})
    rows = [_row(run, columns) for run in merged]
    _add_deltas(rows, columns)
    base_row = None if baseline is None else _add_paired(rows, columns, baseline)
    _rank(rows)
    rows.sort(key=lambda r: (r.rank is None, r.rank or 0, r.run.model_label, r.run.spec_label))
    return Leaderboard(columns, rows, superseded, sample_size_warnings(rows, superseded), base_row)


def sample_size_warnings(
    rows: list[Row], superseded: Iterable[tuple[TaskResult, TaskResult]] = ()
) -> list[str]:
    """What a reader must know before comparing the rows' values: tasks that rows evaluated on different
    numbers of documents, rows made with ``--limit`` (the first documents of each task only), and reruns
    on a different number of documents that replaced a result."""
    replaced: dict[tuple, list[tuple[TaskResult, TaskResult]]] = {}
    for old, new in superseded:
        if old.n_samples != new.n_samples:
            replaced.setdefault((old.source, new.source), []).append((old, new))
    warnings = [
        f"{new_source} (n={_count_range(new.n_samples for _, new in pairs)}) replaced {old_source} "
        f"(n={_count_range(old.n_samples for old, _ in pairs)}) on {len(pairs)} task(s), as the newer "
        "run of the same model and spec"
        for (old_source, new_source), pairs in replaced.items()
    ]
    counts: dict[str, set[int | None]] = {}
    for row in rows:
        for name, task in row.run.tasks.items():
            counts.setdefault(name, set()).add(task.n_samples)
    mixed = sorted(name for name, found in counts.items() if len(found) > 1)
    if mixed:
        per_row = "; ".join(
            f"{row.label}: n={_count_range(row.run.tasks[t].n_samples for t in mixed if t in row.run.tasks)}"
            for row in rows
            if any(t in row.run.tasks for t in mixed)
        )
        named = ", ".join(mixed[:6]) + (f" and {len(mixed) - 6} more" if len(mixed) > 6 else "")
        warnings.append(
            f"rows evaluated different numbers of documents on {len(mixed)} task(s) ({named}): "
            f"{per_row}. Compare such rows by their intervals, not their values."
        )
    limited = [f"{row.label} ({row.limits})" for row in rows if row.limits]
    if limited:
        warnings.append(
            f"{len(limited)} of {len(rows)} row(s) evaluated only the first documents of each task "
            f"(lm-eval's --limit, meant for testing): {'; '.join(limited)}."
        )
    return warnings


def check_same_task_definitions(runs: list[Run]) -> None:
    """A column compares scores of one task definition; results from different task versions, configs
    or shot counts cannot share it. Different document counts can (see sample_size_warnings)."""
    first: dict[str, TaskResult] = {}
    for run in runs:
        for name, task in run.tasks.items():
            seen = first.setdefault(name, task)
            for what, a, b in task_differences(seen, task):
                raise ResultsError(
                    task.source,
                    f"mixed results: task '{name}' has {what} {b} here but {a} in {seen.source}; "
                    "report results of one task definition together",
                )


def task_differences(a: TaskResult, b: TaskResult) -> list[tuple[str, object, object]]:
    """What makes two results of a task results of different tasks: (what, value in a, value in b).

    The number of documents is not among them (``--limit`` evaluates the first documents of the same
    task); lm-eval's hash of the documents is compared only where both evaluated the same number.
    """
    found = []
    if a.version != b.version:
        found.append(("task version", a.version, b.version))
    if a.n_shot != b.n_shot:
        found.append(("n-shot", a.n_shot, b.n_shot))
    if a.config_sha256 != b.config_sha256:
        fields = differing_fields(a.config, b.config)
        found.append(
            (
                f"task config (differs in: {', '.join(fields)}) sha256",
                a.config_sha256[:12],
                b.config_sha256[:12],
            )
        )
    if a.task_hash and b.task_hash and a.n_samples == b.n_samples and a.task_hash != b.task_hash:
        found.append(("documents/prompts hash (task_hashes)", a.task_hash[:12], b.task_hash[:12]))
    return found


def differing_fields(a: object, b: object, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ, e.g. ``["metadata.version"]``."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            f for k in sorted(set(a) | set(b)) for f in differing_fields(a.get(k), b.get(k), f"{prefix}{k}.")
        ]
    return [prefix.rstrip(".")] if a != b else []


def _columns(runs: list[Run], metrics: Mapping[str, str]) -> list[Column]:
    unknown = sorted(set(metrics) - {name for run in runs for name in run.tasks})
    if unknown:
        raise ValueError(f"--metric names tasks that are in no results file: {', '.join(unknown)}")
    columns: list[Column] = []
    for task in sorted({name for run in runs for name in run.tasks}):
        result = next(run.tasks[task] for run in runs if task in run.tasks)
        keys = list(dict.fromkeys(k for run in runs if task in run.tasks for k in run.tasks[task].scores))
        if task in metrics:
            chosen = [k for k in keys if k.metric == metrics[task]][:1]
            if not chosen:
                have = ", ".join(sorted({k.metric for k in keys}))
                raise ValueError(f"task '{task}' has no metric '{metrics[task]}' (it has: {have})")
        elif any(k.length is not None for k in keys):
            filter_name = next(k.filter for k in keys if k.length is not None)
            chosen = sorted(
                (k for k in keys if k.length is not None and k.filter == filter_name), key=lambda k: k.length
            )
        else:
            chosen = keys[:1]
        columns.extend(Column(task, k, result.is_higher_better(k)) for k in chosen)
    return columns


def _row(run: Run, columns: list[Column]) -> Row:
    cells = {c: run.tasks[c.task].scores.get(c.key) if c.task in run.tasks else None for c in columns}
    return Row(run=run, cells=cells, average=_average(cells, columns))


def _average(cells: Mapping[Column, Score | None], columns: list[Column]) -> Score | None:
    """Mean over tasks of each task's score (a task measured at several lengths scores the mean of its
    lengths); only columns where higher is better, and only when the row has all of them."""
    per_task: dict[str, list[Score]] = {}
    for column in columns:
        if not column.higher_is_better:
            continue
        score = cells[column]
        if score is None:
            return None
        per_task.setdefault(column.task, []).append(score)
    if not per_task:
        return None
    return mean_score([mean_score(scores) for scores in per_task.values()])


def mean_score(scores: list[Score]) -> Score:
    """The mean of independent scores, with the stderr of that mean (None if any stderr is unknown)."""
    value = sum(s.value for s in scores) / len(scores)
    if any(s.stderr is None for s in scores):
        return Score(value, None)
    return Score(value, math.sqrt(sum(s.stderr**2 for s in scores)) / len(scores))


def delta(current: Score | None, reference: Score | None) -> Delta | None:
    if current is None or reference is None:
        return None
    found = difference(current, reference)
    low, high = (None, None) if found is None else found[:2]
    return Delta(current.value - reference.value, low, high)


def _add_deltas(rows: list[Row], columns: list[Column]) -> None:
    unsteered = [r for r in rows if not r.steered]
    for row in rows:
        if not row.steered:
            continue
        same_model = [u for u in unsteered if u.run.model_label == row.run.model_label]
        # prefer the same backend (a mamba-steered run without a spec), else e.g. the plain `hf` run
        same_model.sort(key=lambda u: (u.run.backend != row.run.backend, u.run.backend))
        if not same_model:
            continue
        ref = same_model[0]
        row.reference = ref.run
        row.deltas = {c: delta(row.cells[c], ref.cells[c]) for c in columns}
        row.average_delta = delta(row.average, ref.average)


def _add_paired(rows: list[Row], columns: list[Column], baseline: Run) -> Row:
    """Every row but the baseline's, paired with it per column and on the average; then Holm's correction
    over every p-value of the board (all rows and columns: one family)."""
    base = next((row for row in rows if row.run.key == baseline.key), None)
    if base is None:
        raise ValueError(f"the baseline {baseline.source} is not among the runs reported")
    for row in rows:
        for task in row.run.tasks.values():
            if task.documents() is None:
                raise ResultsError(
                    task.source,
                    f"task '{task.name}' has no samples file beside it (samples_{task.name}_<date>.jsonl): "
                    "paired statistics against a baseline need every run made with --log_samples",
                )
    others = [row for row in rows if row is not base]
    for row in others:
        aligned = {column: paired_scores(base.run, row.run, column) for column in columns}
        row.paired = {c: None if pair is None else paired_difference(*pair) for c, pair in aligned.items()}
        row.paired_average = _paired_average(aligned, columns)
    flat = [(row, column) for row in others for column in columns]
    for (row, column), adjusted in zip(flat, with_holm([r.paired[c] for r, c in flat]), strict=True):
        row.paired[column] = adjusted
    return base


def paired_scores(baseline: Run, current: Run, column: Column):
    """Both runs' per-document scores in one column, aligned by document; None where either run lacks
    the task or per-document numbers for its metric."""
    base, cur = baseline.tasks.get(column.task), current.tasks.get(column.task)
    if base is None or cur is None:
        return None
    return align(
        base.documents(),
        cur.documents(),
        str(column.key),
        task=column.task,
        versions=(base.version, cur.version),
    )


def _paired_average(aligned: Mapping[Column, tuple | None], columns: list[Column]) -> PairedDifference | None:
    """The paired difference of the row's average (the columns where higher is better, each task once),
    when every such column could be paired."""
    per_task: dict[str, list] = {}
    for column in columns:
        if not column.higher_is_better:
            continue
        if aligned[column] is None:
            return None
        per_task.setdefault(column.task, []).append(aligned[column])
    return paired_average(list(per_task.values())) if per_task else None


def _rank(rows: list[Row]) -> None:
    """Competition ranking by average (1, 2, 2, 4); rows without an average are not ranked."""
    ranked = sorted((r for r in rows if r.average is not None), key=lambda r: -r.average.value)
    for i, row in enumerate(ranked):
        tie = i > 0 and ranked[i - 1].average.value == row.average.value
        row.rank = ranked[i - 1].rank if tie else i + 1
